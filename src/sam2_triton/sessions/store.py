"""Bounded per-instance session state: a capacity, an idle timeout, least-recently-used eviction.

One :class:`SessionStore` lives in each model instance of a stateful model (``sam2_session``,
``sam2_video``). Triton's sequence batcher sends every request of a sequence to the instance
that received its start, so the store only ever sees its own sessions. Memory is bounded by
``capacity`` sessions of at most a known size each (the caller states the size); a session
unused for ``idle_timeout_s`` is dropped, and when a new session arrives at a full store the
least recently used session that is not in use right now is evicted.

A key that is gone is remembered for a while (``remember``) with the reason, so the answer to a
late prompt can say *why* the session has no image: never started, evicted, expired or ended.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

#: Why a session is no longer in the store.
EVICTED = "evicted"
EXPIRED = "expired"
ENDED = "ended"


def why_missing_in_words(why: str | None, kind: str) -> str:
    """Why a session is not in the store, for its 400: ``why`` as
    :meth:`SessionStore.why_missing` gives it, ``kind`` what it holds ("sessions",
    "videos")."""
    return {
        EVICTED: f"it was evicted to make room for newer {kind}",
        EXPIRED: "it was idle for too long",
        ENDED: "it was ended",
    }.get(why or "", "it was never started here, or the server restarted")


class StoreFull(Exception):
    """Every session is in use by the current batch; none can be evicted for a new one."""


class SessionStore(Generic[T]):
    """At most ``capacity`` sessions, each dropped after ``idle_timeout_s`` without use.

    Thread-safe: a sweeper thread may call :meth:`expire` while the model executes.
    ``on_drop(key, value, reason)`` runs for every session that leaves the store (outside the
    store's lock), e.g. to log it.
    """

    def __init__(
        self,
        capacity: int,
        idle_timeout_s: float,
        *,
        remember: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        on_drop: Callable[[Hashable, T, str], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be > 0")
        self.capacity = capacity
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._on_drop = on_drop
        self._lock = threading.Lock()
        # key -> (value, last use); ordered from least to most recently used.
        self._live: OrderedDict[Hashable, tuple[T, float]] = OrderedDict()
        self._gone: OrderedDict[Hashable, str] = OrderedDict()
        self._remember = remember
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._live

    def get(self, key: Hashable) -> T | None:
        """The session's value (and mark it used now), or None."""
        with self._lock:
            entry = self._live.get(key)
            if entry is None:
                return None
            self._live[key] = (entry[0], self._clock())
            self._live.move_to_end(key)
            return entry[0]

    def why_missing(self, key: Hashable) -> str | None:
        """``"evicted"``, ``"expired"`` or ``"ended"`` for a key that left recently, else None."""
        with self._lock:
            return self._gone.get(key)

    def put(self, key: Hashable, value: T, in_use: Iterable[Hashable] = ()) -> None:
        """Store (or replace) a session; evict the least recently used ones not ``in_use`` to
        stay within ``capacity``. :class:`StoreFull` if all others are in use."""
        dropped = []
        with self._lock:
            old = self._live.pop(key, None)
            if old is not None:
                dropped.append((key, old[0], ENDED))
            busy = set(in_use) | {key}
            while len(self._live) >= self.capacity:
                victim = next((k for k in self._live if k not in busy), None)
                if victim is None:
                    raise StoreFull(
                        f"all {self.capacity} sessions of this instance are in use by this batch"
                    )
                dropped.append((victim, self._live.pop(victim)[0], EVICTED))
                self._forget(victim, EVICTED)
                self.evictions += 1
            self._live[key] = (value, self._clock())
            self._gone.pop(key, None)
        self._notify(dropped)

    def pop(self, key: Hashable, reason: str = ENDED) -> T | None:
        """Remove a session (the client ended it); its value, or None if it was not here."""
        with self._lock:
            entry = self._live.pop(key, None)
            if entry is not None:
                self._forget(key, reason)
        if entry is None:
            return None
        self._notify([(key, entry[0], reason)])
        return entry[0]

    def expire(self, now: float | None = None) -> list[Hashable]:
        """Drop sessions idle for longer than ``idle_timeout_s``; their keys."""
        now = self._clock() if now is None else now
        dropped = []
        with self._lock:
            for key, (value, used) in list(self._live.items()):
                if now - used < self.idle_timeout_s:
                    break  # ordered by last use: the rest are fresher
                del self._live[key]
                self._forget(key, EXPIRED)
                self.expirations += 1
                dropped.append((key, value, EXPIRED))
        self._notify(dropped)
        return [key for key, _, _ in dropped]

    def clear(self) -> None:
        """Drop every session (the instance is unloading)."""
        with self._lock:
            dropped = [(k, v, ENDED) for k, (v, _) in self._live.items()]
            self._live.clear()
        self._notify(dropped)

    def _forget(self, key: Hashable, reason: str) -> None:
        self._gone[key] = reason
        self._gone.move_to_end(key)
        while len(self._gone) > self._remember:
            self._gone.popitem(last=False)

    def _notify(self, dropped: list) -> None:
        if self._on_drop is not None:
            for key, value, reason in dropped:
                self._on_drop(key, value, reason)


class Periodic:
    """Calls ``action()`` every ``interval_s`` seconds on a daemon thread, from :meth:`start`
    until :meth:`stop`: work an idle server does without waiting for a request.
    ``setup()``, if given, runs first on that thread (what a thread keeps for itself, such as
    its current CUDA device)."""

    def __init__(
        self,
        action: Callable[[], object],
        interval_s: float,
        name: str,
        setup: Callable[[], object] | None = None,
    ) -> None:
        self._action = action
        self._interval = interval_s
        self._setup = setup
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def _run(self) -> None:
        if self._setup is not None:
            self._setup()
        while not self._stop.wait(self._interval):
            self._action()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread.is_alive()


class Sweeper(Periodic):
    """Calls ``store.expire()`` every ``interval_s`` seconds on a daemon thread, so an idle
    server frees expired sessions' memory without waiting for the next request. ``setup``:
    as :class:`Periodic`'s (freeing device tensors may call CUDA: the instance's device)."""

    def __init__(
        self, store: SessionStore, interval_s: float, setup: Callable[[], object] | None = None
    ) -> None:
        super().__init__(store.expire, interval_s, "session-sweeper", setup)
