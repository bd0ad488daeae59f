-- Fill the window (job start, retry). KEYS: job, lease, todo. ARGV: prefix, queued_until.
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return {} end
return claim(KEYS[1], ARGV[1], KEYS[2], KEYS[3], ARGV[2])
