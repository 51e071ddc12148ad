-- Quick match: gives a reservation up (the member's join did not happen).
-- A lobby left with nobody in it and no other reservation goes; one left
-- with free seats is the queue's open lobby again if the queue has none (so
-- that its players are not left waiting).
--
-- KEYS[1]  the queue's hash
-- ARGV[1]  the member id
-- ARGV[2]  the lobby's hash
-- ARGV[3]  the lobby capacity
-- ARGV[4]  now, in ms since the epoch
-- Returns 1, or 0 if the lobby is not the queue's (any more).
local meta = 'lr:meta:{' .. ARGV[2] .. '}'
if redis.call('HGET', meta, 'queue') ~= KEYS[1] then
  return 0
end
redis.call('HDEL', meta, 'r:' .. ARGV[1])
local taken = redis.call('HLEN', 'lr:lobby:{' .. ARGV[2] .. '}') + live_reservations(meta, tonumber(ARGV[4]))
if taken == 0 then
  redis.call('DEL', meta)
  forget_queue_lobby(KEYS[1], ARGV[2])
elseif taken < tonumber(ARGV[3]) and not redis.call('HGET', KEYS[1], 'open') then
  redis.call('HSET', KEYS[1], 'open', ARGV[2])
end
return 1
