-- Stop a running job: pages queued or running go back to the todo list (so
-- retry runs them), commits are refused from now on, the finalizer seals what
-- was committed. KEYS: job, lease, todo. ARGV: finalizer_until.
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return redis.call('HGET', KEYS[1], 'state') or 'missing'
end
local pending = redis.call('ZRANGE', KEYS[2], 0, -1)
for i = #pending, 1, -1 do
  if pending[i] ~= '0' then redis.call('LPUSH', KEYS[3], pending[i]) end
end
redis.call('HSET', KEYS[1], 'state', 'finalizing', 'cancelled', '1')
redis.call('DEL', KEYS[2])
redis.call('ZADD', KEYS[2], ARGV[1], 0)
return 'cancelled'
