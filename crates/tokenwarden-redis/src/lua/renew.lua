-- Extends the lease if its owner still holds it.
-- KEYS: lease. ARGV: owner, ttl (ms).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
