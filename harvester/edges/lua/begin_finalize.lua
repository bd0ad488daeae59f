-- Claim the finalizer (page 0) for one worker at a time.
-- KEYS: job, lease, owner. ARGV: worker, lease_until, now.
-- Returns 1 when the caller may seal, 0 when another live finalizer holds it.
if redis.call('HGET', KEYS[1], 'state') ~= 'finalizing' then return 0 end
local owner = redis.call('HGET', KEYS[3], '0')
local until_ms = tonumber(redis.call('ZSCORE', KEYS[2], '0') or '0')
if owner and owner ~= ARGV[1] and until_ms > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[3], '0', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], '0')
return 1
