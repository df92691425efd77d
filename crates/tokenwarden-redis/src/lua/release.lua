-- Lets the lease go if its owner still holds it, and tells the waiting replicas.
-- KEYS: lease, lease start. ARGV: owner, channel, message.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
