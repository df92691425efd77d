-- Installs a token over a lower fence, lets the installer's lease go and tells every replica.
-- KEYS: token, lease, fence counter, lease start. ARGV: fence, blob, ttl (ms), owner, channel, message.
local f = tonumber(ARGV[1])
local cur = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if redis.call('GET', KEYS[2]) == ARGV[4] then
  redis.call('DEL', KEYS[2], KEYS[4])
end
if f <= cur then
  return cur
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'blob', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local c = tonumber(redis.call('GET', KEYS[3]) or '0')
if c < f then
  redis.call('SET', KEYS[3], ARGV[1])
end
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[3]) + 86400000)
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 0
