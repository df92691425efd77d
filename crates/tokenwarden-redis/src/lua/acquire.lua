-- Takes the lease if it is free, or if it has been held at least ARGV[3] ms (a take-over of a
-- holder that is stuck), and hands out the next fencing number.
-- KEYS: lease, fence counter, token, lease start. ARGV: owner, lease ttl (ms), held-for (ms;
-- empty: only a free lease).
--
-- Fences only grow, whatever Redis forgets or restores: the next one is the largest of the
-- counter plus one, the server's clock in milliseconds, and the stored token's fence plus one.
-- A fence is handed out at most once per lease, so a key's fences stay within a few of the
-- clock at the time they were given; a restart with no data, a restart from an older RDB or
-- AOF snapshot, or a failover to a replica that missed the latest writes all come back later
-- than those fences were given, so the clock alone puts every new fence above them. What this
-- cannot cover: a server whose clock runs behind the one that gave the lost fences by more
-- than the time the loss took (a failover to a replica with a clock set wrong).
local now = redis.call('TIME')
local f = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ms = f
local ttl = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[3] == '' then
    return 0
  end
  -- A lease older than this script keeps no start: it counts as held since ever.
  local since = tonumber(redis.call('GET', KEYS[4]) or '0')
  if ms - since < tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('SET', KEYS[4], ms, 'PX', ttl + 86400000)
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter + 1 > f then
  f = counter + 1
end
local held = tonumber(redis.call('HGET', KEYS[3], 'fence') or '0')
if held + 1 > f then
  f = held + 1
end
redis.call('SET', KEYS[2], f, 'PX', ttl + 86400000)
return f
