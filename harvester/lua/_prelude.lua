-- Shared by every ledger script (prepended at load time).
-- Job hash fields: state, total, open ("1" while more pages may appear),
-- next_page, window, committed, failed, raw_bytes, gz_bytes, lines.
-- The lease ZSET scores every queued or running page by the time its lease
-- ends; page 0 stands for the finalizer.

local function bucket_key(prefix, page)
  return prefix .. ':c:' .. math.floor(tonumber(page) / 128)
end

-- Claim pages until the window (pages queued or running) is full again:
-- the todo list first (retries, chain successors), then the sequential plan.
local function claim(job, prefix, lease, todo, queued_until)
  local claimed = {}
  local window = tonumber(redis.call('HGET', job, 'window'))
  local total = tonumber(redis.call('HGET', job, 'total'))
  local guard = 0
  while redis.call('ZCARD', lease) < window and guard < 100000 do
    guard = guard + 1
    local page = redis.call('LPOP', todo)
    if not page then
      local nxt = tonumber(redis.call('HGET', job, 'next_page'))
      if nxt > total then break end
      redis.call('HSET', job, 'next_page', nxt + 1)
      page = nxt
    end
    page = tonumber(page)
    if redis.call('HEXISTS', bucket_key(prefix, page), page) == 0
        and not redis.call('ZSCORE', lease, page) then
      redis.call('ZADD', lease, queued_until, page)
      claimed[#claimed + 1] = page
    end
  end
  return claimed
end

-- When every page known is resolved and no more can appear, hand over to the
-- finalizer: state 'finalizing' and a lease for page 0.
local function maybe_finish(job, lease, finalizer_until)
  local f = redis.call('HMGET', job, 'committed', 'failed', 'total', 'open')
  if f[4] == '0' and tonumber(f[1]) + tonumber(f[2]) >= tonumber(f[3]) then
    redis.call('HSET', job, 'state', 'finalizing')
    redis.call('DEL', lease)
    redis.call('ZADD', lease, finalizer_until, 0)
    return true
  end
  return false
end
