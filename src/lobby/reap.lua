-- Removes from a lobby every member recorded under a dead node's key, and
-- publishes a leave event for each, from inside the same atomic step.
--
-- KEYS[1]  the lobby's membership hash
-- ARGV[1]  the member id prefix of the dead node: '<node key>.'
-- ARGV[2]  the lobby's pub/sub channel
-- Returns how many members were removed.
local fields = redis.call('HGETALL', KEYS[1])
local prefix = ARGV[1]
local removed = 0
for i = 1, #fields, 2 do
  local seat, member = fields[i], fields[i + 1]
  if string.sub(member, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], seat)
    removed = removed + 1
    local seats = {}
    for _, taken in ipairs(redis.call('HKEYS', KEYS[1])) do
      seats[#seats + 1] = string.char(tonumber(taken))
    end
    redis.call('PUBLISH', ARGV[2], 'L' .. string.char(tonumber(seat), #seats) .. table.concat(seats))
  end
end
return removed
