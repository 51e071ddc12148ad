-- Publishes a batch of game messages sent by members of one node, each only
-- if its sender still holds its seat: a member whose seat was given up
-- (left, reaped after its node was presumed dead, or held away for resume)
-- must not be heard in the lobby again, not even through messages that were
-- on their way while its node was cut off (they are checked here, when Redis
-- runs them). `reap` frees or holds the seats before it publishes the leave
-- or away events, so nothing of a reaped member can follow its `playerLeft`.
-- In a lobby with resumable members, each message is also kept in their
-- buffers (held.lua), and counted for its sender.
--
-- KEYS[1]  the membership hash of a lobby of the batch (in a Redis Cluster
--          every lobby of a batch is in the same slot)
-- ARGV[1]  the senders' member id prefix, '<node key>.'
-- ARGV[2]  the run's deadline on Redis's clock (ms since the epoch), 0 for
--          none: a run that Redis gets to later (it was frozen while the run
--          waited in a socket buffer) is dropped whole, never relayed late
-- ARGV     then channel, payload, channel, payload, ...
-- Returns {messages dropped for senders without their seat, messages
-- dropped for coming past the deadline, Redis's clock in ms}.
local prefix = ARGV[1]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local deadline = tonumber(ARGV[2])
if deadline > 0 and now > deadline then
  return {0, (#ARGV - 2) / 2, now}
end
-- Per lobby and batch (a batch does not change them): whether the lobby has
-- resumable seats, and whether each sender holds its seat. Most lobbies have
-- no resumable seat, and a batch at full load holds many messages of each.
local held = {}
local allowed = {}
local dropped = 0
for i = 3, #ARGV, 2 do
  local channel, payload = ARGV[i], ARGV[i + 1]
  local lobby = held[channel]
  if lobby == nil then
    lobby = false
    local res = res_of(channel, 8)
    if redis.call('EXISTS', res) == 1 then
      lobby = {res, redis.call('HMGET', res, 'seats', 'cap_n', 'cap_b', 'away')}
    end
    held[channel] = lobby
  end
  local from = string.byte(payload, 2)
  local sender = channel .. ':' .. from
  local ok = allowed[sender]
  if ok == nil then
    local member = redis.call('HGET', 'lr:lobby:' .. string.sub(channel, 9), from)
    ok = member and string.sub(member, 1, #prefix) == prefix or false
    if ok and lobby and lobby[2][4] and string.find(lobby[2][4], string.char(from), 1, true) then
      ok = false
    end
    allowed[sender] = ok
  end
  if ok then
    redis.call(PUBLISH, channel, payload)
    if lobby and lobby[2][1] then
      local res, meta = lobby[1], lobby[2]
      hold(res, from, payload, meta)
      if string.find(meta[1], string.char(from), 1, true) then
        redis.call('HINCRBY', res, from .. ':sent', 1)
      end
    end
  else
    dropped = dropped + 1
  end
end
return {dropped, 0, now}
