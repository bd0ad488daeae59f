-- Retry-After: hold every request of the job until now + ARGV[1] ms (never shorten
-- a longer pause already set). KEYS: job. Returns the pause's end (ms, Redis clock).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0')
if until_ms > current then redis.call('HSET', KEYS[1], 'paused_until', until_ms) end
return math.max(until_ms, current)
