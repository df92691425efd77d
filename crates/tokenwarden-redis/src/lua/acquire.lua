-- Takes the lease if it is free and hands out the next fencing number.
-- KEYS: lease, fence counter, token. ARGV: owner, lease ttl (ms).
--
-- Fences only grow, whatever Redis forgets or restores: the next one is the largest of the
-- counter plus one, the server's clock in milliseconds, and the stored token's fence plus one.
-- A fence is handed out at most once per lease, so a key's fences stay within a few of the
-- clock at the time they were given; a restart with no data, a restart from an older RDB or
-- AOF snapshot, or a failover to a replica that missed the latest writes all come back later
-- than those fences were given, so the clock alone puts every new fence above them. What this
-- cannot cover: a server whose clock runs behind the one that gave the lost fences by more
-- than the time the loss took (a failover to a replica with a clock set wrong).
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local now = redis.call('TIME')
  local f = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
  if counter + 1 > f then
    f = counter + 1
  end
  local held = tonumber(redis.call('HGET', KEYS[3], 'fence') or '0')
  if held + 1 > f then
    f = held + 1
  end
  redis.call('SET', KEYS[2], f, 'PX', tonumber(ARGV[2]) + 86400000)
  return f
end
return 0
