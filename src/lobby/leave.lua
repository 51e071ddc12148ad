-- Frees a seat if the given member still holds it, and publishes the leave
-- event from inside the same atomic step. Removing the last field deletes the
-- hash: an empty lobby leaves nothing behind.
--
-- KEYS[1]  the lobby's membership hash
-- ARGV[1]  the seat
-- ARGV[2]  the member id expected in that seat
-- ARGV[3]  the lobby's pub/sub channel
-- The event: 'L', seat, players, then one byte per occupied seat.
-- Returns the number of members left, or -1 if the seat was not the member's.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return -1
end
redis.call('HDEL', KEYS[1], ARGV[1])
local seats = {}
for _, taken in ipairs(redis.call('HKEYS', KEYS[1])) do
  seats[#seats + 1] = string.char(tonumber(taken))
end
redis.call('PUBLISH', ARGV[3], 'L' .. string.char(tonumber(ARGV[1]), #seats) .. table.concat(seats))
local players = #seats
return players
