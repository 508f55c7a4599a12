"""The benchmark suite: which cases run, in which order, and the result records.

Every result is one dict (see :func:`record`) in ``report["results"]``; a case that cannot
run here (no GPU, no checkpoint, FP16 not declared on the wire) is listed under
``report["skipped"]`` with its reason instead of failing the run.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sam2_triton.bench import inputs
from sam2_triton.bench.stats import closed_loop, closed_loop_processes, summarize
from sam2_triton.export import CUDA_MODEL_FILENAME, DECODER_INPUTS
from sam2_triton.model_config import SessionServing

SCHEMA = "sam2-triton-benchmark/1"
UNITS = {
    "encoder": "img/s",
    "decoder": "masks/s",
    "decoder_prompts": "masks/s",  # K prompt sets on one image per request
    "interactive": "sessions/s",
    "session_start": "sessions/s",  # a new session on a JPEG file per call
    "session_decode": "masks/s",  # a click on an open session per call
    "session_empty": "requests/s",  # a request of an open session without a prompt
}


log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    """What to measure. Defaults are the full GPU run; :meth:`quick` is the CI run."""

    model_size: str = "base_plus"
    repository: Path | None = None  # ONNX files: <repo>/sam2_{encoder,decoder}/1/model.onnx
    fp16_repository: Path | None = None
    checkpoint: Path | None = None  # Meta-format checkpoint for the PyTorch baselines
    backends: tuple[str, ...] = ("onnxruntime", "pytorch")
    models: tuple[str, ...] = ("encoder", "decoder", "interactive", "sessions")
    device: str = "cuda"  # in-process backends
    io_binding: tuple[bool, ...] = (False, True)
    torch_precisions: tuple[str, ...] = ("fp32", "fp16")
    encoder_batches: tuple[int, ...] = (1, 8)
    decoder_batches: tuple[int, ...] = (1, 32)
    points: int = 2
    clicks: int = 5
    ort_concurrency: tuple[int, ...] = (1,)
    concurrency: tuple[int, ...] = (1, 2, 4, 8)  # Triton clients
    session_concurrency: tuple[int, ...] = (1, 8, 32)  # users clicking on their own session
    session_protocols: tuple[str, ...] = ("http", "grpc")
    session_image: tuple[int, int] = (1920, 1080)  # the JPEG a session starts from (W, H)
    session_batch: int = SessionServing.max_batch_size  # in-process: clicks of k sessions at once
    #: Processes the session users' clients run in (0: one per 8 users, see client_processes).
    session_client_processes: int = 0
    triton_encoder_batches: tuple[int, ...] = (1,)
    triton_decoder_batches: tuple[int, ...] = (1, 8)
    http_url: str | None = None
    grpc_url: str | None = None
    protocols: tuple[str, ...] = ("http", "grpc")
    shm: tuple[str, ...] = ("none", "system")
    wire_dtypes: tuple[str, ...] = ("fp32", "fp16")
    iterations: int = 30
    warmup: int = 5
    min_time_s: float = 1.0
    count_copies: bool = True
    predictor: bool = True
    label: str = ""
    progress: bool = True

    @classmethod
    def quick(cls, **overrides) -> "BenchConfig":
        """A run of seconds on a CPU: tiny, few iterations, small batches."""
        base = dict(
            model_size="tiny",
            device="cpu",
            io_binding=(False,),
            torch_precisions=("fp32",),
            encoder_batches=(1,),
            decoder_batches=(1,),
            clicks=2,
            concurrency=(1,),
            session_concurrency=(1,),
            session_protocols=("http",),
            session_image=(640, 480),
            session_batch=2,
            triton_encoder_batches=(1,),
            triton_decoder_batches=(1, 4),
            shm=("none", "system"),
            wire_dtypes=("fp32",),
            iterations=2,
            warmup=1,
            min_time_s=0.0,
            count_copies=False,
            predictor=False,
        )
        base.update(overrides)
        return cls(**base)


def record(
    backend: str,
    model: str,
    stats,
    *,
    batch: int,
    config: BenchConfig,
    precision: str,
    device: str,
    concurrency: int = 1,
    **details,
) -> dict:
    """One result: what ran, how, and its latency and throughput."""
    return {
        "backend": backend,
        "model": model,
        "model_size": config.model_size,
        "precision": precision,
        "device": device,
        "batch": batch,
        "concurrency": concurrency,
        "latency_ms": {
            k: round(getattr(stats, k), 4) for k in ("p50", "p90", "p99", "mean", "min", "max")
        },
        "throughput": round(stats.throughput, 2),
        "throughput_unit": UNITS[model],
        "calls": stats.calls,
        "wall_s": round(stats.wall_s, 3),
        "label": config.label,
        **details,
    }


class Suite:
    """Runs the configured cases and collects the report."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.results: list[dict] = []
        self.skipped: list[dict] = []
        self.graphs: list[dict] = []
        self.memory: list[dict] = []
        self._bar = None
        self._t0 = time.perf_counter()

    # -- bookkeeping ------------------------------------------------------------------

    def skip(self, case: str, reason: str) -> None:
        self.skipped.append({"case": case, "reason": reason})

    def _loop(
        self,
        make: Callable,
        concurrency: int,
        on_start: Callable[[], None] | None = None,
        processes: int = 1,
    ) -> tuple[list[float], float, float]:
        """The config's closed loop of ``make``'s calls, its workers in this process or
        spread over ``processes`` (``make`` must then pickle); returns (latencies in s, wall
        time in s, the client's CPU seconds per second of the timed calls)."""
        c = self.config
        loop = dict(
            concurrency=concurrency,
            iterations=c.iterations,
            warmup=c.warmup,
            min_time_s=c.min_time_s,
        )
        if processes > 1:
            latencies, wall, cpu = closed_loop_processes(
                make, processes=processes, on_start=on_start, **loop
            )
        else:
            cpu_at_start = [0.0]

            def started() -> None:
                if on_start is not None:
                    on_start()
                cpu_at_start[0] = time.process_time()

            latencies, wall = closed_loop(make, on_start=started, **loop)
            cpu = (time.process_time() - cpu_at_start[0]) / wall if wall > 0 else 0.0
        if self._bar is not None:
            self._bar.update(1)
        return latencies, wall, cpu

    def _measure(
        self,
        make: Callable,
        items: int,
        concurrency: int = 1,
        on_start: Callable[[], None] | None = None,
    ):
        latencies, wall, _cpu = self._loop(make, concurrency, on_start)
        return summarize(latencies, items, wall)

    def client_processes(self, concurrency: int) -> int:
        """Processes for ``concurrency`` session users: as configured, or one per 8 users
        (one Python process's threads manage about 2,000 small requests a second)."""
        wanted = self.config.session_client_processes or concurrency // 8
        return max(1, min(wanted, concurrency))

    def _measure_served(
        self, make: Callable, items: int, concurrency: int, target, models, processes: int = 1
    ):
        """:meth:`_measure` a served case, with Triton's own split of its time per model
        (:func:`~sam2_triton.bench.triton.server_breakdown`): the statistics are read after
        the warm-up calls and after the timed ones, so the means cover the timed calls only.
        Third: how busy the client was, its CPU seconds per second of the timed calls (near
        1 per process, its Python, not the server, may set the pace)."""
        from sam2_triton.bench import triton as btriton

        before: dict = {}

        def snapshot() -> None:
            before.update(btriton.server_statistics(target, models))

        latencies, wall, cpu = self._loop(make, concurrency, snapshot, processes)
        after = btriton.server_statistics(target, models)
        stats = summarize(latencies, items, wall)
        return stats, btriton.server_breakdown(before, after), round(cpu, 4)

    def _describe(self, text: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.set_postfix_str(text[:60])
        else:
            # Without a bar (logs, CI), one line per case says where the time goes.
            log.info("[%7.1f s] %s", time.perf_counter() - self._t0, text)

    def _onnx_path(self, precision: str, model: str) -> Path | None:
        repo = self.config.repository if precision == "fp32" else self.config.fp16_repository
        if repo is None:
            return None
        path = Path(repo) / f"sam2_{model}" / "1" / "model.onnx"
        # On a GPU, the graph ONNX Runtime's CUDA EP runs where one was exported (the
        # encoder's fused attention), as the embedded server and sam2_session load it.
        fused = path.with_name(CUDA_MODEL_FILENAME)
        if self.config.device == "cuda" and fused.is_file():
            return fused
        return path if path.is_file() else None

    # -- the run ------------------------------------------------------------------------

    def planned_cases(self) -> int:
        """How many measurements the run will make (for the progress bar)."""
        c = self.config
        n = 0
        precisions = [p for p in ("fp32", "fp16") if self._onnx_path(p, "encoder")]
        bindings = len(c.io_binding) if c.device == "cuda" else 1
        if "onnxruntime" in c.backends:
            per = len(c.ort_concurrency) * bindings * len(precisions)
            n += per * len(c.encoder_batches) * ("encoder" in c.models)
            n += per * len(c.decoder_batches) * ("decoder" in c.models)
            n += per * ("interactive" in c.models)
        if "pytorch" in c.backends:
            tp = len(c.torch_precisions) if c.device == "cuda" else 1
            n += tp * len(c.encoder_batches) * ("encoder" in c.models)
            n += tp * len(c.decoder_batches) * ("decoder" in c.models)
            n += tp * (1 + c.predictor) * ("interactive" in c.models)
        if "triton" in c.backends:
            per = len(c.protocols) * len(c.shm) * len(c.concurrency)
            n += per * len(c.triton_encoder_batches) * ("encoder" in c.models)
            prompt_batches = len(_prompt_batches(c)) * ("decoder" in c.models)
            n += per * len(c.triton_decoder_batches) * ("decoder" in c.models)
            n += per * prompt_batches
            n += per * ("interactive" in c.models)
            n += len(c.triton_encoder_batches) + len(c.triton_decoder_batches) + 1  # baselines
            n += prompt_batches
            if "sessions" in c.models:  # a start and the decodes, three kinds of answer
                n += len(c.session_protocols) * (1 + 3 * len(c.session_concurrency)) + 4
        return n

    def run(self) -> dict:
        c = self.config
        started = dt.datetime.now(dt.timezone.utc)
        self._t0 = time.perf_counter()
        try:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.planned_cases(), desc="benchmark", unit="case", disable=not c.progress
            )
        except ImportError:
            self._bar = None
        try:
            if "onnxruntime" in c.backends:
                self.run_onnxruntime()
            if "pytorch" in c.backends:
                self.run_pytorch()
            if "triton" in c.backends:
                self.run_triton()
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM (a time limit): report what was measured so far.
            self.skip("remaining cases", "interrupted")
        finally:
            if self._bar is not None:
                self._bar.close()
        return {
            "schema": SCHEMA,
            "created": started.isoformat(timespec="seconds"),
            "duration_s": round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1),
            "machine": machine_info(),
            "versions": versions(),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(c).items()},
            "results": self.results,
            "graphs": self.graphs,
            "memory": self.memory,
            "skipped": self.skipped,
        }

    # -- ONNX Runtime in process ----------------------------------------------------------

    def run_onnxruntime(self) -> None:
        """Each graph in its own session, opened, measured and closed in turn (so the
        device memory a session holds is its own); then both for the interactive case."""
        from sam2_triton.bench import ort as bort

        c = self.config
        try:
            bort.import_onnxruntime(c.device)
        except (ImportError, RuntimeError) as e:
            self.skip("onnxruntime", str(e))
            return
        for which in ("fp32", "fp16"):
            paths = {m: self._onnx_path(which, m) for m in ("encoder", "decoder")}
            if not any(paths.values()):
                flag = "--repository" if which == "fp32" else "--fp16-repository"
                self.skip(f"onnxruntime {which}", f"no ONNX files given ({flag})")
                continue
            precision = onnx_precision(next(p for p in paths.values() if p))
            for model in ("encoder", "decoder"):
                if model in c.models and paths[model] is not None:
                    self._ort_model(model, paths[model], precision)
            if "interactive" in c.models and all(paths.values()):
                self._ort_interactive(paths, precision)

    def _ort_common(self, precision: str, io_binding: bool, conc: int) -> dict:
        c = self.config
        return dict(
            config=c,
            precision=precision,
            device=c.device,
            concurrency=conc,
            io_binding=io_binding,
            provider="CUDAExecutionProvider" if c.device == "cuda" else "CPUExecutionProvider",
        )

    def _ort_model(self, model: str, path: Path, precision: str) -> None:
        from sam2_triton.bench import ort as bort

        c = self.config
        self._describe(f"ort {precision} {model}: session")
        session = bort.OrtSession.open(
            path, c.device, count_copies=c.count_copies and c.device == "cuda"
        )
        self.graphs.append(
            {"model": model, "precision": precision, "label": c.label} | session.graph
        )
        bindings = c.io_binding if c.device == "cuda" else (False,)
        batches = c.encoder_batches if model == "encoder" else c.decoder_batches
        try:
            for io_binding in bindings:
                for conc in c.ort_concurrency:
                    for batch in batches:
                        self._describe(f"ort {precision} {model} b{batch} io{int(io_binding)}")
                        if model == "encoder":
                            make = session.caller(inputs.encoder_feeds(batch), io_binding)
                            extra = {}
                        else:
                            feeds = inputs.decoder_feeds(batch, c.points)
                            make = session.caller(
                                feeds, io_binding, outputs=["masks", "iou_predictions"]
                            )
                            extra = {"points": c.points}
                        stats = self._measure(make, batch, conc)
                        common = self._ort_common(precision, io_binding, conc)
                        self.results.append(
                            record("onnxruntime", model, stats, batch=batch, **extra, **common)
                        )
            mem = session.memory_mb()
            if mem is not None:
                self.memory.append(
                    {
                        "backend": "onnxruntime",
                        "model": model,
                        "model_size": c.model_size,
                        "precision": precision,
                        "label": c.label,
                        "largest_batch": max(batches),
                        "device_memory_mb": mem,
                        "method": "cudaMemGetInfo: used after this session's runs minus used "
                        "before it was created (arena kSameAsRequested, one session open)",
                    }
                )
        finally:
            session.close()

    def _ort_interactive(self, paths: dict, precision: str) -> None:
        from sam2_triton.bench import ort as bort

        c = self.config
        self._describe(f"ort {precision} interactive: sessions")
        sessions = {m: bort.OrtSession.open(p, c.device) for m, p in paths.items()}
        bindings = c.io_binding if c.device == "cuda" else (False,)
        try:
            for io_binding in bindings:
                for conc in c.ort_concurrency:
                    self._describe(f"ort {precision} interactive io{int(io_binding)}")
                    make = bort.interactive_caller(
                        sessions["encoder"],
                        sessions["decoder"],
                        inputs.encoder_feeds(1),
                        self._clicks(),
                        io_binding,
                    )
                    stats = self._measure(make, 1, conc)
                    self.results.append(
                        record(
                            "onnxruntime",
                            "interactive",
                            stats,
                            batch=1,
                            clicks=c.clicks,
                            points=c.points,
                            **self._ort_common(precision, io_binding, conc),
                        )
                    )
        finally:
            for session in sessions.values():
                session.close()
            gc.collect()

    def _clicks(self) -> list[dict[str, np.ndarray]]:
        rng = np.random.default_rng(7)
        return [inputs.prompts(1, self.config.points, rng) for _ in range(self.config.clicks)]

    # -- PyTorch eager ----------------------------------------------------------------------

    def run_pytorch(self) -> None:
        c = self.config
        if c.checkpoint is None or not Path(c.checkpoint).is_file():
            self.skip("pytorch", f"no checkpoint for {c.model_size} (--checkpoint)")
            return
        try:
            import torch

            from sam2_triton.bench import torch_eager as te
            from sam2_triton.export import image_encoder, prompt_decoder
        except ImportError as e:
            self.skip("pytorch", f"torch/sam2 not installed: {e}")
            return
        if c.device == "cuda" and not torch.cuda.is_available():
            self.skip("pytorch", "no CUDA device for torch")
            return
        precisions = c.torch_precisions if c.device == "cuda" else ("fp32",)
        te.reset_peak_memory(c.device)
        model = te.load_model(c.model_size, c.checkpoint, c.device)
        encoder = image_encoder(model).to(c.device)
        decoder = prompt_decoder(model).to(c.device)
        for precision in precisions:
            te.reset_peak_memory(c.device)
            common = dict(config=c, precision=precision, device=c.device)
            if "encoder" in c.models:
                for batch in c.encoder_batches:
                    self._describe(f"torch {precision} encoder b{batch}")
                    make = te.module_caller(
                        encoder, inputs.encoder_feeds(batch), ("image",), c.device, precision
                    )
                    stats = self._measure(make, batch)
                    self.results.append(record("pytorch", "encoder", stats, batch=batch, **common))
            if "decoder" in c.models:
                for batch in c.decoder_batches:
                    self._describe(f"torch {precision} decoder b{batch}")
                    feeds = inputs.decoder_feeds(batch, c.points)
                    make = te.module_caller(decoder, feeds, DECODER_INPUTS, c.device, precision)
                    stats = self._measure(make, batch)
                    self.results.append(
                        record("pytorch", "decoder", stats, batch=batch, points=c.points, **common)
                    )
            if "interactive" in c.models:
                self._describe(f"torch {precision} interactive")
                make = te.interactive_caller(
                    encoder,
                    decoder,
                    inputs.encoder_feeds(1),
                    self._clicks(),
                    DECODER_INPUTS,
                    c.device,
                    precision,
                )
                stats = self._measure(make, 1)
                self.results.append(
                    record(
                        "pytorch",
                        "interactive",
                        stats,
                        batch=1,
                        clicks=c.clicks,
                        points=c.points,
                        **common,
                    )
                )
                if c.predictor:
                    self._describe(f"predictor {precision} interactive")
                    from sam2_triton.testing import photos

                    make = te.predictor_caller(
                        model, list(photos().values()), self._clicks(), c.device, precision
                    )
                    stats = self._measure(make, 1)
                    self.results.append(
                        record(
                            "pytorch-predictor",
                            "interactive",
                            stats,
                            batch=1,
                            clicks=c.clicks,
                            points=c.points,
                            note="SAM2ImagePredictor.set_image + predict on real photos, "
                            "pre/post-processing included",
                            **common,
                        )
                    )
            peak = te.peak_memory_mb(c.device)
            if peak is not None:
                self.memory.append(
                    {
                        "backend": "pytorch",
                        "model": "encoder+decoder",
                        "model_size": c.model_size,
                        "precision": precision,
                        "label": c.label,
                        "device_memory_mb": peak,
                        "method": "torch.cuda.max_memory_allocated over this precision's runs",
                    }
                )
        del model, encoder, decoder
        gc.collect()
        if c.device == "cuda":
            torch.cuda.empty_cache()

    # -- Triton -------------------------------------------------------------------------

    def run_triton(self) -> None:
        from sam2_triton.bench import triton as btriton
        from sam2_triton.model_config import DECODER, DECODER_PROMPTS, ENCODER, SESSION

        c = self.config
        target = btriton.TritonTarget(c.http_url, c.grpc_url)
        protocols = [p for p in c.protocols if target.url_or_none(p)]
        for p in c.protocols:
            if p not in protocols:
                self.skip(f"triton {p}", f"no {p} URL given")
        if not protocols:
            return
        if set(c.models) == {"sessions"}:  # a server may serve sam2_session alone
            try:
                device = target.model_info(SESSION)["device"]
            except Exception as e:  # noqa: BLE001 - server unreachable: say so
                self.skip("triton", f"server not reachable: {type(e).__name__}: {e}")
                return
            self.run_sessions(target, protocols, device)
            return
        try:
            info = {m: target.model_info(m) for m in (ENCODER, DECODER)}
        except Exception as e:  # noqa: BLE001 - server unreachable: say so, keep the rest
            self.skip("triton", f"server not reachable: {type(e).__name__}: {e}")
            return
        if "decoder" in c.models and _prompt_batches(c):
            try:
                info[DECODER_PROMPTS] = target.model_info(DECODER_PROMPTS)
            except Exception as e:  # noqa: BLE001 - a repository exported before it existed
                self.skip("triton decoder_prompts", f"{DECODER_PROMPTS} not served: {e}")
        device = info[ENCODER]["device"]
        baselines = self._triton_baselines(device)
        for wire in c.wire_dtypes:
            declared = {m: set(i["inputs"].values()) for m, i in info.items()}
            if wire == "fp16" and not all("FP16" in d for d in declared.values()):
                self.skip(
                    "triton wire fp16",
                    "the served models declare FP32 inputs (the contract); FP16 on the wire "
                    "needs an FP16 model config",
                )
                continue
            dtype = np.float16 if wire == "fp16" else np.float32
            for protocol in protocols:
                for shm in c.shm:
                    caller = btriton.TritonCaller(target, protocol, shm, dtype)
                    try:
                        self._triton_cases(caller, info, device, wire, baselines)
                    except Exception as e:  # noqa: BLE001 - e.g. shm on a remote server
                        self.skip(f"triton {protocol} shm={shm}", f"{type(e).__name__}: {e}")
                    finally:
                        caller.close()
        if "sessions" in c.models:
            self.run_sessions(target, protocols, device)

    def run_sessions(self, target, protocols: list[str], device: str) -> None:
        """``sam2_session``: a session started from a JPEG file, and clicks (module
        :mod:`sam2_triton.bench.sessions`), beside the engine in process."""
        from sam2_triton.bench import sessions as bs
        from sam2_triton.model_config import SESSION

        c = self.config
        try:
            target.model_info(SESSION)
        except Exception as e:  # noqa: BLE001 - a repository exported before sessions existed
            self.skip("triton sessions", f"{SESSION} not served: {e}")
            return
        w, h = c.session_image
        image = bs.photo_jpeg(w, h)
        prompts = bs.clicks((h, w))
        baselines = self._session_baselines(image, prompts, device)
        common = dict(
            config=c,
            precision=self._served_precision(),
            device=device,
            batch=1,
            image=f"{w}x{h} JPEG, {len(image)} bytes",
        )
        for protocol in (p for p in protocols if p in c.session_protocols):
            caller = bs.SessionCaller(target, protocol, image)
            try:
                empty = caller.decode([bs.NO_PROMPT], bs.EMPTY_OUTPUTS)
                cases = [
                    ("session_start", None, prompts, caller.start(), 1),
                    ("session_empty", bs.EMPTY_OUTPUTS, [bs.NO_PROMPT], empty, 1),
                ]
                for outputs in bs.DECODE_OUTPUTS:
                    for conc in c.session_concurrency:
                        make = caller.decode(prompts, outputs)
                        cases.append(("session_decode", outputs, prompts, make, conc))
                for model, outputs, sent, make, conc in cases:
                    self._describe(f"triton {protocol} {model} {outputs or ''} c{conc}")
                    processes = self.client_processes(conc) if outputs else 1
                    stats, server, cpu = self._measure_served(
                        make, 1, conc, target, [SESSION], processes
                    )
                    extra = {"protocol": protocol, "shared_memory": "none", "wire_dtype": "fp32"}
                    if outputs is not None:
                        extra["outputs"] = list(outputs)
                        extra["request_bytes"] = max(
                            bs.request_bytes(p, outputs, 2**53 - 1) for p in sent
                        )
                    result = record("triton", model, stats, concurrency=conc, **extra, **common)
                    result["server"] = server
                    result["client_cpu_cores"] = cpu
                    result["client_processes"] = processes
                    base = baselines.get((model, outputs))
                    result["baseline"] = base
                    result["ratio"] = (
                        None
                        if base is None
                        else {
                            "p50_latency": round(stats.p50 / base["latency_ms_p50"], 3),
                            "throughput": round(stats.throughput / base["throughput"], 3),
                        }
                    )
                    self.results.append(result)
            except Exception as e:  # noqa: BLE001 - report what failed, keep the rest
                self.skip(f"triton {protocol} sessions", f"{type(e).__name__}: {e}")
            finally:
                caller.close()

    def _session_baselines(self, image: bytes, prompts: list, device: str) -> dict:
        """The session engine in process, concurrency 1, on the served files and device."""
        from sam2_triton.bench import sessions as bs

        repository = self.config.repository
        if repository is None:
            self.skip("session baselines", "no --repository with the served ONNX files")
            return {}
        try:
            engine = bs.InProcessSessions(repository, device)
        except Exception as e:  # noqa: BLE001 - e.g. no torch with CUDA here
            self.skip("session baselines", f"{type(e).__name__}: {e}")
            return {}
        out: dict = {}
        calls = max(self.config.iterations, 1)
        try:
            self._describe("in-process session_start")
            start = engine.start(image)
            out[("session_start", None)] = self._baseline(start, 1, device, "session_start")
            # Where the time goes: the same calls again, each stage ended by a synchronisation.
            out[("session_start", None)]["stages_ms"] = engine.stage_profile(start, calls, False)
            if device == "cuda":  # nvJPEG against libjpeg-turbo: the start's time, the masks
                from sam2_triton.sessions.jpeg import JpegDecoder

                base = out[("session_start", None)]
                base["jpeg_on_gpu"] = engine.jpeg_agreement(image, prompts)
                engine.engine.jpeg = JpegDecoder(engine.engine.device, on_gpu=False)
                base["jpeg_on_cpu"] = self._baseline(start, 1, device, "session_start")
                base["jpeg_on_cpu"]["stages_ms"] = engine.stage_profile(start, calls, False)
                engine.engine.jpeg = JpegDecoder(engine.engine.device, on_gpu=True)
            self._describe("in-process session_empty")
            make = engine.decode(image, [bs.NO_PROMPT], bs.EMPTY_OUTPUTS)
            out[("session_empty", bs.EMPTY_OUTPUTS)] = self._baseline(
                make, 1, device, "session_empty"
            )
            for outputs in bs.DECODE_OUTPUTS:
                self._describe(f"in-process session_decode {outputs}")
                make = engine.decode(image, prompts, outputs)
                base = self._baseline(make, 1, device, "session_decode")
                base["stages_ms"] = engine.stage_profile(make, calls)
                # The engine's ceiling for a batch of sessions' clicks (one execute call).
                k = self.config.session_batch
                self._describe(f"in-process session_decode {outputs} batch {k}")
                batched = engine.decode_batch(image, prompts, outputs, k)
                stats = self._measure(batched, k)
                base["batch"] = {
                    "batch": k,
                    "latency_ms_p50": stats.p50,
                    "throughput": round(stats.throughput, 2),
                    "stages_ms": engine.stage_profile(batched, calls),
                }
                out[("session_decode", outputs)] = base
        finally:
            engine.close()
        return out

    def _triton_cases(self, caller, info, device, wire, baselines) -> None:
        from sam2_triton.model_config import DECODER, DECODER_PROMPTS, ENCODER

        c = self.config
        common = dict(
            config=c,
            precision=self._served_precision(),
            device=device,
            protocol=caller.protocol,
            shared_memory=caller.shm,
            wire_dtype=wire,
        )
        cases = []
        if "encoder" in c.models:
            for batch in c.triton_encoder_batches:
                cases.append(("encoder", batch, caller.encoder(inputs.encoder_feeds(batch)), {}))
        if "decoder" in c.models:
            for batch in c.triton_decoder_batches:
                feeds = inputs.decoder_feeds(batch, c.points)
                cases.append(("decoder", batch, caller.decoder(feeds), {"points": c.points}))
        if DECODER_PROMPTS in info:
            # The same K prompts per request as above, against one image's features sent once.
            for k in _prompt_batches(c):
                make = caller.decoder(inputs.prompt_batch_feeds(k, c.points), DECODER_PROMPTS)
                cases.append(("decoder_prompts", k, make, {"points": c.points}))
        if "interactive" in c.models:
            make = caller.interactive(inputs.encoder_feeds(1), self._clicks())
            cases.append(("interactive", 1, make, {"clicks": c.clicks, "points": c.points}))

        served = [m for m in (ENCODER, DECODER, DECODER_PROMPTS) if m in info]
        for model, batch, make, extra in cases:
            for conc in c.concurrency:
                self._describe(f"triton {caller.protocol} {caller.shm} {model} b{batch} c{conc}")
                stats, server, cpu = self._measure_served(make, batch, conc, caller.target, served)
                result = record(
                    "triton", model, stats, batch=batch, concurrency=conc, **extra, **common
                )
                result["server"] = server
                result["client_cpu_cores"] = cpu
                base = baselines.get((model, batch))
                if base is None:
                    result["baseline"] = None
                    result["ratio"] = None
                else:
                    result["baseline"] = base
                    result["ratio"] = {
                        "p50_latency": round(stats.p50 / base["latency_ms_p50"], 3),
                        "throughput": round(stats.throughput / base["throughput"], 3),
                    }
                self.results.append(result)

    def _served_precision(self) -> str:
        """Precision of the files the baseline runs: those of ``--repository``."""
        path = self._onnx_path("fp32", "encoder")
        return onnx_precision(path) if path else "unknown"

    def _triton_baselines(self, device: str) -> dict:
        """In-process ONNX Runtime on the files the server serves, on the server's device,
        without I/O binding (as the backend runs them), concurrency 1."""
        from sam2_triton.bench import ort as bort

        c = self.config
        out: dict = {}
        paths = {m: self._onnx_path("fp32", m) for m in ("encoder", "decoder")}
        if not all(paths.values()):
            self.skip("triton baselines", "no --repository with the served ONNX files")
            return out
        try:
            bort.import_onnxruntime(device)
        except (ImportError, RuntimeError) as e:
            self.skip("triton baselines", f"in-process {device} runtime unavailable: {e}")
            return out
        sessions = {m: bort.OrtSession.open(p, device) for m, p in paths.items()}
        try:
            for batch in c.triton_encoder_batches if "encoder" in c.models else ():
                self._describe(f"triton baseline encoder b{batch}")
                make = sessions["encoder"].caller(inputs.encoder_feeds(batch), False)
                out[("encoder", batch)] = self._baseline(make, batch, device, "encoder")
            for batch in c.triton_decoder_batches if "decoder" in c.models else ():
                self._describe(f"triton baseline decoder b{batch}")
                feeds = inputs.decoder_feeds(batch, c.points)
                make = sessions["decoder"].caller(feeds, False, ["masks", "iou_predictions"])
                out[("decoder", batch)] = self._baseline(make, batch, device, "decoder")
            for k in _prompt_batches(c) if "decoder" in c.models else ():
                self._describe(f"triton baseline decoder_prompts b{k}")
                feeds = inputs.prompt_batch_feeds(k, c.points)
                make = sessions["decoder"].caller(feeds, False, ["masks", "iou_predictions"])
                out[("decoder_prompts", k)] = self._baseline(make, k, device, "decoder_prompts")
            if "interactive" in c.models:
                self._describe("triton baseline interactive")
                make = bort.interactive_caller(
                    sessions["encoder"],
                    sessions["decoder"],
                    inputs.encoder_feeds(1),
                    self._clicks(),
                    False,
                )
                out[("interactive", 1)] = self._baseline(make, 1, device, "interactive")
        finally:
            for s in sessions.values():
                s.close()
        return out

    def _baseline(self, make, batch: int, device: str, model: str) -> dict:
        stats = self._measure(make, batch)
        return {
            "backend": "sam2_triton.sessions" if model.startswith("session") else "onnxruntime",
            "device": device,
            "io_binding": False,
            "concurrency": 1,
            "latency_ms_p50": stats.p50,
            "latency_ms_p99": stats.p99,
            "throughput": round(stats.throughput, 2),
            "throughput_unit": UNITS[model],
        }


def _prompt_batches(config: BenchConfig) -> list[int]:
    """The ``--triton-decoder-batches`` above 1: also measured as K prompt sets on one image
    (``sam2_decoder_prompts``)."""
    return [b for b in config.triton_decoder_batches if b > 1]


def onnx_precision(path: str | os.PathLike) -> str:
    """``"fp16"`` when most floating-point weights of the ONNX file are FP16, else ``"fp32"``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    kinds = [i.data_type for i in model.graph.initializer if i.data_type in (1, 10)]
    return "fp16" if kinds and kinds.count(10) > len(kinds) / 2 else "fp32"


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """Host, CPU and GPU of this run."""
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = _run(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
            "--format=csv,noheader",
        ]
    )
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": gpu or None,
    }


def versions() -> dict:
    """Versions of everything that shapes the numbers."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in (
        "numpy",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "torch",
        "sam2",
        "tritonclient",
        "nvidia-pytriton",
        "sam2-triton",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        import onnxruntime

        out["onnxruntime_module"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import torch

        out["torch_cuda"] = torch.version.cuda
    except ImportError:
        pass
    return out
