-- The connection of a resumable member ended without `leave`: its seat is
-- held for the grace period (held.lua) and the others are told (playerAway).
--
-- KEYS[1]  the lobby's membership hash
-- ARGV[1]  the seat
-- ARGV[2]  the member id expected in that seat
-- ARGV[3]  the lobby's pub/sub channel
-- ARGV[4]  now, in ms since the epoch
-- Returns 1 if the seat is now held, 0 if it is not resumable (the caller
-- leaves instead), -1 if the seat is not the member's any more.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return -1
end
local res = res_of(KEYS[1], 9)
if not resumable(res, tonumber(ARGV[1])) then
  return 0
end
mark_away(res, ARGV[1], tonumber(ARGV[4]), ARGV[3])
return 1
