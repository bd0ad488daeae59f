-- A page failed for good. KEYS: job, lease, failed, todo, owner, claims.
-- ARGV: prefix, page, record_json, close, queued_until, finalizer_until, requests.
-- Returns {outcome, claimed pages...}; outcome is failed|last|duplicate|closed.
local job, lease, page = KEYS[1], KEYS[2], ARGV[2]
if redis.call('HGET', job, 'state') ~= 'running' then return {'closed'} end
if committed_among(ARGV[1], {page})[page] then return {'duplicate'} end
if redis.call('HEXISTS', KEYS[3], page) == 1 and redis.call('HEXISTS', KEYS[6], page) == 1 then
  -- A replay of this page's failure (its reply was lost): hand back what it claimed.
  local reply = {'failed'}
  for p in string.gmatch(redis.call('HGET', KEYS[6], page), '[^,]+') do reply[#reply + 1] = p end
  return reply
end
if redis.call('HSET', KEYS[3], page, ARGV[3]) == 1 then
  redis.call('HINCRBY', job, 'failed', 1)
  if tonumber(ARGV[7]) > 0 then redis.call('HINCRBY', job, 'requests', ARGV[7]) end
end
redis.call('ZREM', lease, page)
redis.call('HDEL', KEYS[5], page)
if ARGV[4] == '1' then redis.call('HSET', job, 'open', '0') end
if maybe_finish(job, lease, ARGV[6]) then return {'last'} end
local claimed = claim(job, ARGV[1], lease, KEYS[4], ARGV[5])
if #claimed > 0 then redis.call('HSET', KEYS[6], page, table.concat(claimed, ',')) end
table.insert(claimed, 1, 'failed')
return claimed
