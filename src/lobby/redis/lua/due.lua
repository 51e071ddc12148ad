-- Takes the held seats whose grace period has ended for this node to
-- release: the entries of lr:away scored at or before now, at most ARGV[2]
-- of them. Each one taken is scored again at now + ARGV[3] ms (a lease): the
-- other nodes leave it alone meanwhile, and should this node die before it
-- releases the seat, the entry comes due again when the lease ends.
-- (expire.lua then removes or re-scores the entry, whatever it finds.)
--
-- KEYS[1]  lr:away
-- ARGV[1]  now, in ms since the epoch
-- ARGV[2]  the most entries to take
-- ARGV[3]  the lease, in ms
-- Returns {entries taken, the score of the earliest entry now, or -1}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then
  local leased = tonumber(ARGV[1]) + tonumber(ARGV[3])
  local args = {}
  for _, entry in ipairs(due) do
    args[#args + 1] = leased
    args[#args + 1] = entry
  end
  redis.call('ZADD', KEYS[1], unpack(args))
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {due, tonumber(first[2]) or -1}
