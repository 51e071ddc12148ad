-- Held seats (resume, opt-in): helpers shared by the scripts that change a
-- lobby or relay in it. This text is prepended to those scripts.
--
-- For a lobby HASH:
--   lr:resume:{HASH}         hash: 'seats' (one byte per resumable seat),
--                            'cap_n', 'cap_b', 'grace' (the caps and grace in
--                            ms of the node that created it), and per seat S:
--                            'S:tok' SHA-256 of its resume token's secret,
--                            'S:prev' that of the token its last resume
--                            presented (still good until 'S:tok' is used),
--                            'S:n' lobby deliveries to S so far, 'S:b' bytes
--                            in its buffer, 'S:sent' game messages accepted
--                            from S, 'S:away' (while away) the value of S:n
--                            when it went away, 'S:over' its buffer overflowed;
--                            'away' (one byte per seat) the seats away
--   lr:resume:{HASH}:S       list: the last deliveries to S (envelopes), at
--                            most cap_n of them and cap_b bytes
--   'S:due' (while away) when its grace ends (ms since the epoch), 0 when
--   it must go at once (its buffer overflowed)
-- A delivery is what the relay sends a member of the lobby after `joined`:
-- game messages, ready, playerJoined, playerLeft, playerAway, playerBack.
--
-- Every key a script touches carries the lobby's hash tag, so that in a Redis
-- Cluster it runs on the one shard that owns the lobby. The index of held
-- seats by due time, lr:away (sorted set, 'HASH:S' scored by S:due), lives
-- elsewhere: scripts list the changes it needs in AWAY_ADD (entry, score,
-- ...) and AWAY_DEL (entry, ...), returned beside the script's own result
-- (see the end of the script), and the node applies them right after. Should
-- it die in between, the index heals: a reaper re-adds the held seats of a
-- dead node, and expire.lua drops entries of seats no longer held.
--
-- The host (every lobby has one), and the spectators:
--   lr:meta:{HASH}           hash: 'host' the host's seat, 'epoch' a number
--                            that grows by one whenever the host changes,
--                            'sp:<node key>' how many spectators watch from
--                            that node; deleted with the lobby (kept while
--                            spectators watch an empty one)
--
-- Quick match (a join naming a queue):
--   lr:queue:{q:NAME}        hash: 'open' the hash of the queue's lobby with
--                            free seats (at most one), 'lobbies' how many
--                            lobbies the queue has, 'latest' the lobby that
--                            filled last (what spectators of the queue
--                            watch); deleted with its last lobby
--   lr:meta:{HASH}           of a queue's lobby, also: 'queue' the key of its
--                            queue, and per reserved seat 'r:<member id>'
--                            until when (ms since the epoch); it expires by
--                            itself while no member has taken a seat
-- A queue's lobby ids are random but chosen so that their keys hash to the
-- queue's slot: in a Redis Cluster a queue and its lobbies are on one shard,
-- and one script changes both.
--
-- PUBLISH is 'PUBLISH' with one Redis and 'SPUBLISH' (sharded pub/sub) in a
-- Redis Cluster; it is defined in front of this text.

local AWAY_ADD = {}
local AWAY_DEL = {}

local function res_of(key, prefix_len)
  return 'lr:resume:' .. string.sub(key, prefix_len + 1)
end

local function hex_of(res)
  return string.sub(res, 12, -2)
end

-- The host record of the lobby whose membership hash is `lobby`.
local function meta_of(lobby)
  return 'lr:meta:' .. string.sub(lobby, 10)
end

-- Redis's clock, in ms since the epoch.
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- The reservations of a queue's lobby (its `meta`) still running at `now`;
-- the lapsed ones are dropped.
local function live_reservations(meta, now)
  local n = 0
  local fields = redis.call('HGETALL', meta)
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'r:' then
      if tonumber(fields[i + 1]) <= now then
        redis.call('HDEL', meta, fields[i])
      else
        n = n + 1
      end
    end
  end
  return n
end

-- A queue's lobby `hex` is gone: out of its queue, whose last lobby it may
-- have been.
local function forget_queue_lobby(queue, hex)
  if redis.call('HGET', queue, 'open') == hex then
    redis.call('HDEL', queue, 'open')
  end
  if redis.call('HGET', queue, 'latest') == hex then
    redis.call('HDEL', queue, 'latest')
  end
  if redis.call('HINCRBY', queue, 'lobbies', -1) <= 0 then
    redis.call('DEL', queue)
  end
end

-- The lowest occupied seat of `lobby`, or nil.
local function lowest_seat(lobby)
  local lowest
  for _, taken in ipairs(redis.call('HKEYS', lobby)) do
    local s = tonumber(taken)
    if not lowest or s < lowest then
      lowest = s
    end
  end
  return lowest
end

-- The user id in a member id (`<node key>.<n>|<user id>`), or ''.
local function user_of(member)
  local bar = string.find(member, '|', 1, true)
  if bar then
    return string.sub(member, bar + 1)
  end
  return ''
end

-- How many spectators watch the lobby of `meta` (the sum of its 'sp:<node
-- key>' fields: each node counts its own, so that a reaper can take a dead
-- node's spectators off).
local function spectators_of(meta)
  local total = 0
  local fields = redis.call('HGETALL', meta)
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 3) == 'sp:' then
      total = total + tonumber(fields[i + 1])
    end
  end
  return total
end

-- What the join and watch events say of a lobby (with at least one member):
-- its occupied seats (one byte each, in Redis's order), and the rest of the
-- event after them: `member`, then for each seat in the same order a NUL and
-- its user id (empty for an anonymous member), then a NUL, 'h', the host's
-- seat (one byte) and the epoch (decimal), then a NUL, 's' and the number of
-- spectators (decimal). A lobby without a host (its first join, or made by
-- an older node, or Redis lost it) gets the lowest occupied seat.
local function lobby_state(lobby, member)
  local seats = {}
  local users = {}
  local fields = redis.call('HGETALL', lobby)
  for i = 1, #fields, 2 do
    seats[#seats + 1] = string.char(tonumber(fields[i]))
    users[#users + 1] = user_of(fields[i + 1])
  end
  local meta = meta_of(lobby)
  local host = redis.call('HGET', meta, 'host')
  local epoch
  if host and redis.call('HEXISTS', lobby, host) == 1 then
    epoch = redis.call('HGET', meta, 'epoch')
  else
    host = lowest_seat(lobby)
    epoch = redis.call('HINCRBY', meta, 'epoch', 1)
    redis.call('HSET', meta, 'host', host)
  end
  return table.concat(seats), member .. '\0' .. table.concat(users, '\0') .. '\0h' ..
    string.char(tonumber(host)) .. epoch .. '\0s' .. spectators_of(meta)
end

-- An empty lobby's record goes, unless spectators still watch it (they see
-- the next players come); the next joiner is its first (host, epoch 1).
local function drop_meta(meta)
  if spectators_of(meta) == 0 then
    redis.call('DEL', meta)
  else
    redis.call('HDEL', meta, 'host', 'epoch', 'queue')
  end
end

-- After seats were freed: if the host's seat is no longer occupied (or the
-- lobby has no host record: made by an older node, or Redis lost it), the
-- lowest occupied seat becomes host, the epoch grows, and the lobby is told
-- ('H', seat, epoch in decimal) right after the leave events. Not held for
-- resume: a resumed player is told the host in `resumed`.
local function settle_host(lobby, channel)
  local lowest = lowest_seat(lobby)
  if not lowest then
    return
  end
  local meta = meta_of(lobby)
  local host = redis.call('HGET', meta, 'host')
  if host and redis.call('HEXISTS', lobby, host) == 1 then
    return
  end
  local epoch = redis.call('HINCRBY', meta, 'epoch', 1)
  redis.call('HSET', meta, 'host', lowest)
  redis.call(PUBLISH, channel, 'H' .. string.char(lowest) .. epoch)
end

-- Appends `entry` to the buffer of every resumable seat but `skip`. `meta`
-- is HMGET res seats cap_n cap_b away, when the caller has it already.
-- Per seat and message: HINCRBY n, RPUSH, (once full) LPOP, HINCRBY b.
local function hold(res, skip, entry, meta)
  meta = meta or redis.call('HMGET', res, 'seats', 'cap_n', 'cap_b', 'away')
  local seats = meta[1]
  if not seats or seats == '' then
    return
  end
  local cap_n, cap_b, away = tonumber(meta[2]), tonumber(meta[3]), meta[4] or ''
  for i = 1, #seats do
    local s = string.byte(seats, i)
    if s ~= skip then
      local list = res .. ':' .. s
      local n = redis.call('HINCRBY', res, s .. ':n', 1)
      local len = redis.call('RPUSH', list, entry)
      local grown = #entry
      if len > cap_n then
        grown = grown - #redis.call('LPOP', list)
        len = len - 1
      end
      local bytes = redis.call('HINCRBY', res, s .. ':b', grown)
      while bytes > cap_b and len > 1 do
        bytes = redis.call('HINCRBY', res, s .. ':b', -#redis.call('LPOP', list))
        len = len - 1
      end
      if away ~= '' and string.find(away, string.char(s), 1, true) then
        local away_at = tonumber(redis.call('HGET', res, s .. ':away'))
        if n - len > away_at then
          -- Deliveries the away member has not seen were dropped: its seat
          -- goes now (the reaper releases it with playerLeft).
          redis.call('HSET', res, s .. ':over', 1, s .. ':due', 0)
          AWAY_ADD[#AWAY_ADD + 1] = hex_of(res) .. ':' .. s
          AWAY_ADD[#AWAY_ADD + 1] = 0
        end
      end
    end
  end
end

-- Removes `seat` from the seat list in `field` (seats, away).
local function drop_seat(res, field, seat)
  local seats = redis.call('HGET', res, field)
  if not seats then
    return ''
  end
  local kept = {}
  for i = 1, #seats do
    local b = string.byte(seats, i)
    if b ~= tonumber(seat) then
      kept[#kept + 1] = string.char(b)
    end
  end
  kept = table.concat(kept)
  redis.call('HSET', res, field, kept)
  return kept
end

-- Forgets everything held for `seat`.
local function forget_seat(res, seat)
  if redis.call('EXISTS', res) == 0 then
    return
  end
  drop_seat(res, 'away', seat)
  local kept = drop_seat(res, 'seats', seat)
  redis.call('HDEL', res, seat .. ':tok', seat .. ':prev', seat .. ':n', seat .. ':b', seat .. ':sent', seat .. ':away',
    seat .. ':over', seat .. ':due')
  redis.call('DEL', res .. ':' .. seat)
  AWAY_DEL[#AWAY_DEL + 1] = hex_of(res) .. ':' .. seat
  if kept == '' then
    redis.call('DEL', res)
  end
end

-- Whether `seat` is resumable.
local function resumable(res, seat)
  local seats = redis.call('HGET', res, 'seats')
  return seats and string.find(seats, string.char(seat), 1, true) ~= nil
end

-- The leave event of `seat` (already removed from the lobby hash).
local function left_event(lobby, seat)
  local seats = {}
  for _, taken in ipairs(redis.call('HKEYS', lobby)) do
    seats[#seats + 1] = string.char(tonumber(taken))
  end
  return 'L' .. string.char(tonumber(seat), #seats) .. table.concat(seats), #seats
end

-- Marks a resumable seat away (its connection is gone, its seat held for the
-- grace period) and tells the others. False if it already was (its entry in
-- lr:away is listed again, in case the node that marked it died before
-- adding it).
local function mark_away(res, seat, now, channel)
  local entry = hex_of(res) .. ':' .. seat
  if redis.call('HEXISTS', res, seat .. ':away') == 1 then
    AWAY_ADD[#AWAY_ADD + 1] = entry
    AWAY_ADD[#AWAY_ADD + 1] = tonumber(redis.call('HGET', res, seat .. ':due')) or 0
    return false
  end
  local grace = tonumber(redis.call('HGET', res, 'grace'))
  redis.call('HSET', res, seat .. ':away', redis.call('HGET', res, seat .. ':n'),
    seat .. ':due', now + grace,
    'away', (redis.call('HGET', res, 'away') or '') .. string.char(tonumber(seat)))
  AWAY_ADD[#AWAY_ADD + 1] = entry
  AWAY_ADD[#AWAY_ADD + 1] = now + grace
  local event = 'A' .. string.char(tonumber(seat)) .. tostring(grace)
  redis.call(PUBLISH, channel, event)
  hold(res, tonumber(seat), event)
  return true
end

-- Frees `seat` of `lobby` (whose holder the caller checked), forgets what
-- was held for it and tells the others (playerLeft, kept for the resumable
-- ones). Returns the players left; an empty lobby leaves nothing behind.
-- The caller then calls settle_host (once, after all the seats it frees).
local function free_seat(lobby, res, seat, channel)
  redis.call('HDEL', lobby, seat)
  forget_seat(res, seat)
  local event, players = left_event(lobby, seat)
  redis.call(PUBLISH, channel, event)
  if players == 0 then
    redis.call('DEL', res)
    local meta = meta_of(lobby)
    local queue = redis.call('HGET', meta, 'queue')
    if queue and live_reservations(meta, now_ms()) > 0 then
      -- A player is about to take a reserved seat: the lobby stays, hostless.
      redis.call('HDEL', meta, 'host')
      redis.call('PEXPIRE', meta, 10000)
    else
      if queue then
        forget_queue_lobby(queue, string.sub(lobby, 11, -2))
      end
      drop_meta(meta)
    end
  else
    hold(res, tonumber(seat), event)
  end
  return players
end
