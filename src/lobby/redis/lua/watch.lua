-- Spectators: a spectator starts watching a lobby (its node subscribed to
-- the lobby's channel first, and indexed the lobby). Refused if the lobby
-- has no player or has the most spectators it may have; else counted under
-- its node's key, and the watch event is published in the same step, so
-- that the spectator gets everything after it, in the lobby's order.
--
-- KEYS[1]  the lobby's membership hash
-- ARGV[1]  the spectator's member id
-- ARGV[2]  its node's key
-- ARGV[3]  the most spectators a lobby may have
-- ARGV[4]  the lobby's pub/sub channel
-- ARGV[5]  the lobby capacity
-- The event: 'W', players, capacity, one byte per occupied seat, then the
-- member id, the users, the host and the spectators as in a join event
-- (held.lua's lobby_state). Not kept for resume: it is no delivery to the
-- players.
-- Returns 1 when watching, 0 when the lobby has no player, -1 when it has
-- ARGV[3] spectators.
local players = redis.call('HLEN', KEYS[1])
if players == 0 then
  return 0
end
local meta = meta_of(KEYS[1])
if spectators_of(meta) >= tonumber(ARGV[3]) then
  return -1
end
redis.call('HINCRBY', meta, 'sp:' .. ARGV[2], 1)
local seats, tail = lobby_state(KEYS[1], ARGV[1])
redis.call(PUBLISH, ARGV[4], 'W' .. string.char(players, tonumber(ARGV[5])) .. seats .. tail)
return 1
