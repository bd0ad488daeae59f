-- The commit point of a run of fan-out pages, written and fsync'ed together: each page
-- as commit.lua would commit it (first writer wins), with one command per hash for the
-- whole run and one claim at the end. Only for pages that name no total, successor or
-- end (the runner commits those one by one).
-- KEYS: job, lease, tries, failed, todo, owner, buckets.
-- ARGV: prefix, queued_until, finalizer_until, requests (HTTP requests the run took),
--       then per page: page, location, raw_bytes, gz_bytes, lines.
-- Returns {outcome, count, claimed pages..., then per page: page, status, standing}:
-- outcome is committed|last|closed; status is 'new', 'standing' (a commit stood
-- already: standing is its value, ours when this is a replay of a lost reply) or
-- 'closed'. The claims are stored on the run's last new page ("location|pages", encode_pages).
local job, lease, prefix = KEYS[1], KEYS[2], ARGV[1]
local pages, values = {}, {}
for i = 5, #ARGV, 5 do
  pages[#pages + 1] = ARGV[i]
  values[ARGV[i]] = {ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]),
                     tonumber(ARGV[i + 4])}
end
local standing = committed_among(prefix, pages)
local running = redis.call('HGET', job, 'state') == 'running'
local fresh, statuses = {}, {}
for _, page in ipairs(pages) do
  if standing[page] then
    statuses[page] = 'standing'
  elseif running then
    statuses[page] = 'new'
    fresh[#fresh + 1] = page
  else
    statuses[page] = 'closed'
  end
end
local outcome = running and 'committed' or 'closed'
local claimed = {}
if #fresh > 0 then
  local raw, gz, lines = 0, 0, 0
  local by_bucket, buckets = {}, {}
  for _, page in ipairs(fresh) do
    local v = values[page]
    raw, gz, lines = raw + v[2], gz + v[3], lines + v[4]
    local bucket = math.floor(tonumber(page) / 128)
    if not by_bucket[bucket] then by_bucket[bucket] = {}; buckets[#buckets + 1] = bucket end
    table.insert(by_bucket[bucket], page)
    table.insert(by_bucket[bucket], v[1])
  end
  for _, bucket in ipairs(buckets) do
    redis.call('HSET', prefix .. ':c:' .. bucket, unpack(by_bucket[bucket]))
  end
  redis.call('SADD', KEYS[7], unpack(buckets))
  local unfailed = redis.call('HDEL', KEYS[4], unpack(fresh))
  redis.call('ZREM', lease, unpack(fresh))
  redis.call('HDEL', KEYS[3], unpack(fresh))
  redis.call('HDEL', KEYS[6], unpack(fresh))
  if unfailed > 0 then redis.call('HINCRBY', job, 'failed', -unfailed) end
  redis.call('HINCRBY', job, 'committed', #fresh)
  redis.call('HINCRBY', job, 'raw_bytes', raw)
  redis.call('HINCRBY', job, 'gz_bytes', gz)
  redis.call('HINCRBY', job, 'lines', lines)
  if tonumber(ARGV[4]) > 0 then redis.call('HINCRBY', job, 'requests', ARGV[4]) end
  if maybe_finish(job, lease, ARGV[3]) then
    outcome = 'last'
  else
    claimed = claim(job, prefix, lease, KEYS[5], ARGV[2])
    if #claimed > 0 then
      local last = fresh[#fresh]
      redis.call('HSET', bucket_key(prefix, last), last,
                 values[last][1] .. '|' .. encode_pages(claimed))
    end
  end
end
local reply = {outcome, #claimed}
for _, page in ipairs(claimed) do reply[#reply + 1] = page end
for _, page in ipairs(pages) do
  reply[#reply + 1] = page
  reply[#reply + 1] = statuses[page]
  reply[#reply + 1] = standing[page] or ''
end
return reply
