"""Timing loops and latency statistics shared by every benchmark backend."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency percentiles (milliseconds) and throughput of one measured case."""

    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float
    std: float
    calls: int
    wall_s: float
    #: Items (images, masks or sessions) per second over the whole measured wall time.
    throughput: float

    def as_dict(self) -> dict:
        """JSON-ready form, latencies rounded to microseconds."""
        d = asdict(self)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def summarize(latencies_s: list[float], items_per_call: int, wall_s: float) -> LatencyStats:
    """Percentiles of ``latencies_s`` (seconds) and ``items_per_call * calls / wall_s``."""
    if not latencies_s:
        raise ValueError("no latencies to summarize")
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyStats(
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        mean=float(ms.mean()),
        min=float(ms.min()),
        max=float(ms.max()),
        std=float(ms.std()),
        calls=len(ms),
        wall_s=float(wall_s),
        throughput=float(items_per_call * len(ms) / wall_s) if wall_s > 0 else 0.0,
    )


def closed_loop(
    make_call: Callable[[int], Callable[[int], object]],
    *,
    concurrency: int = 1,
    iterations: int = 20,
    warmup: int = 3,
    min_time_s: float = 0.0,
    tick: Callable[[], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> tuple[list[float], float]:
    """Run ``concurrency`` closed-loop workers and return (latencies in s, wall time in s).

    ``make_call(worker)`` is called once per worker (in that worker's thread, so each can
    own its client or I/O binding) and returns ``call(i)``, which does one timed request
    with input set ``i``. Each worker makes ``warmup`` untimed calls, then all start
    together and each makes at least ``iterations`` timed calls (more while ``min_time_s``
    has not passed). Exceptions in a worker are re-raised here. ``on_start()`` runs once,
    after every warm-up call and before the first timed one (e.g. a statistics snapshot).
    """
    if concurrency < 1 or iterations < 1:
        raise ValueError("concurrency and iterations must be >= 1")
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []
    ready = threading.Barrier(concurrency + 1, action=on_start)
    finished = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(w: int) -> None:
        try:
            call = make_call(w)
            for i in range(warmup):
                call(i)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)
            ready.abort()
            return
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            return
        try:
            i = 0
            while i < iterations or time.perf_counter() < deadline[0]:
                t0 = time.perf_counter()
                call(warmup + i)
                latencies[w].append(time.perf_counter() - t0)
                i += 1
                if tick is not None:
                    tick()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                finished.wait()

    if concurrency == 1:
        call = make_call(0)
        for i in range(warmup):
            call(i)
        if on_start is not None:
            on_start()
        out: list[float] = []
        start = time.perf_counter()
        deadline[0] = start + min_time_s
        i = 0
        while i < iterations or time.perf_counter() < deadline[0]:
            t0 = time.perf_counter()
            call(warmup + i)
            out.append(time.perf_counter() - t0)
            i += 1
            if tick is not None:
                tick()
        return out, time.perf_counter() - start

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    deadline[0] = float("inf")  # nobody stops before the real deadline is set below
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        raise errors[0] from None
    start = time.perf_counter()
    deadline[0] = start + min_time_s
    finished.wait()
    wall = time.perf_counter() - start
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [x for per_worker in latencies for x in per_worker], wall
