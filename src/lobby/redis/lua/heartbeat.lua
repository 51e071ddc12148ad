-- Renews a node's heartbeat, unless the node has been reaped: a reaped
-- incarnation must not be listed as alive again.
--
-- KEYS[1]  the heartbeat key, lr:{nodes}:node:<node key>
-- KEYS[2]  lr:{nodes}
-- KEYS[3]  the reaped mark, lr:{nodes}:reaped:<node key>
-- (One slot: the tag {nodes}.)
-- ARGV[1]  the heartbeat's value (JSON: node id, version, the node's figures)
-- ARGV[2]  its time to live in ms
-- ARGV[3]  the node key
-- Returns 1 if the node was reaped (nothing renewed), 0 otherwise.
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 0
