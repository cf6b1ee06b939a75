"""What cluster mode keeps in Redis, and the rules that make one owner per room.

Pure: key names, the Lua scripts (run atomically by Redis), the lease arithmetic on the
node's own monotonic clock (time passed in), the secret's fingerprint and the redirect
URL. The I/O around it is ``supervisor.cluster``.

Every key starts with the hash tag ``{ws}``, so on a Redis Cluster they share one slot and
the scripts below may touch keys they only learn while running (a room's owner's lease).

* ``{ws}:epoch`` - the cluster's start (Unix seconds, set once with NX). Resume tokens
  issued before it name sessions of an earlier cluster: it replaces one supervisor's boot
  time, so restarting one node does not invalidate sessions held by the others. Losing
  Redis' data loses it: the next node to start sets a new one (a full restart).
* ``{ws}:secret`` - a fingerprint of the token key (an HMAC of a fixed text, never the
  key). A node whose key differs refuses to start: its tokens would be forged elsewhere.
* ``{ws}:node:NAME`` - the node's lease: its incarnation (random per start) and public
  URL, with a TTL (``LEASE_TTL_S``) renewed every ``LEASE_RENEW_S``. ``{ws}:nodes`` is
  the set of names ever seen (status lists them with their lease's time to live).
* ``{ws}:room:ID`` - a hash: ``owner`` (a node name) and ``fence`` (incremented on every
  change of owner, never reset). ``{ws}:rooms:NAME`` - the rooms a node owns (status).

A node that could not renew its lease for ``LEASE_TTL_S`` by its own clock, measured from
when it *sent* its last successful renewal, must assume another node has claimed its
rooms: it stops serving them (``Lease.fenced``). Redis expires the key no earlier than
that, so there is never a moment when two nodes both believe they own one room.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

PREFIX = "{ws}:"
EPOCH_KEY = PREFIX + "epoch"
SECRET_KEY = PREFIX + "secret"
NODES_KEY = PREFIX + "nodes"
LEASE_PREFIX = PREFIX + "node:"
ROOM_PREFIX = PREFIX + "room:"
ROOMS_OF_PREFIX = PREFIX + "rooms:"
ROOM_STATE_PREFIX = PREFIX + "roomstate:"  # room -> its state, left by a node that left
SESSION_PREFIX = PREFIX + "session:"  # session id -> the node holding it
CHECKPOINTS_PREFIX = PREFIX + "checkpoints:"  # node -> hash: session id -> its checkpoint
INBOX_PREFIX = PREFIX + "inbox:"  # node name -> its requests and replies (a stream)
INBOX_KEPT = 1_000  # entries an inbox keeps (requests are answered within seconds)
SAYS_KEY = PREFIX + "says"  # the broadcast stream: one entry per say, in one total order
SAYS_COUNT_KEY = PREFIX + "says:n"  # entries ever added: numbers them without holes

# Broadcast entries kept by default (--cluster-says-kept; approximately: Redis trims in
# whole nodes). A node cut off for longer than this many says catches up with a gap.
# Memory: up to this many says' bodies (each at most --max-say-bytes, 4 KiB) in Redis.
SAYS_KEPT = 10_000

# Lease: renewed every second, lost after five without a renewal. A node cut off from Redis
# stops serving its rooms within LEASE_TTL_S; a dead node's rooms can be claimed after it.
LEASE_RENEW_S = 1.0
LEASE_TTL_S = 5.0


class ClusterRefused(Exception):
    """This node must not join (another token key, its name in use): exit 2, said why."""


class ClusterUnavailable(Exception):
    """Redis did not answer in time, or this node's lease is lost: retry later."""


def session_key(session: str) -> str:
    return SESSION_PREFIX + session


def checkpoints_key(node: str) -> str:
    return CHECKPOINTS_PREFIX + node


def read_key(node: str) -> str:
    """The last says-stream entry number ``node`` has read (recorded before delivering)."""
    return PREFIX + "read:" + node


def inbox_key(node: str) -> str:
    return INBOX_PREFIX + node


def lease_key(node: str) -> str:
    return LEASE_PREFIX + node


def room_key(room: str) -> str:
    return ROOM_PREFIX + room


def room_state_key(room: str) -> str:
    return ROOM_STATE_PREFIX + room


def rooms_of_key(node: str) -> str:
    return ROOMS_OF_PREFIX + node


# KEYS[1] lease of this node, KEYS[2] the node set, KEYS[3] the epoch, KEYS[4] the node's
# checkpoints; ARGV: name, incarnation, url, ttl ms, the epoch this node joined, grace ms,
# connected players (shown in every node's status).
# The checkpoints outlive the node by the grace window: its players may resume elsewhere
# until then, and nobody has to clean up after a dead node. Renews only this incarnation's
# lease (or takes a free one): a second process started with the same --node name while
# the first lives gets "taken" and must not serve. "epoch": the epoch key is gone or
# another - Redis lost its data (restarted without persistence): every claim and fence
# went with it, so this node must drop its rooms and join again.
RENEW_LEASE = """
local epoch = redis.call('GET', KEYS[3])
if epoch ~= ARGV[5] then
  return {'epoch', epoch or ''}
end
local held = redis.call('HGET', KEYS[1], 'incarnation')
if held and held ~= ARGV[2] then
  return {'taken', held}
end
redis.call('HSET', KEYS[1], 'incarnation', ARGV[2], 'url', ARGV[3], 'players', ARGV[7] or '0')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[4], ARGV[4] + ARGV[6])
redis.call('SADD', KEYS[2], ARGV[1])
return {'ok', ARGV[2]}
"""

# KEYS[1] the node set; ARGV: lease prefix, rooms-of prefix. Every node seen, in one call
# (each node runs it once a second for its status): {name, url, players, lease ms left,
# rooms owned, ...} - a name whose lease is gone has url false and ms <= 0.
NODES_STATUS = """
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local info = redis.call('HMGET', ARGV[1] .. name, 'url', 'players')
  out[#out + 1] = name
  out[#out + 1] = info[1]
  out[#out + 1] = info[2]
  out[#out + 1] = redis.call('PTTL', ARGV[1] .. name)
  out[#out + 1] = redis.call('SCARD', ARGV[2] .. name)
end
return out
"""

# KEYS[1] the node's lease; ARGV: its incarnation. A node leaving gives its name back at
# once (the next start under that name need not wait out the TTL).
LEAVE = """
if redis.call('HGET', KEYS[1], 'incarnation') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] the room, KEYS[2] its handed-over state; ARGV: claiming node, its incarnation,
# lease prefix, rooms-of prefix. Keeps the current owner while its lease lives; otherwise
# the claimer takes the room, the fence goes up, and the state a leaving owner stored
# (RELEASE_ROOM) is the claimer's alone (deleted in the same step). A claimer without a
# live lease of its own gets nothing (it is fenced). Returns {owner, fence, owner's url,
# state or false}.
CLAIM_ROOM = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  local url = redis.call('HGET', ARGV[3] .. owner, 'url')
  if url then
    return {owner, tonumber(redis.call('HGET', KEYS[1], 'fence')), url}
  end
  redis.call('SREM', ARGV[4] .. owner, KEYS[1])
end
if redis.call('HGET', ARGV[3] .. ARGV[1], 'incarnation') ~= ARGV[2] then
  return {false, 0, false}
end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('SADD', ARGV[4] .. ARGV[1], KEYS[1])
local state = redis.call('GET', KEYS[2])
if state then
  redis.call('DEL', KEYS[2])
end
return {ARGV[1], fence, redis.call('HGET', ARGV[3] .. ARGV[1], 'url'), state}
"""

# KEYS[1] the room, KEYS[2] the node's room set, KEYS[3] the room's handed-over state;
# ARGV: node, fence, and optionally the room's state and how long it is kept (ms). A stale
# release (the room was claimed again since: another fence) changes nothing and stores
# nothing - a fenced node's state never reaches the next owner. The fence stays.
RELEASE_ROOM = """
redis.call('SREM', KEYS[2], KEYS[1])
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'fence') == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'owner')
  if ARGV[3] then
    redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
  end
  return 1
end
return 0
"""


# KEYS[1] the stream, KEYS[2] its counter; ARGV: the entry (a Broadcast as JSON), maxlen.
# Every entry carries its number ``n`` (1, 2, ...): a reader that sees n jump by more than
# one knows how many entries were trimmed before it read them.
PUBLISH = """
local n = redis.call('INCR', KEYS[2])
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'n', n, 'b', ARGV[1])
"""


# ARGV: node, session key prefix, the node's checkpoints key, then operations in order:
# "+" SID = this node holds SID now; "-" SID = SID ended or left this node (the holder
# entry is deleted only if it still names this node: the session may be elsewhere by
# now); "c" SID BLOB = SID's latest checkpoint; "v" SID = does this node still hold SID?
# One call per batch. A checkpoint ("c") is the session-state write, fenced by the
# registry: it is refused when the registry names another node - that node took the
# session from this node's last checkpoint while this node was cut off from Redis (or
# fetched it live) - and the SID is returned, as for a "v" that fails: this node's copy
# is stale and must go. A registry that names nobody (Redis lost its data, or this
# node's "+" was lost with the last second of an AOF) is written back to this node.
# Returns {operations done, refused SID...}.
SYNC_SESSIONS = """
local node, prefix, checkpoints = ARGV[1], ARGV[2], ARGV[3]
local i, done = 4, 0
local refused = {}
while i <= #ARGV do
  local op, sid = ARGV[i], ARGV[i + 1]
  if op == '+' then
    redis.call('SET', prefix .. sid, node)
    i = i + 2
  elseif op == '-' then
    if redis.call('GET', prefix .. sid) == node then
      redis.call('DEL', prefix .. sid)
    end
    redis.call('HDEL', checkpoints, sid)
    i = i + 2
  else
    local held = redis.call('GET', prefix .. sid)
    if held and held ~= node then
      refused[#refused + 1] = sid
      redis.call('HDEL', checkpoints, sid)
    else
      if not held then
        redis.call('SET', prefix .. sid, node)
      end
      if op == 'c' then
        redis.call('HSET', checkpoints, sid, ARGV[i + 2])
      end
    end
    i = i + (op == 'c' and 3 or 2)
  end
  done = done + 1
end
return {done, unpack(refused)}
"""

# KEYS[1] the session's key; ARGV: session id, lease prefix, checkpoints prefix, read
# prefix, the taking node. Where a resume finds the session: {"live", node, ""} while its
# holder's lease lives; else the holder died (or is cut off) and its last checkpoint is
# taken - deleted, and the registry names the taker at once, so two racing resumes cannot
# both get it and the old holder's later writes are refused (SYNC_SESSIONS) -
# {"checkpoint", blob, the says entry it had read up to}; else {"none", "", ""}.
TAKE_SESSION = """
local node = redis.call('GET', KEYS[1])
if not node then
  return {'none', '', ''}
end
if redis.call('EXISTS', ARGV[2] .. node) == 1 then
  return {'live', node, ''}
end
local blob = redis.call('HGET', ARGV[3] .. node, ARGV[1])
if not blob then
  return {'none', '', ''}
end
redis.call('HDEL', ARGV[3] .. node, ARGV[1])
redis.call('SET', KEYS[1], ARGV[5])
return {'checkpoint', blob, redis.call('GET', ARGV[4] .. node) or ''}
"""


def fetch_wait(fetch_timeout: float) -> float:
    """How long a resume may wait for a session held by another node: the holder's answer
    (``--fetch-timeout``), or, if it died, until its lease has run out."""
    return fetch_timeout + LEASE_TTL_S


def secret_fingerprint(key: bytes) -> str:
    """What every node compares to know it signs tokens with the cluster's key; it
    reveals nothing of the key (HMAC-SHA256 of a fixed text, hex)."""
    return hmac.new(key, b"ws cluster token key fingerprint v1", hashlib.sha256).hexdigest()


@dataclass
class Lease:
    """This node's lease as its own monotonic clock sees it.

    ``renewed(sent_at)`` after each successful renewal, with the time the renewal was
    *sent* (Redis may have applied it any time after that, so the lease is counted from
    the earliest moment). ``fenced(now)``: no renewal for ``ttl`` - another node may own
    this node's rooms now."""

    ttl: float = LEASE_TTL_S
    valid_until: float = float("-inf")

    def renewed(self, sent_at: float) -> None:
        self.valid_until = max(self.valid_until, sent_at + self.ttl)

    def fenced(self, now: float) -> bool:
        return now >= self.valid_until

    def remaining(self, now: float) -> float:
        return max(0.0, self.valid_until - now)


def check_public_url(url: str) -> str:
    """``--public-url``: ``ws://HOST:PORT`` or ``wss://HOST[:PORT]`` with no path, query or
    fragment (the redirect appends the client's own path and query). Returns it without a
    trailing slash; raises ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{url!r} is not ws://HOST:PORT or wss://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r} must have no path, query or fragment")
    return url.rstrip("/")


def redacted(redis_url: str) -> str:
    """``redis_url`` without its user and password, for logs and status."""
    parts = urlsplit(redis_url)
    if parts.password is None and parts.username is None:
        return redis_url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def redirect_url(public_url: str, target: str) -> str:
    """Where a client that asked for ``target`` (the request target: path and query, as
    it sent them) finds the node at ``public_url``."""
    return public_url + (target if target.startswith("/") else "/" + target)
