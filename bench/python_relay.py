#!/usr/bin/env python3
"""A straightforward Python relay of the lobby-relay protocol, for comparison.

The seed's stack made to scale: asyncio + ``websockets`` + ``redis.asyncio``.
It implements what the benchmark needs of docs/protocol.md: ``join`` (both
forms) into lobbies of capacity 2, ``joined``, ``ready``, game messages
relayed to the other members (never echoed), ``ping``/``pong``, ``leave`` and
``playerLeft``, and the common errors.

Several processes share one Redis, like lobby-relay's nodes:

- a lobby's members live in the Redis hash ``py:lobby:{sha256}`` (seat ->
  member id); a Lua script takes the lowest free seat atomically, so a lobby
  never holds more than its capacity;
- every message of a lobby goes through its pub/sub channel
  ``py:chan:{sha256}``; each process holds ONE pub/sub connection and
  subscribes to the channels of the lobbies that have members on it, and one
  task dispatches what arrives to the local members.

Each client's messages are published one after the other (awaited), which
keeps one sender's order. Run it as::

    python3 bench/python_relay.py --listen 127.0.0.1:8770 \\
        --redis-url redis://127.0.0.1:6379/ --node-id py-1

Needs ``websockets`` (13 or later) and ``redis`` (5 or later; with
``hiredis`` its parser is faster): ``pip install websockets 'redis[hiredis]'``.
"""

import argparse
import asyncio
import hashlib
import itertools
import json
import re
import signal
import sys

import redis.asyncio as aioredis
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

CONTROL_TYPES = {"join", "leave", "ping", "joined", "ready", "playerJoined",
                 "playerLeft", "pong", "error"}
PASSPHRASE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,62})[a-z0-9]$")

# KEYS[1] lobby hash; ARGV[1] member id, ARGV[2] capacity.
# Returns {seat, players}, or {0, players} when the lobby is full.
JOIN_LUA = """
local cap = tonumber(ARGV[2])
local n = redis.call('HLEN', KEYS[1])
if n >= cap then return {0, n} end
local seat = 1
while redis.call('HEXISTS', KEYS[1], seat) == 1 do seat = seat + 1 end
redis.call('HSET', KEYS[1], seat, ARGV[1])
return {seat, n + 1}
"""

# KEYS[1] lobby hash, KEYS[2] channel; ARGV[1] seat, ARGV[2] member id.
LEAVE_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
local n = redis.call('HLEN', KEYS[1])
if n == 0 then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', KEYS[2], 'L' .. n .. ' ' .. ARGV[1])
return n
"""


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


def error(code, message):
    return dumps({"type": "error", "code": code, "message": message})


class Member:
    def __init__(self, member_id, ws):
        self.id = member_id
        self.id_bytes = member_id.encode()
        self.ws = ws
        self.channel = None
        self.key = None
        self.seat = None


class Node:
    def __init__(self, redis_url, node_id, capacity):
        # Publishes wait for a free connection rather than fail when every
        # one is busy (the default pool raises "Too many connections").
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=64, timeout=None)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.pubsub = self.redis.pubsub()
        self.node_id = node_id
        self.capacity = capacity
        self.ids = itertools.count(1)
        self.local = {}        # channel -> set of local members
        self.subscribed = {}   # channel -> Event set once SUBSCRIBE is confirmed
        self.join_script = self.redis.register_script(JOIN_LUA)
        self.leave_script = self.redis.register_script(LEAVE_LUA)

    async def start(self):
        # A channel of our own keeps the pub/sub connection subscribed (and
        # listen() running) while no lobby has members here.
        await self.pubsub.subscribe(f"py:node:{self.node_id}")
        asyncio.create_task(self.listen())

    async def listen(self):
        async for msg in self.pubsub.listen():
            kind = msg["type"]
            if kind == "subscribe":
                event = self.subscribed.get(msg["channel"].decode())
                if event is not None:
                    event.set()
            elif kind == "message":
                await self.dispatch(msg["channel"].decode(), msg["data"])

    async def dispatch(self, channel, data):
        members = self.local.get(channel)
        if not members:
            return
        tag = data[:1]
        if tag in (b"T", b"B"):
            sender, _, payload = data[1:].partition(b"|")
            text = tag == b"T"
            for m in list(members):
                if m.id_bytes != sender:
                    try:
                        await m.ws.send(payload, text=text)
                    except ConnectionClosed:
                        pass
        elif tag == b"R":
            frame = dumps({"type": "ready", "players": int(data[1:])})
            for m in list(members):
                await self.safe_send(m, frame)
        elif tag == b"L":
            players, seat = data[1:].split()
            frame = dumps({"type": "playerLeft", "players": int(players),
                                "seat": int(seat)})
            for m in list(members):
                if m.seat != int(seat):
                    await self.safe_send(m, frame)

    @staticmethod
    async def safe_send(member, frame):
        try:
            await member.ws.send(frame)
        except ConnectionClosed:
            pass

    async def subscribe(self, channel, member):
        members = self.local.setdefault(channel, set())
        members.add(member)
        event = self.subscribed.get(channel)
        if event is None:
            event = self.subscribed[channel] = asyncio.Event()
            await self.pubsub.subscribe(channel)
        await event.wait()

    async def unsubscribe(self, channel, member):
        members = self.local.get(channel)
        if members is None:
            return
        members.discard(member)
        if not members:
            del self.local[channel]
            del self.subscribed[channel]
            await self.pubsub.unsubscribe(channel)

    async def join(self, member, passphrase):
        if member.channel is not None:
            return await member.ws.send(error(
                "already_joined", "this connection is already in a lobby"))
        passphrase = passphrase.strip().lower()
        if not PASSPHRASE.match(passphrase):
            return await member.ws.send(error(
                "invalid_passphrase", "3 to 64 of a-z, 0-9 and -"))
        digest = hashlib.sha256(passphrase.encode()).hexdigest()
        channel, key = f"py:chan:{{{digest}}}", f"py:lobby:{{{digest}}}"
        await self.subscribe(channel, member)
        seat, players = await self.join_script(
            keys=[key], args=[member.id, self.capacity])
        if seat == 0:
            await self.unsubscribe(channel, member)
            return await member.ws.send(error("lobby_full", "this lobby is full"))
        member.channel, member.key, member.seat = channel, key, seat
        await member.ws.send(dumps({
            "type": "joined", "players": players,
            "capacity": self.capacity, "seat": seat}))
        if players == self.capacity:
            await self.redis.publish(channel, b"R%d" % players)

    async def leave(self, member):
        if member.channel is None:
            return
        channel = member.channel
        await self.leave_script(keys=[member.key, channel],
                                args=[member.seat, member.id])
        member.channel = member.key = member.seat = None
        await self.unsubscribe(channel, member)

    async def relay(self, member, payload, tag):
        await self.redis.publish(member.channel, tag + member.id_bytes + b"|" + payload)

    async def handle(self, ws):
        member = Member(f"{self.node_id}.{next(self.ids)}", ws)
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    if member.channel is None:
                        await ws.send(error("not_in_lobby", "join a lobby first"))
                    else:
                        await self.relay(member, message, b"B")
                    continue
                try:
                    obj = json.loads(message)
                except ValueError:
                    await ws.send(error("invalid_json", "not JSON"))
                    continue
                kind = obj.get("type") if isinstance(obj, dict) else None
                if kind is None and isinstance(obj, dict) and isinstance(obj.get("join"), str):
                    await self.join(member, obj["join"])
                elif not isinstance(kind, str):
                    await ws.send(error("invalid_message", "an object with a string type"))
                elif kind == "join":
                    passphrase = obj.get("passphrase")
                    if isinstance(passphrase, str):
                        await self.join(member, passphrase)
                    else:
                        await ws.send(error("invalid_message", "join needs a passphrase"))
                elif kind == "leave":
                    await self.leave(member)
                elif kind == "ping":
                    reply = {"type": "pong"}
                    if "t" in obj:
                        reply["t"] = obj["t"]
                    await ws.send(dumps(reply))
                elif kind in CONTROL_TYPES:
                    await ws.send(error("reserved_type", f"{kind} is reserved"))
                elif member.channel is None:
                    await ws.send(error("not_in_lobby", "join a lobby first"))
                else:
                    await self.relay(member, message.encode(), b"T")
        except ConnectionClosed:
            pass
        finally:
            await self.leave(member)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8770")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/")
    parser.add_argument("--node-id", default="py-1")
    parser.add_argument("--capacity", type=int, default=2)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    node = Node(args.redis_url, args.node_id, args.capacity)
    await node.start()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    # backlog: asyncio's default of 100 drops connects in a burst (each
    # retried by the client's kernel only after a second).
    async with serve(node.handle, host, int(port), max_size=16384, backlog=4096):
        print(f"python relay {args.node_id} listening on {args.listen}",
              file=sys.stderr, flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
