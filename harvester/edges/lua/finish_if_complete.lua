-- After a reopen that left nothing to fetch. KEYS: job, lease. ARGV: finalizer_until.
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if maybe_finish(KEYS[1], KEYS[2], ARGV[1]) then return 1 end
return 0
