-- A worker begins a run of pages (one or more). KEYS: job, lease, tries, links, owner,
-- failed. ARGV: prefix, lease_until, worker, now, then the pages.
-- Every page it may run is leased to the worker at once, so that if it dies mid-run
-- the pages it had not reached come back with the lease, like the one it was on.
-- A page another live worker holds is skipped: that worker commits it, or its
-- lease runs out and the reaper sends the page again.
-- A page that failed for good is never run again (only 'harvest retry' clears it).
-- A run costs the same dozen commands whatever its length (one per hash, not per page).
-- Returns {'run', paused_until or '', total, open, spec_rev, then per page:
--          page, 'run', tries, link or ''  |  page, 'skip', reason}
-- or {'skip', state} when the job is not running.
local job = redis.call('HMGET', KEYS[1], 'state', 'paused_until', 'total', 'open', 'spec_rev')
if job[1] ~= 'running' then return {'skip', job[1] or 'missing'} end
local reply = {'run', job[2] or '', job[3], job[4], job[5] or '0'}
local now = tonumber(ARGV[4])
local pages = {unpack(ARGV, 5)}
local committed = committed_among(ARGV[1], pages)
local failed = redis.call('HMGET', KEYS[6], unpack(pages))
local owners = redis.call('HMGET', KEYS[5], unpack(pages))
local skips, runs = {}, {}
for i, page in ipairs(pages) do
  if committed[page] then
    skips[i] = 'committed'
  elseif failed[i] then
    skips[i] = 'failed'
  elseif owners[i] and owners[i] ~= ARGV[3]
      and tonumber(redis.call('ZSCORE', KEYS[2], page) or '0') > now then
    skips[i] = 'running elsewhere'
  else
    runs[#runs + 1] = page
  end
end
local tries, links = {}, {}
if #runs > 0 then
  local leases, owned, counted = {}, {}, {}
  tries = redis.call('HMGET', KEYS[3], unpack(runs))
  links = redis.call('HMGET', KEYS[4], unpack(runs))
  for i, page in ipairs(runs) do
    tries[i] = (tonumber(tries[i]) or 0) + 1
    leases[#leases + 1] = ARGV[2]; leases[#leases + 1] = page
    owned[#owned + 1] = page; owned[#owned + 1] = ARGV[3]
    counted[#counted + 1] = page; counted[#counted + 1] = tries[i]
  end
  redis.call('ZADD', KEYS[2], unpack(leases))
  redis.call('HSET', KEYS[5], unpack(owned))
  redis.call('HSET', KEYS[3], unpack(counted))
end
local next_run = 1
for i, page in ipairs(pages) do
  reply[#reply + 1] = page
  if skips[i] then
    reply[#reply + 1] = 'skip'; reply[#reply + 1] = skips[i]
  else
    reply[#reply + 1] = 'run'
    reply[#reply + 1] = tries[next_run]
    reply[#reply + 1] = links[next_run] or ''
    next_run = next_run + 1
  end
end
return reply
