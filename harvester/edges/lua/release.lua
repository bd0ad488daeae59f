-- A worker hands pages back (it is stopping, or a run's pages turned out large or slow
-- and go on alone): each is queued again, owned by no one.
-- KEYS: lease, owner. ARGV: worker, queued_until, then the pages.
-- Returns the pages it gave back (those the worker still owned).
local given = {}
for i = 3, #ARGV do
  local page = ARGV[i]
  if redis.call('HGET', KEYS[2], page) == ARGV[1] then
    redis.call('HDEL', KEYS[2], page)
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], page)
    given[#given + 1] = page
  end
end
return given
