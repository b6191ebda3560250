"""One Pub/Sub connection per process, owned by one thread; waiters talk to it through a queue.

A connection per waiter would hold one pooled Redis connection for each caller waiting on a lock:
a stampede of a few hundred callers would exhaust the pool exactly when the cache matters most.
So one connection serves every waiter of the process. redis-py's ``PubSub`` must not be shared
between threads, so exactly one thread (a greenlet under gevent), the owner, touches it: callers
put ``subscribe``/``unsubscribe`` commands on a queue, and the owner applies them between reads,
reads the messages and hands each to the queues of the waiters on its channel.

When the connection is lost (Redis restarted, ``CLIENT KILL TYPE pubsub``, a network blip), the
owner reconnects at once and resubscribes every channel that still has waiters or handlers; once
Redis confirms, each waiter on those channels gets ``RESUBSCRIBED``: a message may have been
published while nobody listened, so the waiter re-checks the entry and the lock instead of
calling the upstream. Only when Redis cannot be reached again does the owner hand its waiters
``BROKEN`` (they fail open), then keeps retrying with a back-off while anyone still listens.

Permanent channels (``listen(channel, handler)``) carry process-wide signals, e.g. "policies
changed: drop your local copies"; their handlers also run after every reconnection, since a
signal may have been missed while the connection was down.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

logger = logging.getLogger(__name__)

#: Handed to waiters: the connection was lost and is back; what was published meanwhile is lost.
RESUBSCRIBED = b"\x00resubscribed"
#: Handed to waiters: the connection was lost and Redis cannot be reached again.
BROKEN = b"\x00broken"

_ERRORS = (RedisError, RedisClusterException, OSError, ValueError, AttributeError)


class Waiter:
    """One caller's place on one channel: its messages, each with when it was handed over."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.ready = threading.Event()
        self.blocked = False  # blocked in a wait (for introspection and tests)
        self.messages: queue.Queue[tuple[bytes, float]] = queue.Queue()

    def deliver(self, data: bytes) -> None:
        self.ready.set()
        self.messages.put((data, time.time()))


def pubsub_sockets(pubsub: Any) -> list[Any] | None:
    """What to wait on for a redis-py ``PubSub``'s next message: its socket; nothing while it is
    not subscribed (redis-py reads nothing then); None when a reply may be buffered already (a
    health check's) or its socket is not known, i.e. read it now."""
    if not getattr(pubsub, "subscribed", False):
        return [] if hasattr(pubsub, "subscribed") else None
    connection: Any = getattr(pubsub, "connection", None)
    sock = getattr(connection, "_sock", None)
    if sock is None or connection.can_read(timeout=0):
        return None
    return [sock]


def _wake_pipe() -> tuple[int, int]:
    """A non-blocking pipe: (read end, write end)."""
    reader, writer = os.pipe()
    os.set_blocking(reader, False)
    os.set_blocking(writer, False)
    return reader, writer


class Hub:
    """The process's Pub/Sub owner. ``connect`` returns a new redis-py ``PubSub``; ``owner_id``
    names the connection's identity (a fork or a settings change means a new hub).

    The owner sleeps in ``select`` on the connection's sockets (one, or every node's that a
    ``ClusterChannels`` holds: its ``wait_sockets``) and on a wake-up pipe that callers poke when
    they queue a command (or stop the hub): a message or a command is handled at once, and an
    idle process does not spin (polling every 10 ms cost a worker ~3% of a core doing nothing).
    It wakes at least every ``idle_seconds`` (redis-py's health check runs then). A connection
    whose sockets it cannot see is polled every ``poll_seconds`` instead."""

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        poll_seconds: float = 0.01,
        idle_seconds: float = 1.0,
        retry_seconds: float = 0.5,
        max_retry_seconds: float = 5.0,
    ) -> None:
        self._connect = connect
        self.poll_seconds = poll_seconds
        self.idle_seconds = idle_seconds
        #: The owner's wake-up pipe (read end, write end), made when the owner starts and closed
        #: when it stops, both under ``_lock`` (so a poke never writes to a closed descriptor).
        self._wake: tuple[int, int] | None = None
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self._lock = threading.Lock()
        self._commands: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._waiters: dict[str, list[Waiter]] = {}
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self._confirmed: set[str] = set()
        self._resubscribing: set[str] = set()  # channels to tell RESUBSCRIBED once confirmed
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Set while the last connection attempt failed: a new waiter fails at once.
        self.down = False
        self.connected = threading.Event()
        self.reconnections = 0  # for tests and the log
        self.sleeps = 0  # times the owner went to sleep with nothing to do (for tests)

    # --- what callers use (any thread) ---

    def register(self, channel: str) -> Waiter:
        waiter = Waiter(channel)
        with self._lock:
            self._start()
            waiting = self._waiters.setdefault(channel, [])
            waiting.append(waiter)
            if channel in self._confirmed:
                waiter.ready.set()
            elif len(waiting) == 1 and channel not in self._handlers:
                self._commands.put(("subscribe", channel))
                self._poke()
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        with self._lock:
            waiting = self._waiters.get(waiter.channel)
            if not waiting or waiter not in waiting:
                return
            waiting.remove(waiter)
            if waiting:
                return
            del self._waiters[waiter.channel]
            if waiter.channel not in self._handlers:
                self._confirmed.discard(waiter.channel)
                self._commands.put(("unsubscribe", waiter.channel))
                self._poke()

    def listen(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Keep ``channel`` subscribed for the life of the process; ``handler(data)`` runs in the
        owner for each message, and with ``RESUBSCRIBED`` after each reconnection."""
        with self._lock:
            self._start()
            if channel in self._handlers:
                self._handlers[channel] = handler
                return
            self._handlers[channel] = handler
            # Its first confirmation runs the handler too: a signal sent before it was heard.
            self._resubscribing.add(channel)
            if channel not in self._waiters:
                self._commands.put(("subscribe", channel))
                self._poke()

    def confirmed(self, channel: str) -> bool:
        """Whether Redis has confirmed this connection's subscription to ``channel``."""
        with self._lock:
            return channel in self._confirmed

    def waiting(self, channel: str) -> int:
        with self._lock:
            return sum(1 for w in self._waiters.get(channel, ()) if w.ready.is_set())

    def parked(self, channel: str) -> int:
        with self._lock:
            return sum(1 for w in self._waiters.get(channel, ()) if w.blocked)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the owner and close its connection (waiting up to ``timeout`` for it)."""
        self._stop.set()
        with self._lock:
            self._poke()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # --- the owner thread ---

    def _start(self) -> None:
        """Start the owner if it is not running (under the lock)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._wake = _wake_pipe()
            self._thread = threading.Thread(target=self._run, args=(self._wake,), daemon=True, name="respcache-pubsub")
            self._thread.start()

    def _poke(self) -> None:
        """Wake the owner (under the lock): a command is queued, or it should stop."""
        if self._wake is None:
            return
        try:
            os.write(self._wake[1], b"!")
        except OSError:  # full: the owner has a wake-up pending already
            pass

    def _wanted(self) -> set[str]:
        with self._lock:
            return set(self._waiters) | set(self._handlers)

    def _run(self, wake: tuple[int, int]) -> None:
        try:
            self._serve(wake[0])
        finally:
            with self._lock:
                if self._wake is wake:
                    self._wake = None
                for end in wake:
                    os.close(end)

    def _serve(self, wake: int) -> None:
        pubsub: Any = None
        retry = self.retry_seconds
        ever_connected = False
        while not self._stop.is_set():
            if pubsub is None:
                pubsub = self._open(resubscribed=ever_connected)
                if pubsub is None:
                    self._break_waiters()
                    self._stop.wait(retry)
                    retry = min(retry * 2, self.max_retry_seconds)
                    continue
                ever_connected, retry = True, self.retry_seconds
            try:
                self._apply_commands(pubsub)
                message = pubsub.get_message(timeout=0)
                if message:
                    self._dispatch(message)
                else:
                    self._sleep(pubsub, wake)
            except _ERRORS as exc:
                logger.warning("respcache: Pub/Sub connection lost (%s); reconnecting", exc)
                self._close(pubsub)
                pubsub = None
                self.connected.clear()
                with self._lock:
                    self._resubscribing |= self._confirmed
                    self._confirmed.clear()
        self._close(pubsub)

    def _sleep(self, pubsub: Any, wake: int) -> None:
        """Nothing to read: wait for the connection's sockets, a poke, or ``idle_seconds``."""
        own = getattr(pubsub, "wait_sockets", None)  # a connection of several (ClusterChannels)
        sockets = own() if callable(own) else pubsub_sockets(pubsub)
        if sockets is None:  # a reply may be buffered, or the sockets are not known: poll
            message = pubsub.get_message(timeout=self.poll_seconds)
            if message:
                self._dispatch(message)
            return
        self.sleeps += 1
        readable, _, _ = select.select([wake, *sockets], [], [], self.idle_seconds)
        if wake in readable:
            try:
                os.read(wake, 4096)
            except OSError:  # drained meanwhile
                pass

    def _break_waiters(self) -> None:
        """Redis cannot be reached: every waiter stops waiting (they fail open)."""
        self.down = True
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
        for waiter in waiters:
            waiter.deliver(BROKEN)

    def _open(self, *, resubscribed: bool) -> Any:
        """A new connection subscribed to every wanted channel, or None if Redis is not there."""
        try:
            pubsub = self._connect()
            wanted = self._wanted()
            if wanted:
                pubsub.subscribe(*sorted(wanted))
            else:
                pubsub.ping()  # connect now, so a failure shows here
        except _ERRORS as exc:
            logger.warning("respcache: Pub/Sub connection failed (%s)", exc)
            return None
        self.down = False
        if resubscribed:
            self.reconnections += 1
            with self._lock:
                self._resubscribing |= wanted
        self.connected.set()
        return pubsub

    def _apply_commands(self, pubsub: Any) -> None:
        while True:
            try:
                command, channel = self._commands.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                wanted = channel in self._waiters or channel in self._handlers
            if command == "subscribe" and wanted:
                pubsub.subscribe(channel)
            elif command == "unsubscribe" and not wanted:
                pubsub.unsubscribe(channel)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        with self._lock:
            waiters = list(self._waiters.get(channel, ()))
            handler = self._handlers.get(channel)
            resubscribed = False
            if kind == "subscribe":
                if waiters or handler is not None:
                    self._confirmed.add(channel)
                resubscribed = channel in self._resubscribing
                self._resubscribing.discard(channel)
        if kind == "subscribe":
            for waiter in waiters:
                if resubscribed:
                    waiter.deliver(RESUBSCRIBED)
                waiter.ready.set()
            if resubscribed and handler is not None:
                self._call(handler, RESUBSCRIBED)
        elif kind == "message":
            data = message["data"]
            data = data if isinstance(data, bytes) else str(data).encode()
            for waiter in waiters:
                waiter.deliver(data)
            if handler is not None:
                self._call(handler, data)

    @staticmethod
    def _call(handler: Callable[[bytes], None], data: bytes) -> None:
        try:
            handler(data)
        except Exception:  # a handler's bug must not stop the owner
            logger.exception("respcache: Pub/Sub handler failed")

    @staticmethod
    def _close(pubsub: Any) -> None:
        if pubsub is None:
            return
        try:
            pubsub.close()
        except _ERRORS:
            pass


class ClusterChannels:
    """The Hub's connection on a Redis Cluster, with the little of redis-py's ``PubSub`` the Hub
    uses (subscribe, unsubscribe, get_message, ping, close).

    A channel for which ``sharded(channel)`` is true (an entry's wake-up channel, in its entry's
    slot) is SSUBSCRIBEd on the primary that owns its slot, where the write script's SPUBLISH
    lands; one connection per such primary, opened when first needed. Any other channel (the
    policies channel) is SUBSCRIBEd on one node: a cluster broadcasts PUBLISH to every node.
    With ``sharded_pubsub`` false (servers before Redis 7), every channel is plain: the scripts
    PUBLISH, which reaches every node.

    Messages come back as the Hub knows them (``ssubscribe``/``smessage`` read as
    ``subscribe``/``message``). Any error (a node gone, a MOVED after a failover) refreshes the
    client's slot map and is raised: the Hub then closes this object and opens a new one, which
    subscribes every channel again on the nodes that own them now.
    """

    def __init__(self, cluster: Any, *, sharded: Callable[[str], bool], sharded_pubsub: bool = True) -> None:
        self.cluster = cluster
        self._sharded = sharded
        self.sharded_pubsub = sharded_pubsub
        self._plain: Any = None
        self._shards: dict[str, Any] = {}  # node name -> a PubSub holding SSUBSCRIBEs
        self._where: dict[str, str] = {}  # sharded channel -> node name
        self._turn = 0

    # --- routing ---

    def _is_sharded(self, channel: str) -> bool:
        return self.sharded_pubsub and self._sharded(channel)

    def _plain_pubsub(self) -> Any:
        if self._plain is None:
            self._plain = self.cluster.get_redis_connection(self.cluster.get_random_node()).pubsub()
        return self._plain

    def _shard_pubsub(self, channel: str) -> Any:
        node = self.cluster.get_node_from_key(channel)
        pubsub = self._shards.get(node.name)
        if pubsub is None:
            pubsub = self._shards[node.name] = self.cluster.get_redis_connection(node).pubsub()
        self._where[channel] = node.name
        return pubsub

    def _refresh(self) -> None:
        """After an error: ask the cluster again which node owns which slot."""
        try:
            self.cluster.nodes_manager.initialize()
        except Exception as exc:  # noqa: BLE001 - every node down: the next open retries
            logger.debug("respcache: cluster slot map not refreshed (%s)", exc)

    # --- what the Hub calls ---

    def subscribe(self, *channels: str) -> None:
        try:
            plain = [c for c in channels if not self._is_sharded(c)]
            if plain:
                self._plain_pubsub().subscribe(*plain)
            for channel in channels:
                if self._is_sharded(channel):
                    # One SSUBSCRIBE per channel: several in one must share a slot.
                    self._shard_pubsub(channel).ssubscribe(channel)
        except _ERRORS:
            self._refresh()
            raise

    def unsubscribe(self, channel: str) -> None:
        try:
            name = self._where.pop(channel, None)
            if name is not None:
                self._shards[name].sunsubscribe(channel)
            elif self._plain is not None:
                self._plain.unsubscribe(channel)
        except _ERRORS:
            self._refresh()
            raise

    def ping(self) -> Any:
        try:
            return self._plain_pubsub().ping()
        except _ERRORS:
            self._refresh()
            raise

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        try:
            message = self._next(timeout)
        except _ERRORS:
            self._refresh()
            raise
        if message is not None:
            kind = message.get("type")
            if kind in _SHARDED_TYPES:
                message = {**message, "type": _SHARDED_TYPES[kind]}
        return message

    def _next(self, timeout: float) -> dict[str, Any] | None:
        sources = ([self._plain] if self._plain is not None else []) + list(self._shards.values())
        if not sources:
            time.sleep(timeout)
            return None
        for attempt in range(2):
            # What is buffered first (each PubSub's parser), taking turns so no node starves.
            self._turn += 1
            for i in range(len(sources)):
                message = sources[(self._turn + i) % len(sources)].get_message(timeout=0)
                if message is not None:
                    return message  # type: ignore[no-any-return]
            if attempt == 1 or timeout <= 0:
                return None
            sockets = [
                sock
                for pubsub in sources
                if pubsub.subscribed and pubsub.connection is not None
                for sock in [getattr(pubsub.connection, "_sock", None)]
                if sock is not None
            ]
            if sockets:
                select.select(sockets, [], [], timeout)
            else:
                time.sleep(timeout)
        return None

    def wait_sockets(self) -> list[Any] | None:
        """The sockets the Hub waits on for the next message (every node's connection), or None
        when one may have a reply buffered already (see ``pubsub_sockets``)."""
        try:
            found: list[Any] = []
            for pubsub in ([self._plain] if self._plain is not None else []) + list(self._shards.values()):
                sockets = pubsub_sockets(pubsub)
                if sockets is None:
                    return None
                found += sockets
            return found
        except _ERRORS:
            self._refresh()
            raise

    def close(self) -> None:
        for pubsub in [self._plain, *self._shards.values()]:
            if pubsub is None:
                continue
            try:
                pubsub.close()
            except _ERRORS:
                pass
        self._plain = None
        self._shards.clear()
        self._where.clear()


_SHARDED_TYPES = {"ssubscribe": "subscribe", "smessage": "message", "sunsubscribe": "unsubscribe"}


class Hubs:
    """The hub of this process and Redis location: a new one after a fork or a settings change."""

    def __init__(self, connect: Callable[[], Any], identity: Callable[[], str]) -> None:
        self._connect = connect
        self._identity = identity
        self._lock = threading.Lock()
        self._hub: Hub | None = None
        self._owner: tuple[int, str] | None = None

    def get(self) -> Hub:
        owner = (os.getpid(), self._identity())
        hub = self._hub
        if hub is not None and self._owner == owner:
            return hub
        with self._lock:
            if self._hub is not None and self._owner == owner:
                return self._hub
            if self._hub is not None:
                self._hub.stop()
            self._hub = Hub(self._connect)
            self._owner = owner
            return self._hub
