-- Pages to re-send, each leased again to the caller:
-- (1) any page (or the finalizer, page 0) whose lease ran out: its worker died;
-- (2) a page queued longer than ARGV[5] ms that no worker has started while every
--     broker queue is empty: its message is stuck in a dead consumer's unacked set
--     (e.g. after a Redis restart) and kombu would only restore it after the
--     visibility timeout.
-- KEYS: job, lease, owner, then the broker's queue lists.
-- ARGV: now, expired_until, limit, queued_ms, stale_ms, queued_until.
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' and state ~= 'finalizing' then return {} end
local now = tonumber(ARGV[1])
local pages = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, ARGV[3])
for _, page in ipairs(pages) do
  -- Its owner is gone: queued again (the finalizer gets a short lease, as it is
  -- re-sent at top priority and starts at once).
  redis.call('HDEL', KEYS[3], page)
  redis.call('ZADD', KEYS[2], page == '0' and ARGV[2] or ARGV[6], page)
end
if state ~= 'running' then return pages end
local waiting = 0
for i = 4, #KEYS do waiting = waiting + redis.call('LLEN', KEYS[i]) end
if waiting > 0 then return pages end
local horizon = now + tonumber(ARGV[4]) - tonumber(ARGV[5])
local queued = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, horizon, 'LIMIT', 0, ARGV[3])
for _, page in ipairs(queued) do
  if page ~= '0' and redis.call('HEXISTS', KEYS[3], page) == 0 then
    redis.call('ZADD', KEYS[2], ARGV[6], page)
    pages[#pages + 1] = page
  end
end
return pages
