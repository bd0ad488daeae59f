-- The commit point of a page: first writer wins, duplicates are refused.
-- KEYS: job, lease, tries, failed, todo, links, seen, owner, buckets.
-- ARGV: prefix, page, location, raw_bytes, gz_bytes, lines, total_or_empty,
--       close ('1' when no page can follow), queued_until, finalizer_until,
--       next_link ('' or the successor's link, JSON), identity ('' or the link's
--       identity, which must not repeat within the job), requests (HTTP requests sent).
-- Returns {outcome, claimed pages...}; outcome is committed|last|duplicate|closed|repeated;
-- a duplicate returns {'duplicate', the standing location, the pages its commit claimed
-- (encode_pages)}. The stored value is "location" or "location|claimed pages": a lost
-- reply can be replayed from it, at a few bytes a page in the bucket's compact listpack.
-- A page of a sealed job stands as SEALED (its record was folded into the bucket's bitmap).
local job, lease, page = KEYS[1], KEYS[2], ARGV[2]
-- Before the state check: a replayed commit of the job's last page finds the job
-- finalizing, and must still learn that its own commit stands.
local standing = committed_among(ARGV[1], {page})[page]
if standing then
  local bar = string.find(standing, '|', 1, true)
  if not bar then return {'duplicate', standing, ''} end
  return {'duplicate', string.sub(standing, 1, bar - 1), string.sub(standing, bar + 1)}
end
if redis.call('HGET', job, 'state') ~= 'running' then return {'closed'} end
if ARGV[12] ~= '' and redis.call('SISMEMBER', KEYS[7], ARGV[12]) == 1 then
  return {'repeated'}
end
redis.call('HSET', bucket_key(ARGV[1], page), page, ARGV[3])
redis.call('SADD', KEYS[9], math.floor(tonumber(page) / 128))
if ARGV[12] ~= '' then redis.call('SADD', KEYS[7], ARGV[12]) end
redis.call('HDEL', KEYS[6], page)
if ARGV[11] ~= '' then redis.call('HSET', KEYS[6], tonumber(page) + 1, ARGV[11]) end
if redis.call('HDEL', KEYS[4], page) == 1 then redis.call('HINCRBY', job, 'failed', -1) end
redis.call('ZREM', lease, page)
redis.call('HDEL', KEYS[3], page)
redis.call('HDEL', KEYS[8], page)
redis.call('HINCRBY', job, 'committed', 1)
redis.call('HINCRBY', job, 'raw_bytes', ARGV[4])
redis.call('HINCRBY', job, 'gz_bytes', ARGV[5])
redis.call('HINCRBY', job, 'lines', ARGV[6])
if tonumber(ARGV[13]) > 0 then redis.call('HINCRBY', job, 'requests', ARGV[13]) end
if ARGV[7] ~= '' and redis.call('HGET', job, 'open') == '1' then
  local known = tonumber(redis.call('HGET', job, 'total'))
  redis.call('HSET', job, 'total', math.max(known, tonumber(ARGV[7])))
end
if ARGV[8] == '1' then redis.call('HSET', job, 'open', '0') end
if maybe_finish(job, lease, ARGV[10]) then return {'last'} end
local claimed = claim(job, ARGV[1], lease, KEYS[5], ARGV[9])
if #claimed > 0 then
  redis.call('HSET', bucket_key(ARGV[1], page), page, ARGV[3] .. '|' .. encode_pages(claimed))
end
table.insert(claimed, 1, 'committed')
return claimed
