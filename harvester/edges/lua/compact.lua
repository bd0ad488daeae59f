-- A sealed job's commit buckets, folded: each bucket's per-page commit records (~34
-- bytes a page: where its bytes lay in a segment, now copied into parts and listed in
-- the manifest) become one field 'done', a bitmap of the bucket's committed pages (see
-- SEALED in the prelude), merged with the bitmap it may hold from an earlier seal.
-- Only for a job whose every commit is sealed (the finalizer, once the job is final).
-- KEYS: none (the buckets are named from the prefix, as in every ledger script).
-- ARGV: prefix, then bucket numbers.
-- Returns the pages folded.
local prefix = ARGV[1]
local folded = 0
for n = 2, #ARGV do
  local key = prefix .. ':c:' .. ARGV[n]
  local base = tonumber(ARGV[n]) * 128
  local bytes = {}
  for k = 1, 16 do bytes[k] = 0 end
  -- Field names only: the records' values (where each page lay) are not needed.
  local fields = redis.call('HKEYS', key)
  if #fields > 0 then
    for _, field in ipairs(fields) do
      if field == 'done' then
        local earlier = redis.call('HGET', key, 'done')
        for k = 1, 16 do
          bytes[k] = bit.bor(bytes[k], tonumber(string.sub(earlier, 2 * k - 1, 2 * k), 16) or 0)
        end
      else
        local at = tonumber(field) - base
        local k = math.floor(at / 8) + 1
        bytes[k] = bit.bor(bytes[k], bit.lshift(1, at % 8))
        folded = folded + 1
      end
    end
    local hex = {}
    for k = 1, 16 do hex[k] = string.format('%02x', bytes[k]) end
    -- The job's keys were set to expire when it went final: the folded bucket keeps
    -- what is left of its time.
    local ttl = redis.call('PTTL', key)
    redis.call('DEL', key)
    redis.call('HSET', key, 'done', table.concat(hex))
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  end
end
return folded
