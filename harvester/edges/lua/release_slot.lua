-- A request finished: free its slot. KEYS: inflight. ARGV: slot id.
return redis.call('ZREM', KEYS[1], ARGV[1])
