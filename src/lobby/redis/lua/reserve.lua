-- Quick match, first step: reserves a seat for a member in the queue's
-- lobby with free seats (the oldest: a queue has at most one), or in a new
-- lobby of the queue, and keeps the queue's open lobby up to date in the
-- same step: a lobby whose seats are all taken or reserved is no longer
-- open, so the next player opens a new one. The member's node then
-- subscribes to the lobby and joins it (join.lua, naming the queue), which
-- takes the reservation. A reservation lapses by itself.
--
-- KEYS[1]  the queue's hash (lr:queue:{q:NAME}; every key of its lobbies is
--          in the same slot)
-- ARGV[1]  the member id
-- ARGV[2]  the lobby capacity
-- ARGV[3]  a new lobby's hash, random and in the queue's slot, or '' (the
--          node asks again with one if a new lobby is needed)
-- ARGV[4]  the most lobbies the queue may have
-- ARGV[5]  now, in ms since the epoch
-- ARGV[6]  how long a reservation lasts, in ms
-- Returns {1, lobby hash} when reserved, {0} when a new lobby is needed and
-- ARGV[3] was '', {-1} when the queue has ARGV[4] lobbies already.
local queue = KEYS[1]
local capacity = tonumber(ARGV[2])
local now = tonumber(ARGV[5])
local until_ms = now + tonumber(ARGV[6])
local function taken(hex)
  return redis.call('HLEN', 'lr:lobby:{' .. hex .. '}') + live_reservations('lr:meta:{' .. hex .. '}', now)
end
local open = redis.call('HGET', queue, 'open')
if open then
  redis.call('HDEL', queue, 'open')
  local meta = 'lr:meta:{' .. open .. '}'
  if redis.call('EXISTS', meta) == 0 then
    -- Reserved, never joined, expired: the lobby is gone.
    redis.call('HINCRBY', queue, 'lobbies', -1)
  elseif taken(open) < capacity then
    redis.call('HSET', meta, 'r:' .. ARGV[1], until_ms)
    if redis.call('HLEN', 'lr:lobby:{' .. open .. '}') == 0 then
      redis.call('PEXPIRE', meta, ARGV[6])
    end
    if taken(open) < capacity then
      redis.call('HSET', queue, 'open', open)
    end
    return {1, open}
  end
end
if ARGV[3] == '' then
  return {0}
end
if (tonumber(redis.call('HGET', queue, 'lobbies')) or 0) >= tonumber(ARGV[4]) then
  return {-1}
end
local hex = ARGV[3]
local meta = 'lr:meta:{' .. hex .. '}'
if redis.call('EXISTS', meta) == 1 or redis.call('EXISTS', 'lr:lobby:{' .. hex .. '}') == 1 then
  return {0} -- 256 random bits taken already: never seen, but ask again
end
redis.call('HINCRBY', queue, 'lobbies', 1)
redis.call('HSET', meta, 'queue', queue, 'r:' .. ARGV[1], until_ms)
redis.call('PEXPIRE', meta, ARGV[6])
if capacity > 1 then
  redis.call('HSET', queue, 'open', hex)
end
return {1, hex}
