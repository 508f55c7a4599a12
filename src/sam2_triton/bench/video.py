"""Video benchmark: frames/s of ``sam2_video`` served by Triton beside Meta's predictor in-process.

``scripts/benchmark_video.py`` (see ``--help``) measures, on one machine:

* **served**: a Triton with ``sam2_video`` (started here on a repository of its own, or a
  running one with ``--url``); for 1 and 4 objects and 1 and 4 concurrent videos, each video
  sends its frames (JPEG files, a few per request), prompts its objects with a click each on
  frame 0 and propagates through all frames. Frames/s of the propagation (what Meta's
  published figure measures: frames already loaded) per video and in total, and end to end
  (sending frames + prompts + propagation);
* **engine in-process**: the server's own tracker (:class:`~sam2_triton.sessions.video.
  VideoSessionEngine`) in this process, without Triton, fed as the client feeds the server,
  with the image encoder run on one frame at a time and the objects tracked one at a time
  (``feature_batch`` 1, as Meta's predictor), and with batches of ``--feature-batch`` frames
  and of objects (as served): what batching gives, and what the wire costs;
* **Meta in-process**: ``SAM2VideoPredictor`` on a folder of the same JPEG frames
  (``init_state`` then the same prompts and ``propagate_in_video``), with bfloat16 autocast
  on a GPU as Meta's own benchmark (``sam2/benchmark.py``) runs it;
* optionally (``--export-study``) whether the video networks export to ONNX, and their
  parity and CPU speed against PyTorch (:mod:`sam2_triton.bench.video_export`).

Results go to ``DIR/results.json`` and ``DIR/results.md``. Nothing needs the network: without
``--checkpoint`` a seeded random-init checkpoint of ``--model`` is made (speed does not
depend on the weights' values). The frames are shifted crops of a scikit-image photo,
scaled to ``--height``×``--width``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sam2_triton.model_config import TORCH_COMPILE_MODES, VideoServing
from sam2_triton.models import MODEL_SIZES, UserError, get_model_size

EPILOG = """\
examples:
  # H100, base_plus: served (4 GPU instances, bfloat16) and Meta's predictor, same machine
  %(prog)s --model base_plus --device gpu --out docs/benchmarks/h100/video
  # CPU smoke run (minutes): tiny at 256 px, a few frames
  %(prog)s --quick --out bench_results/video
  # against a running server (its sam2_video config decides instances and precision)
  %(prog)s --url localhost:8001 --protocol grpc --model base_plus --no-meta
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark_video.py",
        description="Frames/s of SAM2.1 video tracking served by Triton (sam2_video) for 1 and "
        "4 objects and 1 and 4 concurrent videos, beside Meta's SAM2VideoPredictor in-process.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", choices=list(MODEL_SIZES), help="default base_plus (tiny: --quick)")
    p.add_argument("--checkpoint", type=Path, help="default: a seeded random-init one")
    p.add_argument("--device", choices=("gpu", "cpu"), default=None, help="default: gpu if any")
    p.add_argument(
        "--precision",
        choices=("bfloat16", "float32"),
        help="default: bfloat16 on a GPU (as Meta's benchmark), float32 on the CPU",
    )
    p.add_argument("--image-size", type=int, help="model input side (default 1024; --quick 256)")
    p.add_argument("--frames", type=int, help="frames per video (default 64; --quick 4)")
    p.add_argument("--height", type=int, help="frame height (default 540; --quick 256)")
    p.add_argument("--width", type=int, help="frame width (default 960; --quick 320)")
    p.add_argument("--objects", help="object counts to measure (default 1,4; --quick 1,2)")
    p.add_argument("--videos", help="concurrent videos to measure (default 1,4; --quick 1,2)")
    p.add_argument("--instances", type=int, help="sam2_video instances (default: the config's)")
    p.add_argument(
        "--torch-compile",
        choices=TORCH_COMPILE_MODES,
        help="compile the tracker's networks as Meta's SAM2VideoPredictorVOS, in this "
        "torch.compile mode, on every side (default: the config's, GPU "
        f"{VideoServing.torch_compile}, CPU and --quick none)",
    )
    p.add_argument(
        "--vos-optimized",
        action="store_const",
        const="max-autotune",
        dest="torch_compile",
        help="Meta's own VOS variant: --torch-compile max-autotune",
    )
    p.add_argument("--url", help="a running Triton (HOST:PORT); default: start one here")
    p.add_argument("--protocol", choices=("http", "grpc"), default="grpc")
    p.add_argument("--frames-per-request", type=int, default=8)
    p.add_argument("--frames-per-response", type=int, default=8)
    p.add_argument(
        "--feature-batch",
        type=int,
        default=VideoServing.feature_batch,
        help="frames per run of the image encoder in a propagation (served; default %(default)s)",
    )
    p.add_argument(
        "--idle-wait",
        type=float,
        default=12.0,
        help="on a GPU, seconds to wait after the served runs before reading the GPU's memory "
        "again: sam2_video gives a propagation's cached memory back once idle for its "
        "memory_release_idle_s (default 5 s); 0: do not wait (default %(default)s)",
    )
    p.add_argument("--no-engine", action="store_true", help="skip the engine in-process")
    p.add_argument(
        "--engine-repeats",
        type=int,
        help="runs per engine case, the median kept (default 3; --quick 1)",
    )
    p.add_argument("--no-meta", action="store_true", help="skip Meta's predictor in-process")
    p.add_argument("--no-served", action="store_true", help="skip the served runs")
    p.add_argument("--export-study", action="store_true", help="also the ONNX export study")
    p.add_argument(
        "--quick", action="store_true", help="other defaults for a CPU smoke run (see above)"
    )
    p.add_argument("--out", type=Path, default=Path("bench_results/video"))
    return p


@dataclasses.dataclass
class VideoBenchConfig:
    model: str
    device: str
    precision: str
    image_size: int
    frames: int
    height: int
    width: int
    objects: tuple[int, ...]
    videos: tuple[int, ...]
    instances: int | None
    torch_compile: str
    protocol: str
    frames_per_request: int
    frames_per_response: int
    feature_batch: int = VideoServing.feature_batch
    engine_repeats: int = 3


def _counts(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--{what} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"--{what} counts must be ≥ 1")
    return values


#: Defaults of the options above, and of ``--quick``.
DEFAULTS = {
    "model": "base_plus",
    "image_size": 0,
    "frames": 64,
    "height": 540,
    "width": 960,
    "objects": "1,4",
    "videos": "1,4",
    "engine_repeats": 3,
}
QUICK = {
    "model": "tiny",
    "image_size": 256,
    "frames": 4,
    "height": 256,
    "width": 320,
    "objects": "1,2",
    "videos": "1,2",
    "engine_repeats": 1,
}


def config_from_args(args: argparse.Namespace) -> VideoBenchConfig:
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = args.device
    if device is None:
        import torch

        device = "gpu" if torch.cuda.is_available() else "cpu"
    precision = args.precision or ("bfloat16" if device == "gpu" else "float32")
    compiled_by_default = device == "gpu" and not args.quick  # --quick: a smoke run
    torch_compile = args.torch_compile or (
        VideoServing.torch_compile if compiled_by_default else "none"
    )
    if device == "cpu" and (precision != "float32" or torch_compile != "none"):
        raise UserError("on the CPU the tracker runs float32, without --torch-compile")
    for flag in ("feature_batch", "engine_repeats"):
        if getattr(args, flag) < 1:
            name = "--" + flag.replace("_", "-")
            raise UserError(f"{name} must be ≥ 1, got {getattr(args, flag)}")
    return VideoBenchConfig(
        model=get_model_size(args.model).name,
        device=device,
        precision=precision,
        image_size=args.image_size,
        frames=args.frames,
        height=args.height,
        width=args.width,
        objects=_counts(args.objects, "objects"),
        videos=_counts(args.videos, "videos"),
        instances=args.instances,
        torch_compile=torch_compile,
        protocol=args.protocol,
        frames_per_request=args.frames_per_request,
        frames_per_response=args.frames_per_response,
        feature_batch=args.feature_batch,
        engine_repeats=args.engine_repeats,
    )


# --- inputs -------------------------------------------------------------------------------------


def make_frames(count: int, height: int, width: int, seed: int = 0) -> list[bytes]:
    """``count`` JPEG frames of ``height``×``width``: a photo scaled to cover the frame with
    room to move, cropped a few pixels further each frame."""
    from PIL import Image

    from sam2_triton.testing import photos

    photo = list(photos().values())[seed % 3]
    step = (1, 2)
    need_h, need_w = height + (count - 1) * step[0], width + (count - 1) * step[1]
    scale = max(need_h / photo.shape[0], need_w / photo.shape[1], 1.0)
    big = Image.fromarray(photo).resize(
        (int(np.ceil(photo.shape[1] * scale)), int(np.ceil(photo.shape[0] * scale)))
    )
    pixels = np.asarray(big)
    frames = []
    for i in range(count):
        crop = pixels[i * step[0] : i * step[0] + height, i * step[1] : i * step[1] + width]
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(crop)).save(buffer, "JPEG", quality=90)
        frames.append(buffer.getvalue())
    return frames


def object_clicks(objects: int, height: int, width: int) -> list[list[float]]:
    """One click per object, spread over the frame's middle row."""
    return [[width * (i + 1) / (objects + 1), height / 2] for i in range(objects)]


# --- served ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def served(config: VideoBenchConfig, checkpoint: Path, url: str | None, workdir: Path, out: Path):
    """``(url, description)`` of the server to measure: ``url`` as it is, or an embedded
    Triton with ``sam2_video`` alone, configured from ``config``, whose log is copied to
    ``out/tritonserver.log`` when it stops (also when it never got ready)."""
    if url is not None:
        yield url, {"url": url, "started_here": False}
        return
    from sam2_triton import model_config as mc
    from sam2_triton.model_config import write_video_repository
    from sam2_triton.server import EmbeddedTriton, free_port, visible_gpu_count

    base = (
        mc.RepositoryParams(model_size=config.model)
        if config.device == "gpu"
        else mc.RepositoryParams.cpu_defaults(config.model)
    )
    concurrent = max(config.videos)
    video = dataclasses.replace(
        base.video,
        precision=config.precision,
        image_size=config.image_size,
        torch_compile=config.torch_compile,
        max_frames=max(base.video.max_frames, config.frames),
        max_objects=max(base.video.max_objects, max(config.objects)),
        max_videos=max(base.video.max_videos, concurrent),
        instance_count=config.instances or base.video.instance_count,
        feature_batch=config.feature_batch,
    )
    params = dataclasses.replace(base, video=video)
    repo = write_video_repository(workdir / "repository", checkpoint, params)
    server = EmbeddedTriton(
        repository=repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        exit_timeout_s=5,
        # As serve_local runs sam2_video alone: it answers from host memory, so Triton's CUDA
        # pool would be GPU memory never used.
        cuda_memory_pool_mb=0 if config.device == "gpu" else None,
    )
    log = workdir / "tritonserver.log"
    with open(log, "w") as stream:
        server.start(stdout=stream, stderr=stream)
        try:
            ready = server.wait_ready(timeout=900)
            target = server.grpc_url if config.protocol == "grpc" else server.http_url
            yield target, {
                "started_here": True,
                "ready_seconds": round(ready, 1),
                # Triton places this many instances on each GPU it sees.
                "instances": video.instance_count,
                "gpus": visible_gpu_count() if config.device == "gpu" else 0,
                "precision": video.precision,
                "feature_batch": video.feature_batch,
            }
        finally:
            server.stop()
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, out / "tritonserver.log")


def track_one_video(
    url: str, config: VideoBenchConfig, frames: list[bytes], objects: int, barrier
) -> dict:
    """One video through the client: send, prompt, propagate; seconds of each phase."""
    from sam2_triton.client import Sam2Client

    with (
        Sam2Client(url, config.protocol, timeout_s=600) as client,
        client.video_session(frames_per_request=config.frames_per_request) as video,
    ):
        if barrier is not None:
            barrier.wait(timeout=600)
        t0 = time.perf_counter()
        video.add_frames(frames)
        t1 = time.perf_counter()
        for i, click in enumerate(object_clicks(objects, config.height, config.width)):
            video.add_prompt(0, i + 1, points=[click])
        t2 = time.perf_counter()
        tracked = sum(1 for _ in video.propagate(frames_per_response=config.frames_per_response))
        t3 = time.perf_counter()
    return {
        "send": t1 - t0,
        "prompt": t2 - t1,
        "propagate": t3 - t2,
        "frames": tracked,
        "start": t0,
        "propagate_start": t2,
        "end": t3,
    }


def run_served(config: VideoBenchConfig, url: str, frames: list[bytes]) -> list[dict]:
    """Each case through the client; beside the client's figures, Triton's own statistics of
    ``sam2_video`` over the case (:func:`~sam2_triton.bench.triton.server_breakdown`: mean
    milliseconds per request in the queue, copying inputs, in model.py, handing outputs
    back), so that the server's share of a served frame can be told from the wire's."""
    from sam2_triton.bench.triton import TritonTarget, server_breakdown, server_statistics
    from sam2_triton.model_config import VIDEO

    target = TritonTarget(**{f"{config.protocol}_url": url})
    results = []
    track_one_video(url, config, frames[: min(4, len(frames))], 1, None)  # warm-up
    for objects in config.objects:
        for videos in config.videos:
            barrier = threading.Barrier(videos) if videos > 1 else None
            one = functools.partial(track_one_video, url, config, frames, objects, barrier)
            before = server_statistics(target, [VIDEO])
            with ThreadPoolExecutor(videos) as pool:
                out = [f.result() for f in [pool.submit(one) for _ in range(videos)]]
            server = server_breakdown(before, server_statistics(target, [VIDEO])).get(VIDEO, {})
            total_frames = sum(o["frames"] for o in out)
            propagation_wall = max(o["end"] for o in out) - min(o["propagate_start"] for o in out)
            wall = max(o["end"] for o in out) - min(o["start"] for o in out)
            results.append(
                {
                    "backend": "served",
                    "objects": objects,
                    "videos": videos,
                    "frames_per_video": out[0]["frames"],
                    "propagate_fps_per_video": round(
                        statistics.mean(o["frames"] / o["propagate"] for o in out), 2
                    ),
                    "propagate_fps_total": round(total_frames / propagation_wall, 2),
                    "end_to_end_fps_total": round(total_frames / wall, 2),
                    "send_seconds_per_video": round(statistics.mean(o["send"] for o in out), 3),
                    "prompt_seconds_per_video": round(statistics.mean(o["prompt"] for o in out), 3),
                    "server": server,
                }
            )
            print(f"served: {results[-1]}", flush=True)
    return results


# --- the engine in-process ---------------------------------------------------------------------


def track_in_process(
    engine,
    objects: int,
    masks: list | None = None,
    *,
    frames: list[bytes],
    height: int,
    width: int,
    frames_per_request: int,
) -> dict:
    """One video through ``engine`` (a :class:`~sam2_triton.sessions.video.VideoSessionEngine`)
    as the client feeds the server: its ``frames`` (JPEG files of ``height``×``width``) in
    requests of ``frames_per_request``, one click per object on frame 0 (:func:`object_clicks`),
    then propagations until every frame is tracked, then the end. Seconds of each phase and
    the frames tracked; the propagations' ``[O, H, W]`` masks of each frame are appended to
    ``masks`` if given."""
    from sam2_triton.sessions.video import VideoRequest

    def call(request: VideoRequest):
        (answer,) = engine.execute([request])
        if isinstance(answer, Exception):
            raise answer
        return answer

    t0 = time.perf_counter()
    for i in range(0, len(frames), frames_per_request):
        call(VideoRequest(0, start=i == 0, frames=frames[i : i + frames_per_request]))
    t1 = time.perf_counter()
    for i, click in enumerate(object_clicks(objects, height, width)):
        call(VideoRequest(0, frame_index=0, object_id=i + 1, points=[click], labels=[1]))
    t2 = time.perf_counter()
    tracked, start = 0, None
    while tracked < len(frames):
        answer = call(VideoRequest(0, propagate=True, start_frame=start))
        if not len(answer.frame_indices):
            break
        tracked += len(answer.frame_indices)
        start = int(answer.frame_indices[-1]) + 1
        if masks is not None:
            masks.extend(answer.masks)
    t3 = time.perf_counter()
    call(VideoRequest(0, end=True))
    return {"frames": tracked, "send": t1 - t0, "prompt": t2 - t1, "propagate": t3 - t2}


def run_engine(config: VideoBenchConfig, checkpoint: Path, frames: list[bytes]) -> list[dict]:
    """The server's tracker in this process, 1 video at a time, fed as the client feeds the
    server (frames and propagations in the same chunks), with ``feature_batch`` 1 (objects
    one at a time, as Meta's predictor) and ``config.feature_batch`` (objects batched)."""
    import torch

    from sam2_triton.sessions.video import (
        VideoLimits,
        VideoSessionEngine,
        build_video_predictor,
    )

    device = torch.device("cuda" if config.device == "gpu" else "cpu")
    predictor = build_video_predictor(
        get_model_size(config.model),
        checkpoint,
        device,
        image_size=config.image_size,
        torch_compile=config.torch_compile,
        precision=config.precision,
    )
    limits = VideoLimits(
        max_frames=max(VideoLimits.max_frames, len(frames)),
        max_objects=max(VideoLimits.max_objects, max(config.objects)),
        max_frames_per_request=config.frames_per_request,
        max_frames_per_response=config.frames_per_response,
    )
    # feature_batch 1 is Meta's way on both counts: frames encoded one at a time, objects
    # tracked one at a time; the other engine batches both (as served).
    engines = {
        b: VideoSessionEngine(
            predictor,
            device,
            dataclasses.replace(limits, feature_batch=b, batch_objects=b > 1),
            precision=config.precision,
        )
        for b in dict.fromkeys((1, config.feature_batch))
    }

    track = functools.partial(
        track_in_process,
        frames=frames,
        height=config.height,
        width=config.width,
        frames_per_request=config.frames_per_request,
    )

    started = time.perf_counter()
    for engine in engines.values():  # warm-up (with --torch-compile: the compilation)
        track(engine, 1)
    warmup_seconds = round(time.perf_counter() - started, 1)
    results = []
    for objects in config.objects:
        # The feature batches take turns, run after run: a drift of the machine's speed
        # (clocks, neighbours) then reaches both alike; each figure is the median run.
        runs: dict[int, list[dict]] = {b: [] for b in engines}
        for _ in range(config.engine_repeats):
            for b, engine in engines.items():
                runs[b].append(track(engine, objects))
        for b, done in runs.items():
            median = sorted(done, key=lambda r: r["propagate"])[len(done) // 2]
            results.append(
                {
                    "backend": f"engine_in_process_feature_batch_{b}",
                    "objects": objects,
                    "batch_objects": engines[b].object_batches is not None,
                    "videos": 1,
                    "frames_per_video": median["frames"],
                    "propagate_fps_per_video": round(median["frames"] / median["propagate"], 2),
                    "propagate_fps_total": round(median["frames"] / median["propagate"], 2),
                    "propagate_fps_runs": [round(r["frames"] / r["propagate"], 2) for r in done],
                    "end_to_end_fps_total": round(
                        median["frames"]
                        / (median["send"] + median["prompt"] + median["propagate"]),
                        2,
                    ),
                    "send_seconds_per_video": round(median["send"], 3),
                    "prompt_seconds_per_video": round(median["prompt"], 3),
                    "warmup_seconds": warmup_seconds,
                }
            )
    if config.torch_compile != "none":
        agreement = compiled_against_eager(
            config, checkpoint, engines[config.feature_batch], track, max(config.objects)
        )
        print(f"engine: compiled against eager: {agreement}", flush=True)
        for r in results:
            r["compiled_vs_eager"] = agreement
    for engine in engines.values():
        engine.close()
    for r in results:
        print(f"engine: {r}", flush=True)
    return results


def compiled_against_eager(config, checkpoint: Path, compiled, track, objects: int) -> dict:
    """How far the compiled tracker's masks are from the eager one's (Meta's predictor as
    built), the same video and clicks: per frame and object the IoU of the two masks, and
    the share of pixels that differ over the whole video."""
    import torch

    from sam2_triton.sessions.video import VideoSessionEngine, build_video_predictor

    eager = VideoSessionEngine(
        build_video_predictor(
            get_model_size(config.model),
            checkpoint,
            torch.device("cuda"),
            image_size=config.image_size,
            precision=config.precision,
        ),
        torch.device("cuda"),
        dataclasses.replace(compiled.limits, batch_objects=False),  # as compiled: one by one
        precision=config.precision,
    )
    ours: list = []
    theirs: list = []
    track(compiled, objects, ours)
    track(eager, objects, theirs)
    eager.close()
    a, b = np.stack(ours).astype(bool), np.stack(theirs).astype(bool)  # [F, O, H, W]
    union = (a | b).sum(axis=(2, 3))
    iou = np.where(union > 0, (a & b).sum(axis=(2, 3)) / np.maximum(union, 1), 1.0)
    return {
        "objects": objects,
        "frames": int(a.shape[0]),
        "min_iou": round(float(iou.min()), 4),
        "mean_iou": round(float(iou.mean()), 4),
        "pixels_differing": round(float((a != b).mean()), 6),
        "mask_pixels_eager": round(float(b.mean()), 4),
    }


# --- Meta in-process --------------------------------------------------------------------------


def run_meta(config: VideoBenchConfig, checkpoint: Path, frames: list[bytes], workdir: Path):
    """Meta's predictor on a JPEG folder of the frames, 1 video at a time (one process)."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from sam2_triton.sessions.video import META_COMPILE_MODE, compile_video_predictor

    size = get_model_size(config.model)
    folder = workdir / "frames"
    folder.mkdir(exist_ok=True)
    for i, data in enumerate(frames):
        (folder / f"{i:05d}.jpg").write_bytes(data)
    device = "cuda" if config.device == "gpu" else "cpu"
    overrides = [f"++model.image_size={config.image_size}"] if config.image_size else []
    predictor = build_sam2_video_predictor(
        size.config,
        str(checkpoint),
        device=device,
        hydra_overrides_extra=overrides,
        vos_optimized=config.torch_compile == META_COMPILE_MODE,
    )
    compile_video_predictor(predictor, config.torch_compile)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if config.precision == "bfloat16"
        else contextlib.nullcontext()
    )
    if config.precision == "bfloat16":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results = []
    with torch.inference_mode(), autocast:
        for objects in (1, *config.objects):  # the first run warms up
            t0 = time.perf_counter()
            state = predictor.init_state(str(folder))
            t1 = time.perf_counter()
            for i, click in enumerate(object_clicks(objects, config.height, config.width)):
                predictor.add_new_points_or_box(state, 0, i + 1, points=[click], labels=[1])
            t2 = time.perf_counter()
            tracked = 0
            for _ in predictor.propagate_in_video(state):
                tracked += 1
            if device == "cuda":
                torch.cuda.synchronize()
            t3 = time.perf_counter()
            results.append(
                {
                    "backend": "meta_in_process",
                    "objects": objects,
                    "videos": 1,
                    "frames_per_video": tracked,
                    "propagate_fps_per_video": round(tracked / (t3 - t2), 2),
                    "propagate_fps_total": round(tracked / (t3 - t2), 2),
                    "end_to_end_fps_total": round(tracked / (t3 - t0), 2),
                    "init_state_seconds": round(t1 - t0, 3),
                    "prompt_seconds_per_video": round(t2 - t1, 3),
                    "warmup_seconds": round(t3 - t0, 1) if not results else None,
                }
            )
            del state
    warmup, *results = results
    for r in results:  # the first run's seconds (with --torch-compile: the compilation)
        r["warmup_seconds"] = warmup["warmup_seconds"]
    for r in results:
        print(f"meta: {r}", flush=True)
    return results


# --- report ---------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    c, m = report["config"], report["machine"]
    lines = [
        f"# SAM2.1 video benchmark ({c['model']}, {c['precision']}, "
        f"{c['image_size'] or 1024} px) — {report['created']}",
        "",
        f"- machine: {m.get('gpu') or 'no GPU'}; CPU {m.get('cpu')} ({m.get('cpu_count')} "
        "threads)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- video: {c['frames']} frames of {c['width']}x{c['height']} (JPEG), one click per "
        "object on frame 0, propagated forward through every frame",
        "- server: "
        + ", ".join(f"{k} {v}" for k, v in (report.get("server") or {"none": ""}).items()),
        "",
        "| backend | objects | videos | propagation frames/s per video | propagation frames/s "
        "total | end-to-end frames/s total |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['backend']} | {r['objects']} | {r['videos']} | {r['propagate_fps_per_video']} "
            f"| {r['propagate_fps_total']} | {r['end_to_end_fps_total']} |"
        )
    served = [r for r in report["results"] if r.get("server")]
    if served:
        lines += [
            "",
            "Triton's statistics of `sam2_video` over each served case, mean ms per request:",
            "",
            "| objects | videos | requests | queue | compute input | compute infer (model.py) "
            "| compute output |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in served:
            t = r["server"]
            lines.append(
                f"| {r['objects']} | {r['videos']} | {t['requests']} | {t['queue_ms']} | "
                f"{t['compute_input_ms']} | {t['compute_infer_ms']} | {t['compute_output_ms']} |"
            )
    agreement = next(
        (r["compiled_vs_eager"] for r in report["results"] if "compiled_vs_eager" in r), None
    )
    if agreement:
        lines += [
            "",
            f"Compiled ({c['torch_compile']}) against eager, the engine's masks over the same "
            "video: " + ", ".join(f"{k} {v}" for k, v in agreement.items()),
        ]
    if report.get("export_study"):
        from sam2_triton.bench.video_export import markdown as study_markdown

        lines += ["", study_markdown(report["export_study"])]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from sam2_triton.bench.report import write_json
    from sam2_triton.bench.suite import machine_info, versions
    from sam2_triton.files import write_text_atomic

    # Meta's loader and propagate_in_video draw progress bars on every call (tqdm reads this
    # when first imported, which is below).
    os.environ.setdefault("TQDM_DISABLE", "1")
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    report: dict = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": dataclasses.asdict(config),
        "machine": machine_info(),
        "versions": versions(),
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="sam2-video-bench-") as tmp:
        workdir = Path(tmp)
        checkpoint = args.checkpoint or _random_checkpoint(config.model, workdir)
        frames = make_frames(config.frames, config.height, config.width)
        if not args.no_served:
            with served(config, checkpoint, args.url, workdir, args.out) as (url, server):
                report["server"] = server
                gpu = config.device == "gpu"
                loaded = server_mib_by_gpu() if gpu else None
                report["results"] += run_served(config, url, frames)
                if loaded is not None:  # what the server holds on each GPU, loaded and after
                    memory = {"loaded": loaded, "after": server_mib_by_gpu()}
                    if args.idle_wait > 0:
                        time.sleep(args.idle_wait)
                        memory[f"after_{args.idle_wait:g}_s_idle"] = server_mib_by_gpu()
                    server["server_mib_by_gpu"] = memory
            if server.get("started_here"):  # its idle releases, from the log copied to out
                log = (args.out / "tritonserver.log").read_text(errors="replace")
                server["memory_releases"] = [
                    line.strip() for line in log.splitlines() if ": idle: gave back " in line
                ]
        if not args.no_engine:
            report["results"] += run_engine(config, checkpoint, frames)
        if not args.no_meta:
            report["results"] += run_meta(config, checkpoint, frames, workdir)
        if args.export_study:
            from sam2_triton.bench.video_export import export_study

            report["export_study"] = export_study()
    json_path = write_json(report, args.out / "results.json")
    md_path = write_text_atomic(args.out / "results.md", markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


def server_mib_by_gpu() -> dict[int, int]:
    """GPU memory of every process but this one (the server and its stubs), MiB by GPU, as
    nvidia-smi counts it: what this process's own CUDA context holds is not in it."""
    from sam2_triton.bench.profile import device_mib_by_process_and_gpu

    by_gpu: dict[int, int] = {}
    for (pid, gpu), mib in device_mib_by_process_and_gpu().items():
        if pid != os.getpid():
            by_gpu[gpu] = by_gpu.get(gpu, 0) + mib
    return by_gpu


def _random_checkpoint(model: str, workdir: Path) -> Path:
    from sam2_triton.testing import save_random_checkpoint

    size = get_model_size(model)
    return save_random_checkpoint(model, workdir / size.checkpoint_file, object_score_bias=20.0)


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)
