"""Events in Redis Streams: the key layout, the entry format, and the two relays.

Layout (one place; the device-state script uses it too). ``<p>`` is the Redis prefix and
``n`` the partition, ``crc32(device id, else user id) % stream_partitions``:

- ``<p>:{ev:<n>}:events`` — the public stream consumers read (XREADGROUP / XACK), trimmed to
  about ``stream_maxlen`` entries (``XADD MAXLEN ~``);
- ``<p>:{ev:<n>}:inbox`` — events born in Redis (visit events, XADDed by the device-state
  script in the step that produces them) waiting to enter the event log; drained by
  :meth:`EventStreams.import_inbox` (which also XADDs them to the partition's public stream
  and makes their webhook deliveries) and never trimmed, so nothing is lost while the
  database is away.

Each partition's keys share the hash tag ``{ev:<n>}``: different partitions land on
different Redis Cluster slots, and one partition's two streams can be written by one script.

Entry fields: ``id`` (the event id: the same in every copy of one event), ``type``,
``envelope`` (the JSON ``{id, type, occurred_at, data}`` webhooks send as their body) and
``tags`` (JSON list of the store's tags).

The relay and the import are at-least-once: an entry may appear twice, never under two ids.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError
from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.exc import DataError, IntegrityError

from service.events import log as event_log
from service.events import metrics
from service.events.types import Event, EventType
from service.redis_client import Client, redis_client
from service.webhooks import repository as webhooks_repo

logger = logging.getLogger("geo_offers.events")

T = TypeVar("T")
#: Runs a blocking function off the event loop (``anyio.to_thread.run_sync`` with a limiter).
Blocking = Callable[..., Awaitable[Any]]
#: Told the deliveries an import made, per endpoint id.
Wake = Callable[[Mapping[str, int]], None]

INBOX_GROUP = "geo-offers-log"


@dataclass(frozen=True, slots=True)
class StreamLayout:
    """Stream key names.

    >>> layout = StreamLayout("geo", 16)
    >>> layout.events_key(3), layout.inbox_key(3)
    ('geo:{ev:3}:events', 'geo:{ev:3}:inbox')
    >>> layout.partition("device-1") == layout.partition("device-1") < 16
    True
    """

    prefix: str
    partitions: int

    def partition(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.partitions

    def tag(self, n: int) -> str:
        return f"{{ev:{n}}}"

    def events_key(self, n: int) -> str:
        return f"{self.prefix}:{self.tag(n)}:events"

    def inbox_key(self, n: int) -> str:
        return f"{self.prefix}:{self.tag(n)}:inbox"

    def inbox_partition(self, inbox_key: str) -> int:
        """The partition of an inbox key.

        >>> StreamLayout("geo", 16).inbox_partition("geo:{ev:3}:inbox")
        3
        """
        return int(inbox_key.rsplit("{ev:", 1)[1].split("}", 1)[0])

    def events_keys(self) -> list[str]:
        return [self.events_key(n) for n in range(self.partitions)]

    def event_partition(self, event: Event) -> int:
        return self.partition(event.partition_key)


_TYPES = {t.value: t for t in EventType}


def _field(fields: Mapping[Any, Any], name: str) -> Any:
    """A field of an entry as redis-py returns it (bytes keys) or as written (str keys)."""
    value = fields.get(name.encode())
    return value if value is not None else fields.get(name)


def entry_fields(event: Event) -> dict[str, bytes]:
    """The stream entry of ``event``."""
    return {
        "id": event.id.encode(),
        "type": event.type.value.encode(),
        "envelope": orjson.dumps(event.envelope()),
        "tags": orjson.dumps(list(event.store_tags)),
    }


def entry_event(fields: Mapping[Any, Any]) -> Event:
    """An :class:`Event` from a stream entry's fields; ``ValueError`` if it is not one."""
    try:
        env = orjson.loads(_field(fields, "envelope"))
        tags = orjson.loads(_field(fields, "tags") or b"[]")
        event = Event(
            id=str(env["id"]),
            type=_TYPES[env["type"]],
            occurred_at=datetime.fromisoformat(str(env["occurred_at"])),
            data=dict(env["data"]),
            store_tags=tuple(map(str, tags)),
        )
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not an event entry: {exc}") from exc
    if not event.id.startswith("evt_") or event.occurred_at.tzinfo is None:
        raise ValueError(f"not an event entry: id {event.id!r}")
    return event


#: For the device-state script: XADD the events packed by :func:`inbox_args` into the inbox
#: stream ``key``, reading ARGV from position ``first``; returns the position after them.
#: Paste it into a script and call ``add_events(KEYS[i], first)`` once its step is stored;
#: ``add_events(key, first, t)`` also appends the new entries' ids to the table ``t``.
INBOX_XADD_LUA = """
local function add_events(key, first, ids)
  local n = tonumber(ARGV[first])
  for i = 0, n - 1 do
    local a = first + 1 + i * 4
    local id = redis.call('XADD', key, '*', 'id', ARGV[a], 'type', ARGV[a + 1],
      'envelope', ARGV[a + 2], 'tags', ARGV[a + 3])
    if ids then ids[#ids + 1] = id end
  end
  return first + 1 + n * 4
end
"""


#: XADD entries to the public stream KEYS[1], trimmed to about ARGV[1] entries; then the
#: id, type, envelope and tags of each entry (many entries in one command).
STREAM_XADD_LUA = """
for i = 2, #ARGV, 4 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'id', ARGV[i], 'type', ARGV[i + 1],
    'envelope', ARGV[i + 2], 'tags', ARGV[i + 3])
end
return (#ARGV - 1) / 4
"""


def inbox_args(events: Sequence[Event]) -> list[bytes]:
    """ARGV for :data:`INBOX_XADD_LUA`: the count, then id, type, envelope, tags of each."""
    out = [str(len(events)).encode()]
    for e in events:
        f = entry_fields(e)
        out += [f["id"], f["type"], f["envelope"], f["tags"]]
    return out


def _entries(reply: Any) -> list[tuple[bytes, Mapping[Any, Any] | None]]:
    """The entries of an XREADGROUP reply for one stream (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(e[0], e[1]) for batch in reply.values() for e in batch[0]]
    return [(e[0], e[1]) for _, batch in reply for e in batch]


class EventStreams:
    """The relays between the event log and Redis Streams, run by every replica."""

    def __init__(
        self,
        client: Client,
        layout: StreamLayout,
        maxlen: int,
        consumer: str,
        *,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.client = client
        self.layout = layout
        self.maxlen = maxlen
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self._unacked: set[str] = set()  # inboxes whose last import did not finish
        self._cluster = isinstance(client, RedisCluster)

    def _pipeline(self) -> Any:
        if self._cluster:
            return self.client.pipeline()
        return self.client.pipeline(transaction=False)

    # -- the event log → the public streams --------------------------------------------

    async def relay(self, engine: Engine, blocking: Blocking, limit: int = 500) -> int:
        """XADD up to ``limit`` events not streamed yet, then mark them streamed. On
        PostgreSQL one replica relays at a time (a transaction-scoped advisory lock held
        while Redis is written; no row locks, so the webhook fan-out never waits for Redis);
        a crash between the XADD and the commit relays the events again, same ids."""
        # Shielded: a cancellation (shutdown) must not close the connection under a
        # statement still running in its thread; the work is bounded by its timeouts.
        with anyio.CancelScope(shield=True):
            moved = await self._relay(engine, blocking, limit)
        return moved

    async def _relay(self, engine: Engine, blocking: Blocking, limit: int) -> int:
        conn: Connection = await blocking(engine.connect)
        try:
            rows = await blocking(_unstreamed, conn, limit)
            if not rows:
                await blocking(conn.rollback)
                return 0
            if conn.dialect.name != "postgresql":
                # SQLite: no transaction (its write lock) is held while Redis is written.
                await blocking(conn.rollback)
            pipe = self._pipeline()
            for row in rows:
                event = event_log.row_event(row)
                key = self.layout.events_key(self.layout.partition(row.partition_key))
                pipe.xadd(key, entry_fields(event), maxlen=self.maxlen, approximate=True)
            await pipe.execute()
            await blocking(_mark_streamed, conn, [r.seq for r in rows])
            metrics.EVENTS_STREAMED.inc(len(rows))
            return len(rows)
        finally:
            with contextlib.suppress(Exception):
                await blocking(conn.close)

    # -- the inbox streams → the event log ---------------------------------------------

    async def import_inbox(
        self,
        engine: Engine,
        blocking: Blocking,
        limit: int = 500,
        reclaim: bool = False,
        wake: Wake | None = None,
    ) -> int:
        """Move the inbox streams' entries into the event log, fanned out and streamed:
        read them (one pipelined round trip over the partitions), then :meth:`_import`
        them, then XACK and XDEL. ``wake`` is told the endpoints that got deliveries. An
        inbox whose import failed is read again from this consumer's unacknowledged entries;
        with ``reclaim``, entries another consumer (a process that died) left unacknowledged
        for ``claim_idle_ms`` are taken over. A crash after the commit, before the XACK,
        imports entries again; their ids make that a no-op."""
        keys = [self.layout.inbox_key(n) for n in range(self.layout.partitions)]
        moved, no_group = await self._import_pass(engine, blocking, keys, limit, reclaim, wake)
        created = await self._create_groups(no_group) if no_group else []
        if created:  # inboxes the script has just created: read them now, not next poll
            more, _ = await self._import_pass(engine, blocking, created, limit, False, wake)
            moved += more
        return moved

    async def _import_pass(
        self,
        engine: Engine,
        blocking: Blocking,
        keys: list[str],
        limit: int,
        reclaim: bool,
        wake: Wake | None,
    ) -> tuple[int, list[str]]:
        pipe = self._pipeline()
        for key in keys:
            start = "0" if key in self._unacked else ">"
            pipe.xreadgroup(INBOX_GROUP, self.consumer, {key: start}, count=limit)
        replies = await pipe.execute(raise_on_error=False)
        batches: dict[str, list[Any]] = {}
        no_group = []
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
                no_group.append(key)
                continue
            if isinstance(reply, BaseException):
                raise reply
            entries = _entries(reply)
            if not entries and reclaim:
                claimed = await self.client.xautoclaim(
                    key, INBOX_GROUP, self.consumer, self.claim_idle_ms, "0-0", count=limit
                )
                entries = list(claimed[1])
            if entries:
                batches[key] = entries
                self._unacked.add(key)
            elif key in self._unacked:
                self._unacked.discard(key)  # nothing left of ours: back to new entries
        if not batches:
            return 0, no_group
        try:
            moved = await self._import(engine, blocking, batches, wake)
        except (DataError, IntegrityError):
            if len(batches) == 1:
                raise
            # An entry the log refuses must not hold up the other partitions' entries.
            moved = await self._import_each(engine, blocking, batches, wake)
        self._unacked.difference_update(batches)
        return moved, no_group

    async def _import_each(
        self, engine: Engine, blocking: Blocking, batches: dict[str, list[Any]], wake: Wake | None
    ) -> int:
        moved = 0
        failed: list[Exception] = []
        for key, entries in batches.items():
            try:
                moved += await self._import(engine, blocking, {key: entries}, wake)
            except (DataError, IntegrityError) as exc:
                failed.append(exc)
            else:
                self._unacked.discard(key)
        if failed:
            raise failed[0]
        return moved

    async def _create_groups(self, keys: list[str]) -> list[str]:
        """Groups start at the stream's first entry, so nothing XADDed before is missed. An
        inbox that does not exist yet has nothing to read (it appears with its first entry).
        Returns the keys that have a group now."""
        pipe = self._pipeline()
        for key in keys:
            pipe.xgroup_create(key, INBOX_GROUP, id="0")
        ready = []
        for key, reply in zip(keys, await pipe.execute(raise_on_error=False), strict=True):
            if not isinstance(reply, BaseException) or "BUSYGROUP" in str(reply):
                ready.append(key)
            elif "requires the key to exist" not in str(reply):
                raise reply
        return ready

    async def _import(
        self, engine: Engine, blocking: Blocking, batches: dict[str, list[Any]], wake: Wake | None
    ) -> int:
        """Record the inbox entries' events already fanned out and streamed, in one
        transaction: checked (``record_arrived``), inserted, their webhook deliveries made,
        and committed only once the new ones are in their partition's public stream (the
        entry passed on as it is unless redacted); then XACK and XDEL. A crash before the
        commit imports them again, XADDed again under the same ids."""
        arrived: Arrived = await blocking(_parse, self.layout, batches)  # off the event loop
        new: list[Event] = []
        made: dict[str, int] = {}
        if arrived:
            conn: Connection = await blocking(engine.connect)
            try:
                events = [a[0] for a in arrived.values()]
                new, made = await blocking(_record_new, conn, events)
                if new:
                    await self._stream(new, arrived)
                await blocking(conn.commit)
            finally:
                with contextlib.suppress(Exception):
                    await blocking(conn.close)
        await self._acknowledge(batches)
        metrics.EVENTS_IMPORTED.inc(len(arrived))
        metrics.EVENTS_STREAMED.inc(len(new))
        for type_, count in Counter(e.type.value for e in new).items():
            metrics.EVENTS_RECORDED.labels(type_).inc(count)
        if made and wake is not None:
            wake(made)
        return len(arrived)

    async def _stream(self, events: list[Event], arrived: Arrived) -> None:
        """XADD ``events`` to their inbox's partition: one script call per partition."""
        args: dict[int, list[Any]] = {}
        for event in events:
            parsed, fields, n = arrived[event.id]
            if event is not parsed:  # redacted
                fields = entry_fields(event)
            envelope, tags = _field(fields, "envelope"), _field(fields, "tags") or b"[]"
            args.setdefault(n, [self.maxlen]).extend([event.id, event.type.value, envelope, tags])
        pipe = self._pipeline()
        for n, values in args.items():
            pipe.eval(STREAM_XADD_LUA, 1, self.layout.events_key(n), *values)
        await pipe.execute()

    async def _acknowledge(self, batches: dict[str, list[Any]]) -> None:
        pipe = self._pipeline()
        for key, entries in batches.items():
            ids = [entry_id for entry_id, _ in entries]
            pipe.xack(key, INBOX_GROUP, *ids)
            pipe.xdel(key, *ids)
        await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()


#: Any constant: the same in every replica (see service.db.migrate for the other one).
_RELAY_LOCK_KEY = 7_461_032_520


def _unstreamed(conn: Connection, limit: int) -> Sequence[Any]:
    t = event_log.EVENTS
    conn.begin()
    if conn.dialect.name == "postgresql":
        mine = conn.execute(select(func.pg_try_advisory_xact_lock(_RELAY_LOCK_KEY))).scalar_one()
        if not mine:
            return []  # another replica is relaying right now
    return conn.execute(select(t).where(~t.c.streamed).order_by(t.c.seq).limit(limit)).all()


def _mark_streamed(conn: Connection, seqs: Iterable[int]) -> None:
    t = event_log.EVENTS
    if not conn.in_transaction():
        conn.begin()
    conn.execute(update(t).where(t.c.seq.in_(list(seqs))).values(streamed=True))
    conn.commit()


#: The events read from the inboxes by id: the event, the entry's fields, its partition.
Arrived = dict[str, tuple[Event, Mapping[Any, Any], int]]


def _parse(layout: StreamLayout, batches: dict[str, list[Any]]) -> Arrived:
    arrived: Arrived = {}
    for key, entries in batches.items():
        n = layout.inbox_partition(key)
        for entry_id, fields in entries:
            if not fields:  # deleted after it was read: already imported
                continue
            try:
                event = entry_event(fields)
            except ValueError as exc:
                metrics.EVENTS_DROPPED.inc()
                logger.error("inbox entry %s of %s dropped: %s", entry_id, key, exc)
                continue
            arrived.setdefault(event.id, (event, fields, n))
    return arrived


def _record_new(conn: Connection, events: Sequence[Event]) -> tuple[list[Event], dict[str, int]]:
    """In a transaction left open: the events admitted (see ``record_arrived``) and not in
    the log before, inserted already streamed and fanned out, and their deliveries made.
    Returns those events and the deliveries made per endpoint."""
    conn.begin()
    kept = event_log.admit_arrived(conn, events)
    seqs = event_log.record_new(conn, kept, streamed=True, fanned_out=True)
    new = [e for e in kept if e.id in seqs]
    made = webhooks_repo.fan_out_recorded(conn, [(seqs[e.id], e) for e in new], datetime.now(UTC))
    return new, made


#: The relays' Redis connections are named so (``CLIENT LIST``): an operator, or the
#: benchmark's command counts, can tell their polling from the pings' commands.
CLIENT_NAME = "geo-offers-relay"


def client_from_url(url: str, cluster: bool) -> Client:
    return redis_client(url, cluster=cluster, timeout_s=5.0, name=CLIENT_NAME)
