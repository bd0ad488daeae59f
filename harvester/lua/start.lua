-- A worker begins a page. KEYS: job, lease, tries, links, owner, failed.
-- ARGV: prefix, page, lease_until, worker, now.
-- A page another live worker holds is skipped: that worker commits it, or its
-- lease runs out and the reaper sends the page again.
-- A page that failed for good is never run again (only 'harvest retry' clears it).
-- Returns {'run', tries, link or '', paused_until or '', total, open, spec_rev}
-- or {'skip', reason}.
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' then return {'skip', state or 'missing'} end
if redis.call('HEXISTS', bucket_key(ARGV[1], ARGV[2]), ARGV[2]) == 1 then
  return {'skip', 'committed'}
end
if redis.call('HEXISTS', KEYS[6], ARGV[2]) == 1 then return {'skip', 'failed'} end
local owner = redis.call('HGET', KEYS[5], ARGV[2])
local until_ms = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[2]) or '0')
if owner and owner ~= ARGV[4] and until_ms > tonumber(ARGV[5]) then
  return {'skip', 'running elsewhere'}
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[5], ARGV[2], ARGV[4])
local job = redis.call('HMGET', KEYS[1], 'paused_until', 'total', 'open', 'spec_rev')
return {'run', redis.call('HINCRBY', KEYS[3], ARGV[2], 1),
        redis.call('HGET', KEYS[4], ARGV[2]) or '', job[1] or '', job[2], job[3], job[4] or '0'}
