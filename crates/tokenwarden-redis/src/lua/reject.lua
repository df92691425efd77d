-- Marks the token with this fence rejected (once) and tells every replica.
-- KEYS: token. ARGV: fence, channel, message.
if redis.call('HGET', KEYS[1], 'fence') == ARGV[1] and redis.call('HGET', KEYS[1], 'rejected') ~= '1' then
  redis.call('HSET', KEYS[1], 'rejected', '1')
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
