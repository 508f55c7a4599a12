"""ONNX Runtime sessions fed and read as torch tensors that stay on one device.

A stateful model keeps each session's image features on its instance's device between
requests. :class:`TorchOrtSession` binds torch tensors (CPU or CUDA) to an ONNX Runtime
session through I/O binding, so on a GPU the features go from the encoder's output buffer
into the decoder's input without ever crossing to the host, and the outputs land in torch
tensors that the pre/post-processing (also torch, on the same device) reads in place.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sam2_triton.models import UserError
from sam2_triton.sessions.store import Periodic

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def torch_device(kind: str, device_id: int = 0) -> "torch.device":
    """The torch device of a Triton model instance (``kind`` ``"GPU"`` or ``"CPU"``); a GPU
    becomes the process's current CUDA device (each instance has a process of its own).

    A GPU instance on a machine where torch sees no GPU is a configuration error, not
    something to silently run on the CPU: it would be slow and hold host memory instead.
    """
    import torch

    if kind.upper() == "GPU":
        if not torch.cuda.is_available():
            raise UserError(
                "this instance is KIND_GPU but torch sees no GPU (use the CPU config: "
                "--model-config-name=cpu)"
            )
        # The instance's GPU becomes its process's current device: whatever is made on
        # "cuda" without an index (Meta's modules build position-encoding caches so) then
        # lands there, not on GPU 0 with a CUDA context of its own.
        torch.cuda.set_device(device_id)
        return torch.device("cuda", device_id)
    return torch.device("cpu")


def make_current(device: "torch.device") -> None:
    """Make CUDA ``device`` the calling thread's current device (nothing for a CPU device).

    CUDA keeps a current device per thread, and a new thread starts on GPU 0, whatever
    :func:`torch_device` set on the instance's loading thread. Torch's kernels run where
    their tensors are, but a bare runtime call does not: the caching allocator's ``cudaFree``
    (``torch.cuda.empty_cache``) on such a thread made a CUDA context of 518 MiB on GPU 0
    for an instance of GPU 1 (measured on two H200s). Every thread of an instance that
    touches CUDA runs this first."""
    import torch

    if device.type == "cuda":
        torch.cuda.set_device(cuda_index(device))


def cuda_index(device: "torch.device") -> int:
    """The index of CUDA ``device`` (a bare ``"cuda"`` is the current device)."""
    import torch

    return torch.cuda.current_device() if device.index is None else device.index


def providers_for(
    device: "torch.device", provider_options: Mapping[str, str] | None = None
) -> list:
    """ONNX Runtime execution providers for ``device``: CUDA EP on a GPU, else the CPU EP.

    ``provider_options`` (CUDA EP options, e.g. ``{"sdpa_kernel": "1"}``) are added to the
    defaults of :data:`~sam2_triton.model_config.CUDA_EP_OPTIONS`; ignored on a CPU."""
    import onnxruntime as ort

    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    try:
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels torch brought
    except Exception as e:  # noqa: BLE001 - older onnxruntime, or libraries on LD_LIBRARY_PATH
        log.info("onnxruntime.preload_dlls() did not run (%s)", e)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UserError(
            "this instance is KIND_GPU but the installed onnxruntime has no CUDA execution "
            "provider (install onnxruntime-gpu)"
        )
    from sam2_triton.model_config import CUDA_EP_OPTIONS

    # The options of the ONNX models' GPU configs (model_config.CUDA_EP_OPTIONS).
    options = {**CUDA_EP_OPTIONS, **(provider_options or {}), "device_id": device.index or 0}
    return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


def session_options(device: "torch.device", intra_op_threads: int = 0):
    """ONNX Runtime's ``SessionOptions`` for a graph run on ``device``.

    On a GPU the CUDA EP runs the nodes; the CPU threads only run the few shape nodes ONNX
    Runtime keeps on the CPU. So one thread (unless ``intra_op_threads`` says otherwise) that
    does not spin waiting for work: ONNX Runtime's default is a thread per core, each spinning
    after every run, and a served repository has a dozen such sessions in Triton's stub
    processes, whose spinning competes for the cores with the Python threads that feed the
    GPU. On a CPU, the threads do the work: ONNX Runtime's default (one per core), without
    the CPU arena (it kept the encoder's peak working set for good: a session instance's
    memory doubled, to 2.2 GB with tiny; without it the memory goes back after each run, at
    no measurable cost in speed).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if device.type == "cuda":
        options.intra_op_num_threads = intra_op_threads or 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    else:
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        options.enable_cpu_mem_arena = False
    return options


class AfterLargeRuns:
    """When to give back the working memory large runs left behind: at the first run of at
    most ``threshold`` rows after runs of more (not on the large runs themselves: a burst is
    several of them back to back, and memory given back after each would be allocated again
    for the next). ``threshold`` None: never."""

    def __init__(self, threshold: int | None) -> None:
        self.threshold = threshold
        self._last_large = False

    def release_now(self, rows: int) -> bool:
        """Whether the run of ``rows`` about to start should give the memory back."""
        if self.threshold is None:
            return False
        large = rows > self.threshold
        release, self._last_large = self._last_large and not large, large
        return release


#: How far torch's cached device memory may grow beyond its level after the warm-up before an
#: idle instance gives the rest back (:class:`IdleRelease`): one user's clicks stay under it,
#: so they never pay for allocating again after a pause.
IDLE_RELEASE_SLACK_BYTES = 256 << 20


def release_message(name: str, device: "torch.device", before: int, after: int) -> str:
    """The log line of an idle release of model ``name`` on ``device`` (torch's reserved
    bytes ``before`` and ``after`` it)."""
    import torch

    # What tensors use (sessions, videos, weights, graphs' pools): what stays reserved beyond
    # it is free space that torch cannot return (inside segments or pools in use).
    used = torch.cuda.memory_allocated(device)
    return (
        f"{name}: idle: gave back {(before - after) / 2**20:.0f} MiB of cached device "
        f"memory (torch's reserve {before / 2**20:.0f} -> {after / 2**20:.0f} MiB, "
        f"{used / 2**20:.0f} MiB of it in use)"
    )


class IdleRelease:
    """Gives back the device memory that torch's caching allocator keeps but no tensor uses,
    once the engine has been idle for ``idle_s`` seconds (no :meth:`busy` block running or
    ended since) and the cache holds more than ``slack_bytes`` beyond its level at
    :meth:`settle` (the end of the warm-up).

    Why: a burst's working memory (16 clicks' masks upsampled to full size at once, batches
    of new images) otherwise stays with the instance after the burst, where the next burst
    would reuse it but nothing else on the GPU can (measured on an H200: one ``sam2_session``
    instance 3.1 GiB loaded, 5.6 GiB after a benchmark). Once per idle spell: what cannot go
    back (segments that sessions' features still use) is not asked for again until the
    engine has run. The CUDA graphs' pool is not touched (``torch.cuda.empty_cache`` leaves
    private pools alone). :meth:`poll` runs on a :class:`~sam2_triton.sessions.store.Periodic`
    thread (:meth:`start`) and waits for no execution: a busy engine is simply not idle.

    ``reserved`` and ``release`` default to torch's for ``device`` (``memory_reserved`` and
    ``empty_cache``); ``on_release(before, after)`` gets the reserved bytes around a release.
    """

    def __init__(
        self,
        device: "torch.device",
        idle_s: float,
        slack_bytes: int = IDLE_RELEASE_SLACK_BYTES,
        *,
        clock: Callable[[], float] = time.monotonic,
        reserved: Callable[[], int] | None = None,
        release: Callable[[], None] | None = None,
        on_release: Callable[[int, int], None] | None = None,
    ) -> None:
        import torch

        if idle_s <= 0:
            raise ValueError("idle_s must be > 0")
        self.device = device
        self.idle_s = idle_s
        self.slack_bytes = slack_bytes
        self._clock = clock
        self._reserved = reserved or (lambda: torch.cuda.memory_reserved(device))
        self._release = release or torch.cuda.empty_cache
        self._on_release = on_release
        self._lock = threading.Lock()
        self._baseline = 0
        self._last_end = clock()
        self._released_since_run = False
        self._thread: Periodic | None = None

    @classmethod
    def for_device(
        cls,
        device: "torch.device",
        idle_s: float,
        on_release: Callable[[int, int], None] | None = None,
    ) -> IdleRelease | None:
        """An engine's release on ``device``, settled at the cache's present level; None on
        a CPU (no torch cache to give back) or with ``idle_s`` 0 (never)."""
        if device.type != "cuda" or idle_s <= 0:
            return None
        release = cls(device, idle_s, on_release=on_release)
        release.settle()
        return release

    def settle(self) -> None:
        """Take the cache's present level as the one to come back to (after the warm-up)."""
        self._baseline = self._reserved()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """A block of engine work (an execution): no release runs meanwhile."""
        with self._lock:
            try:
                yield
            finally:
                self._last_end = self._clock()
                self._released_since_run = False

    def poll(self) -> int | None:
        """Release now if idle long enough and grown enough: the bytes given back, else None."""
        if not self._lock.acquire(blocking=False):
            return None  # an execution is running
        try:
            if self._released_since_run or self._clock() - self._last_end < self.idle_s:
                return None
            before = self._reserved()
            if before - self._baseline <= self.slack_bytes:
                return None
            self._release()
            self._released_since_run = True
            after = self._reserved()
            if self._on_release is not None:
                self._on_release(before, after)
            return before - after
        finally:
            self._lock.release()

    def start(self) -> IdleRelease:
        """Poll on a daemon thread, twice per ``idle_s``, whose current device is this
        release's (:func:`make_current`: ``empty_cache`` frees through CUDA's runtime)."""
        self._thread = Periodic(
            self.poll,
            self.idle_s / 2,
            "idle-memory-release",
            setup=lambda: make_current(self.device),
        ).start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()

    @property
    def running(self) -> bool:
        """Whether its polling thread is alive."""
        return self._thread is not None and self._thread.running


def padded_rows(value: "torch.Tensor", rows: int) -> "torch.Tensor":
    """``value`` ``[k, ...]`` with its last row repeated up to ``rows`` rows (a batch padded
    to a bucket size: rows do not interact, so the real rows' answers are unchanged)."""
    import torch

    k = value.shape[0]
    return value if rows == k else torch.cat([value, value[-1:].expand(rows - k, *value.shape[1:])])


class TorchOrtSession:
    """One ONNX graph run on torch tensors of one device (float32 inputs and outputs).

    ``output_shapes(batch)`` gives each output's shape for a run whose leading dim is
    ``batch`` (the graphs of this project have fixed shapes apart from that and the point
    count). Outputs are allocated as torch tensors and returned; inputs are bound in place.

    ``shrink_arena_above``: after runs of a larger batch, the next run of at most that batch
    gives the GPU memory its arena does not need back to the device (ONNX Runtime's
    ``memory_arena_shrinkage`` run option on that run). Why: the arena keeps its peak for
    good, and one burst of eight new images left the base_plus encoder's arena 5.4 GiB larger
    in every ``sam2_session`` instance (measured on the H100), for runs that are almost all of
    one image. Not on the large runs themselves: a burst is several of them back to back, and
    memory given back after each would be allocated again for the next.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: "torch.device",
        intra_op_threads: int = 0,
        provider_options: Mapping[str, str] | None = None,
        shrink_arena_above: int | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} is missing (export it with scripts/export_onnx.py)")
        options = session_options(device, intra_op_threads)
        self.device = device
        self.path = path
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=providers_for(device, provider_options)
            )
        except Exception as e:  # noqa: BLE001 - any load failure is the model's
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load {path}: {first}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.shrink_arena_above = shrink_arena_above
        self._after_large_runs = AfterLargeRuns(shrink_arena_above)
        self._shrink = None
        if shrink_arena_above is not None and device.type == "cuda":
            self._shrink = ort.RunOptions()
            self._shrink.add_run_config_entry(
                "memory.enable_memory_arena_shrinkage", f"gpu:{device.index or 0}"
            )

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(
        self,
        feed: Mapping[str, "torch.Tensor"],
        output_shapes: Mapping[str, Sequence[int]],
    ) -> dict[str, "torch.Tensor"]:
        """Run on ``feed`` (every graph input, float32 on this device) and return the outputs
        named in ``output_shapes`` as new float32 tensors of those shapes."""
        import numpy as np
        import torch

        kind = "cuda" if self.device.type == "cuda" else "cpu"
        index = self.device.index or 0
        binding = self.session.io_binding()
        keep = []  # contiguous copies stay alive until the run returns
        for name in self.input_names:
            value = feed[name]
            if value.device != self.device or value.dtype != torch.float32:
                value = value.to(self.device, torch.float32)
            value = value.contiguous()
            keep.append(value)
            binding.bind_input(name, kind, index, np.float32, list(value.shape), value.data_ptr())
        outputs = {}
        for name, shape in output_shapes.items():
            out = torch.empty(tuple(shape), dtype=torch.float32, device=self.device)
            binding.bind_output(name, kind, index, np.float32, list(out.shape), out.data_ptr())
            outputs[name] = out
        if kind == "cuda":
            # torch wrote the inputs on its stream; ONNX Runtime reads them on its own.
            torch.cuda.current_stream(self.device).synchronize()
        rows = next(iter(feed.values())).shape[0]
        release = self._shrink is not None and self._after_large_runs.release_now(rows)
        shrink = self._shrink if release else None
        self.session.run_with_iobinding(binding, shrink)  # returns once the device is done
        return outputs


class CudaGraphOrtSession(TorchOrtSession):
    """:class:`TorchOrtSession` on the CUDA EP with CUDA graphs: one graph per input-shape
    signature, captured by ONNX Runtime on its first runs and replayed afterwards.

    Why: the decoder is a few GFLOPs spread over hundreds of small kernels; on an H100 its
    time at batch 1 is mostly kernel launches, which a graph replay removes. A graph replays
    fixed device addresses, so each signature (batch, point count) gets its own input and
    output buffers, bound once; each run copies its inputs into them (device to device) and
    returns copies of the outputs. ``max_graphs`` signatures are kept (first come first
    served; more shapes run without a graph). ONNX Runtime refuses graphs for a model with
    nodes outside the CUDA EP: then :attr:`error` says why and every run goes without. The
    first :data:`CHECKED_RUNS` runs of each graph (those ONNX Runtime captures in) are also
    run without it and compared; any difference turns graphs off for good.

    ``batches``: the batch sizes that get graphs (others run without). ``plain``: a session
    of the same file whose plain ONNX Runtime session serves the runs without a graph and the
    checks, instead of one of this object's own (a bucket of :class:`BucketedOrtSession`
    shares its single-row session's). Graphs of one batch size share their buffers of each
    shape: the decoder's 16 MiB of features per row are held once per batch size, however
    many point counts have a graph.
    """

    #: Runs per graph compared with a plain run (ONNX Runtime captures on its first runs).
    CHECKED_RUNS = 3

    def __init__(
        self,
        path,
        device: "torch.device",
        intra_op_threads: int = 0,
        max_graphs: int = 64,
        provider_options: Mapping[str, str] | None = None,
        batches: Collection[int] = (1,),
        plain: TorchOrtSession | None = None,
    ) -> None:
        import onnxruntime as ort

        if device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        if plain is None:
            super().__init__(path, device, intra_op_threads, provider_options)
        else:  # the plain runs go to the given session's ONNX Runtime session
            self.device, self.path, self.session = device, Path(path), plain.session
            self.input_names, self.output_names = plain.input_names, plain.output_names
            self.shrink_arena_above, self._shrink = None, None
            self._after_large_runs = AfterLargeRuns(None)
        options = session_options(device, intra_op_threads)
        providers = providers_for(device, provider_options)
        providers[0] = (providers[0][0], {**providers[0][1], "enable_cuda_graph": "1"})
        try:
            self.graph_session = ort.InferenceSession(str(self.path), options, providers=providers)
            self.error = None
        except Exception as e:  # noqa: BLE001 - e.g. nodes the CUDA EP does not run
            self.graph_session, self.error = None, str(e).strip().splitlines()[0]
        self.max_graphs = max_graphs
        self.batches = frozenset(batches)
        self._graphs: dict[tuple, list] = {}
        self._buffers: dict[tuple, "torch.Tensor"] = {}  # (name, shape) -> bound buffer

    def _buffer(self, name: str, shape) -> "torch.Tensor":
        import torch

        key = (name, tuple(shape))
        if key not in self._buffers:
            self._buffers[key] = torch.empty(key[1], dtype=torch.float32, device=self.device)
        return self._buffers[key]

    def run(self, feed, output_shapes):
        import numpy as np
        import onnxruntime as ort
        import torch

        # Graphs only for the batch sizes asked for: each holds buffers of that many rows.
        batch = {v.shape[0] for v in feed.values()}
        if self.graph_session is None or len(batch) != 1 or not batch <= self.batches:
            return super().run(feed, output_shapes)
        key = tuple((n, tuple(feed[n].shape)) for n in self.input_names) + tuple(
            (n, tuple(s)) for n, s in output_shapes.items()
        )
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= self.max_graphs:
                return super().run(feed, output_shapes)
            index = self.device.index or 0
            binding = self.graph_session.io_binding()
            inputs = {n: self._buffer(n, feed[n].shape) for n in self.input_names}
            outputs = {n: self._buffer(n, s) for n, s in output_shapes.items()}
            for n, t in (*inputs.items(),):
                binding.bind_input(n, "cuda", index, np.float32, list(t.shape), t.data_ptr())
            for n, t in outputs.items():
                binding.bind_output(n, "cuda", index, np.float32, list(t.shape), t.data_ptr())
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(len(self._graphs) + 1))
            graph = self._graphs[key] = [binding, inputs, outputs, run_options, 0]
        binding, inputs, outputs, run_options, runs = graph
        for n, buffer in inputs.items():
            buffer.copy_(feed[n], non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        try:
            self.graph_session.run_with_iobinding(binding, run_options)
        except Exception as e:  # noqa: BLE001 - capture refused: run without graphs from now
            self.graph_session, self.error = None, str(e).strip().splitlines()[0]
            self._graphs.clear()
            return super().run(feed, output_shapes)
        result = {n: t.clone() for n, t in outputs.items()}
        if runs < self.CHECKED_RUNS:
            graph[4] += 1
            plain = super().run(feed, output_shapes)
            worst = max(float((plain[n] - result[n]).abs().max()) for n in result)
            if not worst <= 1e-3:
                self.graph_session = None
                self.error = f"a graph's answer differed from a plain run by {worst:g}"
                self._graphs.clear()
                return plain
        return result


class StageClock:
    """Wall time per named stage of an engine's work, for the benchmark's profile of where a
    request's time goes. Each stage ends with a synchronisation of ``device``, so device work
    counts in the stage that queued it; the synchronisations slow the whole a little, so
    profile in runs of their own, not in the timed ones."""

    def __init__(self, device: "torch.device") -> None:
        self.device = device
        self.seconds: Counter[str] = Counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        import torch

        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] += time.perf_counter() - start

    def mean_ms(self, calls: int) -> dict[str, float]:
        """Milliseconds per call of each stage, over ``calls`` calls."""
        return {name: round(1e3 * s / max(calls, 1), 3) for name, s in self.seconds.items()}


class BucketedOrtSession:
    """Batches of more than one row run padded up to a bucket size (``buckets``, e.g. 2, 4,
    8, 16), each bucket in an ONNX Runtime session of its own that only ever sees that batch
    size; a batch of one goes to ``single``.

    Why: ONNX Runtime's CUDA convolutions build their cuDNN execution plan again whenever
    their input shape differs from their previous run's. Clicks of different sessions are
    batched as they arrive, so the batch size changes from one execution to the next and
    every decoder run paid for new plans: measured on the H100 through Triton, 27–40 ms per
    decoder run of 7–12 clicks, against 7.9 ms in process for 16 clicks in batches of fixed
    size. A session per bucket builds its plans once, at load (one run on zeros each). The
    padding rows repeat the last real row; rows do not interact, so the real rows' outputs are
    unchanged, and they are cut off. A batch above the largest bucket runs in ``single``'s
    plain session unpadded.

    ``graphs`` (CUDA only): each bucket replays CUDA graphs
    (:class:`CudaGraphOrtSession` for its one batch size, sharing ``single``'s plain session
    for its checks), as single clicks do: a bucket's run is otherwise mostly kernel launches
    (measured on the H100: 10.4 ms for a batch of 16 clicks in process, of which the decoder's
    device time is about a third). At most :data:`GRAPHS_PER_BUCKET` signatures (point count,
    outputs) per bucket get a graph; rarer ones run without, in ``single``'s plain session.
    """

    #: Graphs per bucket: each holds its own device memory for the run's intermediates.
    GRAPHS_PER_BUCKET = 8

    def __init__(
        self,
        path,
        device: "torch.device",
        single: TorchOrtSession,
        buckets: Sequence[int],
        intra_op_threads: int = 0,
        warm: tuple[Mapping[str, Sequence[int]], Mapping[str, Sequence[int]]] | None = None,
        graphs: bool = False,
    ) -> None:
        self.single = single
        self.buckets = sorted({int(b) for b in buckets if int(b) > 1})
        if graphs and device.type == "cuda":
            self.sessions: dict[int, TorchOrtSession] = {
                b: CudaGraphOrtSession(
                    path,
                    device,
                    intra_op_threads,
                    max_graphs=self.GRAPHS_PER_BUCKET,
                    batches=(b,),
                    plain=single,
                )
                for b in self.buckets
            }
        else:
            self.sessions = {
                b: TorchOrtSession(path, device, intra_op_threads) for b in self.buckets
            }
        self.device = device
        if warm is not None:
            self.warm(*warm)

    @property
    def providers(self) -> list[str]:
        return self.single.providers

    @property
    def error(self) -> str | None:
        """Why ``single`` or a bucket runs without CUDA graphs, if one does."""
        errors = [getattr(s, "error", None) for s in (self.single, *self.sessions.values())]
        return next((e for e in errors if e), None)

    def warm(
        self, input_shapes: Mapping[str, Sequence[int]], output_shapes: Mapping[str, Sequence[int]]
    ) -> None:
        """Run each bucket on zeros (each shape without the batch dim), so that its plans are
        built, and its graph captured and checked, before the first request."""
        import torch

        for b, session in self.sessions.items():
            feed = {
                n: torch.zeros((b, *input_shapes[n]), dtype=torch.float32, device=self.device)
                for n in session.input_names
            }
            graphed = isinstance(session, CudaGraphOrtSession)
            runs = CudaGraphOrtSession.CHECKED_RUNS + 1 if graphed else 1
            for _ in range(runs):
                session.run(feed, {n: (b, *s) for n, s in output_shapes.items()})

    def run(self, feed, output_shapes):

        k = next(iter(feed.values())).shape[0]
        bucket = next((b for b in self.buckets if b >= k), None)
        if k == 1 or bucket is None:
            return self.single.run(feed, output_shapes)
        padded = {n: padded_rows(v, bucket) for n, v in feed.items()}
        out = self.sessions[bucket].run(
            padded, {n: (bucket, *tuple(s)[1:]) for n, s in output_shapes.items()}
        )
        return {n: v[:k] for n, v in out.items()}


def bucket_sizes(largest: int) -> list[int]:
    """Batch sizes for :class:`BucketedOrtSession` up to ``largest``: the powers of two above
    1 below it, and ``largest`` itself (2, 4, 8, 16 for 16; 2, 4, 6 for 6)."""
    sizes = [b for b in (2**i for i in range(1, 16)) if b < largest]
    return sizes + ([largest] if largest > 1 else [])
