-- Spectators: a spectator stops watching a lobby. Its node's count goes
-- down, and the new total is published ('S', count in decimal). A lobby
-- with neither players nor spectators leaves nothing behind.
--
-- KEYS[1]  the lobby's membership hash
-- ARGV[1]  the spectator's node's key
-- ARGV[2]  the lobby's pub/sub channel
-- Returns the spectators left.
local meta = meta_of(KEYS[1])
local field = 'sp:' .. ARGV[1]
if redis.call('HINCRBY', meta, field, -1) <= 0 then
  redis.call('HDEL', meta, field)
end
local total = spectators_of(meta)
if total == 0 and redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('DEL', meta)
end
redis.call(PUBLISH, ARGV[2], 'S' .. total)
return total
