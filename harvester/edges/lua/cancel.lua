-- Stop a running job: pages queued or running go back to the todo list (so
-- retry runs them), commits are refused from now on, the finalizer seals what
-- was committed. A cancel by a person sets 'cancelled'; a job that cannot go on
-- (e.g. the API caps its page size) is aborted with its reason instead.
-- KEYS: job, lease, todo. ARGV: finalizer_until, abort reason ('' for a cancel).
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return redis.call('HGET', KEYS[1], 'state') or 'missing'
end
local pending = redis.call('ZRANGE', KEYS[2], 0, -1)
for i = #pending, 1, -1 do
  if pending[i] ~= '0' then redis.call('LPUSH', KEYS[3], pending[i]) end
end
if ARGV[2] == '' then
  redis.call('HSET', KEYS[1], 'state', 'finalizing', 'cancelled', '1')
else
  redis.call('HSET', KEYS[1], 'state', 'finalizing', 'aborted', ARGV[2])
end
redis.call('DEL', KEYS[2])
redis.call('ZADD', KEYS[2], ARGV[1], 0)
return ARGV[2] == '' and 'cancelled' or 'aborted'
