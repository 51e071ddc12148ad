-- Re-registers a member after the lobby store was away (Redis restarted and
-- may have lost everything). Conditional and atomic: a seat still free is
-- reclaimed, a seat taken by someone else is not, and a lobby is never
-- filled beyond its capacity. Silent: the players never saw the seat go.
-- (The node has added the lobby to its index before.)
--
-- KEYS[1]  the lobby's membership hash
-- ARGV[1]  the seat
-- ARGV[2]  the member id
-- ARGV[3]  the lobby capacity
-- ARGV[4]  the lobby's host as this node last heard (its seat), and
-- ARGV[5]  its epoch, 0 if unknown: a lost host record (lr:meta:{HASH}) is
--          put back from the highest epoch any node re-registers, so that
--          the epoch never goes back
-- Returns 1 if the seat was still the member's, 2 if it was reclaimed, 0 if
-- it is lost.
local epoch = tonumber(ARGV[5])
if epoch > 0 then
  local meta = 'lr:meta:' .. string.sub(KEYS[1], 10)
  if (tonumber(redis.call('HGET', meta, 'epoch')) or 0) < epoch then
    redis.call('HSET', meta, 'host', ARGV[4], 'epoch', epoch)
  end
end
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder == ARGV[2] then
  return 1
end
if holder then
  return 0
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 2
