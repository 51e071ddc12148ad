-- A rate limit shared by every node (generic cell rate algorithm): allows a
-- sustained rate of one event per `interval` with a burst of `burst`. The key
-- holds the theoretical arrival time of the next event (microseconds) and
-- expires when it no longer matters.
--
-- KEYS[1]  the limit's key, e.g. lr:rate:join:<client address>
-- ARGV[1]  interval between events at the sustained rate, in microseconds
-- ARGV[2]  burst (events allowed at once)
-- Returns 1 if the event is allowed (and counted), 0 if it is over the limit.
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval = math.max(tonumber(ARGV[1]), 1)
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local next_tat = tat + interval
if next_tat - now > interval * burst then
  return 0
end
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.floor((next_tat - now) / 1000) + 1)
return 1
