-- Releases a held seat whose grace period has ended (or whose buffer
-- overflowed): the seat is freed and the others get playerLeft. Nothing held
-- for it remains. An lr:away entry that no longer matches (the seat came back,
-- or went away again later) is dropped or re-scored.
--
-- KEYS[1]  the lobby's membership hash
-- ARGV[1]  the seat
-- ARGV[2]  the lobby's pub/sub channel
-- ARGV[3]  now, in ms since the epoch
-- ARGV[4]  the lobby hash
-- Returns 1 if the seat was released, 0 if it is not (or no longer) due.
local res = res_of(KEYS[1], 9)
local seat = ARGV[1]
local entry = ARGV[4] .. ':' .. seat
if redis.call('HEXISTS', res, seat .. ':away') == 0 then
  AWAY_DEL[#AWAY_DEL + 1] = entry
  return 0
end
local due = tonumber(redis.call('HGET', res, seat .. ':due')) or 0
if due > tonumber(ARGV[3]) then
  AWAY_ADD[#AWAY_ADD + 1] = entry
  AWAY_ADD[#AWAY_ADD + 1] = due
  return 0
end
free_seat(KEYS[1], res, seat, ARGV[2])
settle_host(KEYS[1], ARGV[2])
return 1
