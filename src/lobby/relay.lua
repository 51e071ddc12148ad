-- Publishes a batch of game messages of one node, unless that node has been
-- presumed dead and reaped: a member whose seat was given up must not be heard
-- in the lobby again, not even through messages that were on their way while
-- the node was cut off (they are checked here, when Redis runs them).
-- `reap` sets the mark before it publishes the leave events, so nothing of a
-- reaped member can follow its `playerLeft`.
--
-- KEYS[1]  the node's reaped mark, lr:reaped:<node key>
-- ARGV     channel, payload, channel, payload, ...
-- Returns the number of messages published, or -1 if the node was reaped.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
for i = 1, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
