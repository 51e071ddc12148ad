-- Seats a member in the lowest free seat of a lobby, unless the lobby is full,
-- and publishes the join event from inside the same atomic step, so that every
-- node sees membership changes and messages in one order.
--
-- KEYS[1]  the lobby's membership hash: field = seat number, value = member id
-- KEYS[2]  the joining node's lobby index (set of lobby hashes it has members
--          in), so that its members can be found if it dies
-- ARGV[1]  the member id (node id / connection id; never a passphrase)
-- ARGV[2]  the lobby capacity
-- ARGV[3]  the lobby's pub/sub channel
-- ARGV[4]  the lobby hash (for the index)
-- The event: 'J', seat, players, capacity, then one byte per occupied seat
-- (players bytes), then the member id.
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
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[1], seat, ARGV[1])
players = players + 1
local seats = {}
for _, taken in ipairs(redis.call('HKEYS', KEYS[1])) do
  seats[#seats + 1] = string.char(tonumber(taken))
end
redis.call('PUBLISH', ARGV[3], 'J' .. string.char(seat, players, capacity) .. table.concat(seats) .. ARGV[1])
return {seat, players}
