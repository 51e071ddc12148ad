-- Frees a seat if the given member still holds it, and publishes the leave
-- event from inside the same atomic step. Removing the last field deletes the
-- hash: an empty lobby leaves nothing behind. What was held for the seat
-- (resume) goes with it.
--
-- KEYS[1]  the lobby's membership hash
-- ARGV[1]  the seat, or 0 for whichever seat the member holds (after a join
--          whose answer was lost)
-- ARGV[2]  the member id expected in that seat
-- ARGV[3]  the lobby's pub/sub channel
-- The event: 'L', seat, players, then one byte per occupied seat; then, if
-- the seat was the host's, 'H' (held.lua's settle_host).
-- Returns the number of members left, or -1 if the seat was not the member's.
local seat = ARGV[1]
if seat == '0' then
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    if fields[i + 1] == ARGV[2] then
      seat = fields[i]
    end
  end
end
if redis.call('HGET', KEYS[1], seat) ~= ARGV[2] then
  return -1
end
local players = free_seat(KEYS[1], res_of(KEYS[1], 9), seat, ARGV[3])
settle_host(KEYS[1], ARGV[3])
return players
