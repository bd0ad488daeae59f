-- A worker begins a run of pages (one or more). KEYS: job, lease, tries, links, owner,
-- failed. ARGV: prefix, lease_until, worker, now, then the pages.
-- Every page it may run is leased to the worker at once, so that if it dies mid-run
-- the pages it had not reached come back with the lease, like the one it was on.
-- A page another live worker holds is skipped: that worker commits it, or its
-- lease runs out and the reaper sends the page again.
-- A page that failed for good is never run again (only 'harvest retry' clears it).
-- Returns {'run', paused_until or '', total, open, spec_rev, then per page:
--          page, 'run', tries, link or ''  |  page, 'skip', reason}
-- or {'skip', state} when the job is not running.
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' then return {'skip', state or 'missing'} end
local job = redis.call('HMGET', KEYS[1], 'paused_until', 'total', 'open', 'spec_rev')
local reply = {'run', job[1] or '', job[2], job[3], job[4] or '0'}
local now = tonumber(ARGV[4])
for i = 5, #ARGV do
  local page = ARGV[i]
  local skip = nil
  if redis.call('HEXISTS', bucket_key(ARGV[1], page), page) == 1 then
    skip = 'committed'
  elseif redis.call('HEXISTS', KEYS[6], page) == 1 then
    skip = 'failed'
  else
    local owner = redis.call('HGET', KEYS[5], page)
    local until_ms = tonumber(redis.call('ZSCORE', KEYS[2], page) or '0')
    if owner and owner ~= ARGV[3] and until_ms > now then skip = 'running elsewhere' end
  end
  if skip then
    reply[#reply + 1] = page; reply[#reply + 1] = 'skip'; reply[#reply + 1] = skip
  else
    redis.call('ZADD', KEYS[2], ARGV[2], page)
    redis.call('HSET', KEYS[5], page, ARGV[3])
    reply[#reply + 1] = page; reply[#reply + 1] = 'run'
    reply[#reply + 1] = redis.call('HINCRBY', KEYS[3], page, 1)
    reply[#reply + 1] = redis.call('HGET', KEYS[4], page) or ''
  end
end
return reply
