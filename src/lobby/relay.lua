-- Publishes a batch of game messages of one node, unless that node has been
-- presumed dead and reaped: a member whose seat was given up must not be heard
-- in the lobby again, not even through messages that were on their way while
-- the node was cut off (they are checked here, when Redis runs them).
-- `reap` sets the mark before it publishes the leave events, so nothing of a
-- reaped member can follow its `playerLeft`.
-- In a lobby with resumable members, each message is also kept in their
-- buffers (held.lua), and counted for its sender.
--
-- KEYS[1]  the node's reaped mark, lr:reaped:<node key>
-- ARGV     channel, payload, channel, payload, ...
-- Returns the number of messages published, or -1 if the node was reaped.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
-- Whether a lobby has resumable seats is looked up once per lobby and batch
-- (a batch does not change it): most lobbies have none, and a batch at full
-- load holds many messages of each lobby.
local held = {}
for i = 1, #ARGV, 2 do
  local channel, payload = ARGV[i], ARGV[i + 1]
  redis.call('PUBLISH', channel, payload)
  local lobby = held[channel]
  if lobby == nil then
    lobby = false
    local res = res_of(channel, 8)
    if redis.call('EXISTS', res) == 1 then
      lobby = {res, redis.call('HMGET', res, 'seats', 'cap_n', 'cap_b', 'away')}
    end
    held[channel] = lobby
  end
  if lobby and lobby[2][1] then
    local res, meta = lobby[1], lobby[2]
    local from = string.byte(payload, 2)
    hold(res, from, payload, meta)
    if string.find(meta[1], string.char(from), 1, true) then
      redis.call('HINCRBY', res, from .. ':sent', 1)
    end
  end
end
return #ARGV / 2
