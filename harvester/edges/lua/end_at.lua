-- stop_on_status: page ARGV[2] was answered with a status that ends the job. It is
-- no page of the job: the job ends before it (nothing is written for it).
-- KEYS: job, lease, tries, owner, links. ARGV: prefix, page, finalizer_until.
-- Returns 'last' (hand over to the finalizer), 'ended', or 'closed'.
local job, page = KEYS[1], tonumber(ARGV[2])
if redis.call('HGET', job, 'state') ~= 'running' then return 'closed' end
if tonumber(redis.call('HGET', job, 'total')) >= page then
  redis.call('HSET', job, 'total', page - 1)
end
redis.call('HSET', job, 'open', '0', 'ended_by', 'status')
redis.call('ZREM', KEYS[2], page)
redis.call('HDEL', KEYS[3], page)
redis.call('HDEL', KEYS[4], page)
redis.call('HDEL', KEYS[5], page)
if maybe_finish(job, KEYS[2], ARGV[3]) then return 'last' end
return 'ended'
