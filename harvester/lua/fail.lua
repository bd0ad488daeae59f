-- A page failed for good. KEYS: job, lease, failed, todo, owner.
-- ARGV: prefix, page, record_json, close, queued_until, finalizer_until.
-- Returns {outcome, claimed pages...}; outcome is failed|last|duplicate|closed.
local job, lease, page = KEYS[1], KEYS[2], ARGV[2]
if redis.call('HGET', job, 'state') ~= 'running' then return {'closed'} end
if redis.call('HEXISTS', bucket_key(ARGV[1], page), page) == 1 then return {'duplicate'} end
if redis.call('HSET', KEYS[3], page, ARGV[3]) == 1 then redis.call('HINCRBY', job, 'failed', 1) end
redis.call('ZREM', lease, page)
redis.call('HDEL', KEYS[5], page)
if ARGV[4] == '1' then redis.call('HSET', job, 'open', '0') end
if maybe_finish(job, lease, ARGV[6]) then return {'last'} end
local claimed = claim(job, ARGV[1], lease, KEYS[4], ARGV[5])
table.insert(claimed, 1, 'failed')
return claimed
