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


def closed_loop_processes(
    make_call: Callable[[int], Callable[[int], object]],
    *,
    processes: int,
    concurrency: int,
    iterations: int = 20,
    warmup: int = 3,
    min_time_s: float = 0.0,
    on_start: Callable[[], None] | None = None,
    timeout_s: float = 600.0,
) -> tuple[list[float], float, float]:
    """:func:`closed_loop` with its ``concurrency`` workers spread over ``processes`` new
    processes (threads within each): one Python process's interpreter lock caps how many
    requests per second its threads can make, and at a few thousand a second the client,
    not the server, would set the pace. ``make_call`` must pickle (it is sent to each
    process; each calls it for its own workers, numbered across processes).

    All processes warm up, then ``on_start()`` runs here, then all start their timed calls
    together. Returns (latencies in s, wall time in s from the common start to the last
    worker's end, the processes' CPU seconds per wall second during the timed calls). An
    exception in a process is raised here as a RuntimeError with its message."""
    import multiprocessing

    if processes < 1 or concurrency < processes:
        raise ValueError("need 1 <= processes <= concurrency")
    context = multiprocessing.get_context("spawn")  # no fork of this process's threads
    warmed, go = context.Barrier(processes + 1), context.Barrier(processes + 1)
    results = context.Queue()
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    firsts = [sum(shares[:i]) for i in range(processes)]
    workers = [
        context.Process(
            target=_process_loop,
            args=(make_call, first, share, iterations, warmup, min_time_s, warmed, go, results),
            daemon=True,
        )
        for first, share in zip(firsts, shares)
    ]
    for w in workers:
        w.start()
    try:
        warmed.wait(timeout_s)
        if on_start is not None:
            on_start()
        go.wait(timeout_s)
        outcomes = [results.get(timeout=timeout_s) for _ in workers]
    except threading.BrokenBarrierError:  # a process failed (its text is queued) or hung
        queued = [results.get(timeout=5) for _ in range(results.qsize())]
        errors = [o for o in queued if isinstance(o, str)]
        outcomes = errors or ["a client process failed or did not warm up in time"]
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
    failed = [o for o in outcomes if isinstance(o, str)]
    if failed:
        raise RuntimeError(failed[0])
    start = min(o[1] for o in outcomes)
    wall = max(o[2] for o in outcomes) - start
    cpu = sum(o[3] for o in outcomes)
    return [x for o in outcomes for x in o[0]], wall, (cpu / wall if wall > 0 else 0.0)


def _process_loop(
    make_call, first, share, iterations, warmup, min_time_s, warmed, go, results
) -> None:
    """One process of :func:`closed_loop_processes`: ``share`` workers numbered from
    ``first``; puts (latencies, start, end, CPU seconds) on ``results``, or the error's text.
    ``time.perf_counter`` is the system's monotonic clock, shared by the processes."""
    times = {}

    def started() -> None:
        warmed.wait()
        go.wait()
        times["start"], times["cpu"] = time.perf_counter(), time.process_time()

    try:
        latencies, _wall = closed_loop(
            lambda w: make_call(first + w),
            concurrency=share,
            iterations=iterations,
            warmup=warmup,
            min_time_s=min_time_s,
            on_start=started,
        )
        end = time.perf_counter()
        results.put((latencies, times["start"], end, time.process_time() - times["cpu"]))
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        results.put(f"{type(e).__name__}: {e}")  # first: the parent reads it once broken
        warmed.abort()
        go.abort()
