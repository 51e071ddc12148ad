-- Seats a member in the lowest free seat of a lobby, unless the lobby is full
-- (or the member's user already holds a seat there), and publishes the join
-- event from inside the same atomic step, so that every node sees membership
-- changes and messages in one order. (The node has added the lobby to its
-- index, lr:node-lobbies:<node key>, before: so that its members can be
-- found if it dies.)
--
-- KEYS[1]  the lobby's membership hash: field = seat number, value = member id
--          (`<node key>.<n>`, then `|<user id>` for an authenticated player)
-- ARGV[1]  the member id (node id / connection id [| user id]; never a
--          passphrase, never a token)
-- ARGV[2]  the lobby capacity
-- ARGV[3]  the lobby's pub/sub channel
-- ARGV[4]  the lobby hash
-- ARGV[5]  the member's user id, or '' for an anonymous player
-- ARGV[6]  resume (opt-in): SHA-256 (hex) of the seat's resume token secret,
--          or '' for a member who did not opt in
-- ARGV[7]  resume: the most deliveries held for a seat
-- ARGV[8]  resume: the most bytes held for a seat
-- ARGV[9]  resume: the grace period, in ms
-- ARGV[10] quick match: the key of the queue the member reserved its seat
--          in (the seat is the reservation's), or '' for a passphrase lobby
-- ARGV[11] quick match: now, in ms since the epoch
-- The event: 'J', seat, players, capacity, then one byte per occupied seat
-- (players bytes), then the member id; then for each occupied seat in the
-- same order a NUL byte and its user id (empty for an anonymous member);
-- then a NUL byte, 'h', the host's seat (one byte) and the epoch (decimal);
-- then a NUL byte, 's' and the number of spectators (decimal).
-- (A node of an older version reads the member id and the users, and never
-- gets as far as the host.) The first joiner of a lobby is its host (epoch
-- 1); a lobby without a host record (made by an older node, or Redis lost
-- it) gets the lowest occupied seat.
-- Returns {seat, players}; seat 0 means the lobby was full and nothing
-- changed, seat -1 that the user already holds a seat and nothing changed.
local players = redis.call('HLEN', KEYS[1])
local capacity = tonumber(ARGV[2])
local meta = meta_of(KEYS[1])
local queue = ARGV[10]
local taken = players
if queue ~= '' then
  -- The queue's lobby must still be (its reservation may have lapsed and
  -- the lobby gone); the others' reservations count as taken seats.
  if redis.call('HGET', meta, 'queue') ~= queue then
    return {0, players}
  end
  redis.call('HDEL', meta, 'r:' .. ARGV[1])
  taken = players + live_reservations(meta, tonumber(ARGV[11]))
end
if taken >= capacity then
  return {0, players}
end
local user = ARGV[5]
if user ~= '' then
  for _, member in ipairs(redis.call('HVALS', KEYS[1])) do
    if user_of(member) == user then
      return {-1, players}
    end
  end
end
local seat = 1
while redis.call('HEXISTS', KEYS[1], seat) == 1 do
  seat = seat + 1
end
redis.call('HSET', KEYS[1], seat, ARGV[1])
players = players + 1
if queue ~= '' then
  redis.call('PERSIST', meta)
end
local res = res_of(KEYS[1], 9)
if ARGV[6] ~= '' then
  forget_seat(res, seat)
  local seats = redis.call('HGET', res, 'seats') or ''
  redis.call('HSET', res, 'seats', seats .. string.char(seat), 'cap_n', ARGV[7], 'cap_b', ARGV[8],
    'grace', ARGV[9], seat .. ':tok', ARGV[6], seat .. ':n', 0, seat .. ':b', 0, seat .. ':sent', 0)
end
if queue ~= '' and players >= capacity then
  -- A game under way: what spectators of the queue watch.
  redis.call('HSET', queue, 'latest', ARGV[4])
end
local seats, tail = lobby_state(KEYS[1], ARGV[1])
local event = 'J' .. string.char(seat, players, capacity) .. seats .. tail
redis.call(PUBLISH, ARGV[3], event)
-- Everybody but the joiner is told; the joiner too when it fills the lobby
-- (ready).
if players >= capacity then
  hold(res, 0, event)
else
  hold(res, seat, event)
end
return {seat, players}
