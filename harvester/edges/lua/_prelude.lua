-- Shared by every ledger script (prepended at load time).
-- Job hash fields: state, total, open ("1" while more pages may appear),
-- next_page, window, committed, failed, raw_bytes, gz_bytes, lines.
-- The lease ZSET scores every queued or running page by the time its lease
-- ends; page 0 stands for the finalizer.

local function bucket_key(prefix, page)
  return prefix .. ':c:' .. math.floor(tonumber(page) / 128)
end

-- Pages as "first-last" ranges ("1249-1280,1300"): the claims a commit stores stay a
-- few bytes, so its bucket stays a compact listpack (one value over 64 bytes turns the
-- whole hash into a table at ~4x the memory). Decoded by ledger.decode_pages.
local function encode_pages(pages)
  local parts, i = {}, 1
  while i <= #pages do
    local first = tonumber(pages[i])
    local last = first
    while i < #pages and tonumber(pages[i + 1]) == last + 1 do
      i = i + 1
      last = last + 1
    end
    parts[#parts + 1] = first == last and string.format('%d', first)
                        or string.format('%d-%d', first, last)
    i = i + 1
  end
  return table.concat(parts, ',')
end

-- Redis' Lua unpacks at most a few thousand values at once: batches stay below.
local BATCH = 500

-- Once a job is sealed, each bucket's commit records are folded into one field, 'done':
-- a bitmap of the bucket's 128 pages in hex (two digits a byte; byte k holds pages
-- 8k..8k+7, lowest bit first), see compact.lua. What a sealed page's commit stood for
-- is in the manifest; the ledger keeps only that it is committed (1 bit, not ~34 bytes).
local SEALED = 'sealed'

local function sealed_bit(bitmap, page)
  if not bitmap then return false end
  local i = tonumber(page) % 128
  local byte = tonumber(string.sub(bitmap, 2 * math.floor(i / 8) + 1,
                                   2 * math.floor(i / 8) + 2), 16) or 0
  return bit.band(byte, bit.lshift(1, i % 8)) ~= 0
end

-- Which of ``pages`` are committed: {page (string) = standing value, or SEALED}. One
-- HMGET per commit bucket the pages fall in.
local function committed_among(prefix, pages)
  local groups, order = {}, {}
  for _, page in ipairs(pages) do
    local bucket = math.floor(tonumber(page) / 128)
    if not groups[bucket] then groups[bucket] = {}; order[#order + 1] = bucket end
    table.insert(groups[bucket], page)
  end
  local found = {}
  for _, bucket in ipairs(order) do
    local members = groups[bucket]
    for first = 1, #members, BATCH do
      local slice = {unpack(members, first, math.min(#members, first + BATCH - 1))}
      local values = redis.call('HMGET', prefix .. ':c:' .. bucket, 'done', unpack(slice))
      for i, page in ipairs(slice) do
        if values[i + 1] then
          found[tostring(page)] = values[i + 1]
        elseif sealed_bit(values[1], page) then
          found[tostring(page)] = SEALED
        end
      end
    end
  end
  return found
end

-- Claim pages until the window (pages queued or running) is full again:
-- the todo list first (retries, reaped pages), then the sequential plan, which
-- is read and advanced once per call, its pages leased with one ZADD per batch.
-- A plan page was never claimed before, so only a stray message (a page sent by
-- hand) can have leased it: NX keeps that lease, and the duplicate message this
-- claim sends is skipped by start.lua.
local function claim(job, prefix, lease, todo, queued_until)
  local claimed = {}
  local f = redis.call('HMGET', job, 'window', 'total', 'next_page')
  local total, nxt = tonumber(f[2]), tonumber(f[3])
  local room = tonumber(f[1]) - redis.call('ZCARD', lease)
  local picked = {}
  local guard = 0
  while room > 0 and guard < 100000 do
    local candidates = {}
    while #candidates < math.min(room, BATCH) and guard < 100000 do
      guard = guard + 1
      local page = redis.call('LPOP', todo)
      if not page then break end
      candidates[#candidates + 1] = page
    end
    local planned = #candidates == 0
    if planned then
      if nxt > total then break end
      local last = math.min(total, nxt + math.min(room, BATCH) - 1)
      for page = nxt, last do candidates[#candidates + 1] = page end
      nxt = last + 1
      redis.call('HSET', job, 'next_page', nxt)
    end
    local committed = committed_among(prefix, candidates)
    local add = {}
    for _, page in ipairs(candidates) do
      local name = tostring(page)
      if not committed[name] and not picked[name]
          and (planned or not redis.call('ZSCORE', lease, page)) then
        picked[name] = true
        add[#add + 1] = queued_until; add[#add + 1] = page
        claimed[#claimed + 1] = tonumber(page)
      end
    end
    if #add > 0 then redis.call('ZADD', lease, 'NX', unpack(add)) end
    room = room - #add / 2
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
