-- Pages (or the finalizer, page 0) whose lease ran out: their worker died or
-- their message was lost. Each is leased again to the caller, who re-sends it.
-- KEYS: job, lease. ARGV: now, new_until, limit.
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' and state ~= 'finalizing' then return {} end
local pages = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, page in ipairs(pages) do redis.call('ZADD', KEYS[2], ARGV[2], page) end
return pages
