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
-- Returns 1 if the seat was still the member's, 2 if it was reclaimed, 0 if
-- it is lost.
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
