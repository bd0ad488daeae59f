-- May this worker send one request for the job now? Cluster-wide, on Redis's clock.
-- KEYS: job, bucket, inflight. ARGV: slot_id, slot_ms, rate ('' = none), burst,
-- max_in_flight ('' = none).
-- Returns 0 when granted (the slot is held until released or its lease ends),
-- else how many ms to wait before asking again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0')
if paused > now then return paused - now end
if ARGV[5] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return 25 end
end
if ARGV[3] ~= '' then
  local rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
  local b = redis.call('HMGET', KEYS[2], 'tokens', 'ts')
  local tokens = tonumber(b[1] or burst)
  local ts = tonumber(b[2] or now)
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  if tokens < 1 then
    redis.call('HSET', KEYS[2], 'tokens', tostring(tokens), 'ts', now)
    return math.max(1, math.ceil((1 - tokens) * 1000 / rate))
  end
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'ts', now)
end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1]) end
return 0
