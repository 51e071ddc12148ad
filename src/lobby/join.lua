-- Seats a member in the lowest free seat of a lobby, unless the lobby is full,
-- and publishes the join event from inside the same atomic step, so that every
-- node sees membership changes and messages in one order.
--
-- KEYS[1]  the lobby's membership hash: field = seat number, value = member id
-- ARGV[1]  the member id (node id / connection id; never a passphrase)
-- ARGV[2]  the lobby capacity
-- ARGV[3]  the lobby's pub/sub channel
-- Returns {seat, players}; seat 0 means the lobby was full and nothing changed.
local players = redis.call('HLEN', KEYS[1])
local capacity = tonumber(ARGV[2])
if players >= capacity then
  return {0, players}
end
local seat = 1
while redis.call('HEXISTS', KEYS[1], seat) == 1 do
  seat = seat + 1
end
redis.call('HSET', KEYS[1], seat, ARGV[1])
players = players + 1
redis.call('PUBLISH', ARGV[3], 'J' .. string.char(seat, players, capacity) .. ARGV[1])
return {seat, players}
