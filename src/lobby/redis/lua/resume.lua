-- A player presents the resume token of a seat on a new connection: the seat
-- becomes the new member's, the token is replaced, the others are told
-- (playerBack), and the deliveries the player has not received are returned.
-- (The node has added the lobby to its index before.)
--
-- KEYS[1]  the lobby's membership hash
-- ARGV[1]  the seat
-- ARGV[2]  SHA-256 (hex) of the presented token's secret
-- ARGV[3]  SHA-256 (hex) of the new token's secret
-- ARGV[4]  how many deliveries the player received before the drop
-- ARGV[5]  the new member id (given the user id of the old one, if it has
--          none of its own)
-- ARGV[6]  the lobby's pub/sub channel
-- ARGV[7]  the lobby hash
-- ARGV[8]  now, in ms since the epoch: a seat past the end of its grace
--          period is refused, released or not yet
-- The event: 'K', seat, then the new member id.
-- Returns {1, players, sent, member record, host seat, epoch, delivery...}
-- on success (host and epoch 0 when the lobby has no host record); {-1} for a wrong
-- token (neither the seat's nor the one its last resume presented) or a
-- released seat, {-2} when the buffer overflowed, {-3, n,
-- first} when `received` is outside what is held (first..n).
local res = res_of(KEYS[1], 9)
local seat = ARGV[1]
-- The seat's token, or the one its last resume presented: that resume's
-- answer (with the new token) may have died with its connection.
local token = redis.call('HGET', res, seat .. ':tok')
local presented = redis.call('HGET', res, seat .. ':prev')
if not token or (token ~= ARGV[2] and presented ~= ARGV[2]) or not redis.call('HGET', KEYS[1], seat) then
  return {-1}
end
if redis.call('HEXISTS', res, seat .. ':over') == 1 then
  return {-2}
end
local due = tonumber(redis.call('HGET', res, seat .. ':due'))
if due and due <= tonumber(ARGV[8]) then
  return {-1}
end
local list = res .. ':' .. seat
local n = tonumber(redis.call('HGET', res, seat .. ':n'))
local first = n - redis.call('LLEN', list) + 1
local received = tonumber(ARGV[4])
if not received or received > n or received + 1 < first then
  return {-3, n, first}
end
local missed = redis.call('LRANGE', list, received + 1 - first, -1)
local record = ARGV[5]
local old = redis.call('HGET', KEYS[1], seat)
local bar = string.find(old, '|', 1, true)
if bar and not string.find(record, '|', 1, true) then
  record = record .. string.sub(old, bar)
end
redis.call('HSET', KEYS[1], seat, record)
redis.call('HSET', res, seat .. ':tok', ARGV[3], seat .. ':prev', ARGV[2])
redis.call('HDEL', res, seat .. ':away', seat .. ':due')
drop_seat(res, 'away', seat)
AWAY_DEL[#AWAY_DEL + 1] = ARGV[7] .. ':' .. seat
local event = 'K' .. string.char(tonumber(seat)) .. record
redis.call(PUBLISH, ARGV[6], event)
hold(res, tonumber(seat), event)
local host = redis.call('HMGET', meta_of(KEYS[1]), 'host', 'epoch')
local reply = {1, redis.call('HLEN', KEYS[1]), tonumber(redis.call('HGET', res, seat .. ':sent')), record,
  tonumber(host[1]) or 0, tonumber(host[2]) or 0}
for _, entry in ipairs(missed) do
  reply[#reply + 1] = entry
end
return reply
