-- A stopping worker hands a page back: it is queued again, owned by no one.
-- KEYS: lease, owner. ARGV: page, worker, queued_until.
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
end
return 1
