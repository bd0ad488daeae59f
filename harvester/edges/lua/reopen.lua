-- harvest retry: failed pages go back to the todo list and the job runs again.
-- KEYS: job, failed, todo, tries. ARGV: reopen ('1' when more pages may appear again).
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'done' and state ~= 'failed' and state ~= 'cancelled' then return state or 'missing' end
local pages = redis.call('HKEYS', KEYS[2])
table.sort(pages, function(a, b) return tonumber(a) < tonumber(b) end)
for _, page in ipairs(pages) do
  redis.call('RPUSH', KEYS[3], page)
  redis.call('HDEL', KEYS[4], page)
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'failed', 0, 'state', 'running', 'cancelled', '0')
redis.call('HDEL', KEYS[1], 'aborted')
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'open', '1') end
return 'running'
