-- A worker begins a page. KEYS: job, lease, tries, links, owner.
-- ARGV: prefix, page, lease_until, worker.
-- Returns {'run', tries, link or ''} or {'skip', reason}.
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' then return {'skip', state or 'missing'} end
if redis.call('HEXISTS', bucket_key(ARGV[1], ARGV[2]), ARGV[2]) == 1 then
  return {'skip', 'committed'}
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[5], ARGV[2], ARGV[4])
return {'run', redis.call('HINCRBY', KEYS[3], ARGV[2], 1),
        redis.call('HGET', KEYS[4], ARGV[2]) or ''}
