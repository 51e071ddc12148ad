-- Removes from a lobby every member recorded under a dead node's key, and
-- publishes a leave event for each, from inside the same atomic step. A
-- resumable member (resume) is not removed but marked away: its seat is held
-- for the grace period, for the player to come back on another node.
--
-- KEYS[1]  the lobby's membership hash
-- ARGV[1]  the member id prefix of the dead node: '<node key>.'
-- ARGV[2]  the lobby's pub/sub channel
-- ARGV[3]  now, in ms since the epoch
-- Its spectators are taken off the lobby's count ('S' event).
-- Returns how many members were removed or marked away.
local fields = redis.call('HGETALL', KEYS[1])
local prefix = ARGV[1]
local res = res_of(KEYS[1], 9)
local removed = 0
for i = 1, #fields, 2 do
  local seat, member = fields[i], fields[i + 1]
  if string.sub(member, 1, #prefix) == prefix then
    if resumable(res, tonumber(seat)) then
      if mark_away(res, seat, tonumber(ARGV[3]), ARGV[2]) then
        removed = removed + 1
      end
    else
      free_seat(KEYS[1], res, seat, ARGV[2])
      removed = removed + 1
    end
  end
end
settle_host(KEYS[1], ARGV[2])
-- The dead node's spectators watch no more.
local meta = meta_of(KEYS[1])
if redis.call('HDEL', meta, 'sp:' .. string.sub(prefix, 1, -2)) == 1 then
  local total = spectators_of(meta)
  if total == 0 and redis.call('HLEN', KEYS[1]) == 0 then
    redis.call('DEL', meta)
  end
  redis.call(PUBLISH, ARGV[2], 'S' .. total)
end
return removed
