"""``video_client``: track objects through a video on a running sam2-triton server.

A thin layer over :class:`sam2_triton.client.Sam2VideoSession`: read the prompts file, send
the video's frames (a folder's JPEG/PNG files as they are, a video file's frames decoded by
OpenCV as lossless PNGs), add every prompt, propagate once forward from the first prompted
frame (as Meta's predictor does when every prompt comes before ``propagate_in_video``), and
write ``DIR/<object id>/<frame index, 5 digits>.png`` (0/255, original size) for every
frame from there on, optionally an overlay video. Every mistake a user can fix is one
``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam2_triton.cli import ArgumentParser
from sam2_triton.model_config import VIDEO
from sam2_triton.models import UserError

EPILOG = """\
examples:
  %(prog)s --video frames/ --prompts prompts.json --output masks/
  %(prog)s --video clip.mp4 --prompts prompts.json --output masks/ --visualize overlay.mp4
  %(prog)s --video frames/ --prompts prompts.json --output masks/ --protocol grpc \\
      --url localhost:8001

PATH is a video file OpenCV reads, or a folder of JPEG/PNG frames taken in name order
(numbers in names compare as numbers: frame2 before frame10). PROMPTS.json is a list of
  {"frame": 0, "object_id": 1, "points": [[x, y], ...], "labels": [1, 0, ...]}
  {"frame": 3, "object_id": 2, "box": [x0, y0, x1, y1]}
(points and a box may be combined; labels default to all 1) in pixels of the frames as
stored: like Meta's video predictor, no EXIF orientation is applied. Every prompt is added,
then the objects are tracked forward once from the first prompted frame.
"""

#: Frame files a folder may hold (case-insensitive).
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Overlay colours (RGB) of the objects, in the order of their ids.
OBJECT_COLOURS = (
    (30, 144, 255),
    (255, 99, 71),
    (50, 205, 50),
    (255, 215, 0),
    (186, 85, 211),
    (0, 206, 209),
    (255, 140, 0),
    (255, 105, 180),
)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="video_client.py",
        description="Track objects through a video with SAM2.1 served by Triton (sam2_video): "
        "prompts on any frames in, a mask PNG per object and frame out.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--video", required=True, type=Path, metavar="PATH", help="file or folder")
    p.add_argument("--prompts", required=True, type=Path, metavar="PROMPTS.json")
    p.add_argument("--output", required=True, type=Path, metavar="DIR", help="mask PNGs")
    p.add_argument("--url", default="localhost:8000", help="Triton HOST:PORT (default %(default)s)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument(
        "--visualize", type=Path, metavar="OUT.mp4", help="the frames with the masks drawn"
    )
    p.add_argument(
        "--fps", type=float, help="frame rate of --visualize (default: the video's, or 30)"
    )
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait for the server")
    p.add_argument(
        "--timeout", type=float, default=300.0, metavar="SECONDS", help="per-request timeout"
    )
    p.add_argument(
        "--frames-per-request",
        type=int,
        default=8,
        metavar="N",
        help="frames sent per request (default %(default)s)",
    )
    p.add_argument(
        "--frames-per-response",
        type=int,
        default=8,
        metavar="N",
        help="frames tracked per request (default %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print a summary as JSON")
    return p


# --- prompts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoPrompt:
    """One entry of the prompts file."""

    frame: int
    object_id: int
    points: Any = None
    labels: Any = None
    box: Any = None


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{what} must be an integer, got {value!r}")
    return value


def read_prompts(path: Path) -> list[VideoPrompt]:
    """The prompts file as :class:`VideoPrompt` entries (structure checked; coordinates are
    checked against the frames once their size is known)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read prompts file {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"prompts file {path} is not valid JSON: {e}") from None
    if not isinstance(data, list) or not data:
        raise UserError(f"prompts file {path} must hold a non-empty list of prompts")
    prompts = []
    for i, entry in enumerate(data):
        where = f"prompt {i} in {path}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} must be an object, got {entry!r}")
        unknown = set(entry) - {"frame", "object_id", "points", "labels", "box"}
        if unknown:
            raise UserError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
        for key in ("frame", "object_id"):
            if key not in entry:
                raise UserError(f"{where} needs {key!r}")
        frame = _integer(entry["frame"], f"{where}: frame")
        if frame < 0:
            raise UserError(f"{where}: frame must be ≥ 0, got {frame}")
        object_id = _integer(entry["object_id"], f"{where}: object_id")
        if not -(2**31) <= object_id < 2**31:
            raise UserError(f"{where}: object_id must fit in 32 bits, got {object_id}")
        if entry.get("points") is None and entry.get("box") is None:
            raise UserError(f"{where} needs points or a box")
        prompts.append(
            VideoPrompt(
                frame, object_id, entry.get("points"), entry.get("labels"), entry.get("box")
            )
        )
    return prompts


# --- the video --------------------------------------------------------------------------------


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class VideoSource:
    """A video file (OpenCV) or a folder of frame files: frames to send, frames to draw on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise UserError(f"video not found: {path}")
        self.files: list[Path] | None = None
        self.fps = 30.0
        if path.is_dir():
            self.files = sorted(
                (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
                key=_natural_key,
            )
            if not self.files:
                raise UserError(f"no frames in {path} (JPEG or PNG files)")
        else:
            capture = self._open()
            fps = capture.get(5)  # cv2.CAP_PROP_FPS
            capture.release()
            if fps and np.isfinite(fps) and fps > 0:
                self.fps = float(fps)

    def frame_size(self) -> tuple[int, int]:
        """``(H, W)`` of the first frame (from a file's header; a video's first frame)."""
        if self.files is None:
            first = next(self._decoded())
            return int(first.shape[0]), int(first.shape[1])
        from PIL import Image

        try:
            with Image.open(self.files[0]) as img:
                w, h = img.size
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for a bad file
            raise UserError(f"cannot read frame {self.files[0]}: {e}") from None
        return h, w

    def _open(self):
        import cv2

        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise UserError(f"cannot read video {self.path}: not a video file OpenCV can open")
        return capture

    def _decoded(self) -> Iterator[np.ndarray]:
        """The video file's frames, RGB."""
        capture = self._open()
        try:
            count = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                count += 1
                yield np.ascontiguousarray(bgr[..., ::-1])
            if count == 0:
                raise UserError(f"cannot read video {self.path}: no frame could be decoded")
        finally:
            capture.release()

    def encoded(self) -> Iterator[bytes]:
        """Each frame as the file to send: a folder's files as they are, a video's frames as
        lossless PNGs (the server then sees exactly the pixels OpenCV decoded)."""
        from sam2_triton.client.outputs import encode_png

        if self.files is not None:
            for path in self.files:
                try:
                    yield path.read_bytes()
                except OSError as e:
                    raise UserError(f"cannot read frame {path}: {e.strerror or e}") from None
        else:
            for rgb in self._decoded():
                yield encode_png(rgb)

    def pictures(self, start: int) -> Iterator[np.ndarray]:
        """RGB frames from ``start`` on, as the server decoded them (no EXIF orientation)."""
        if self.files is None:
            for index, rgb in enumerate(self._decoded()):
                if index >= start:
                    yield rgb
            return
        from PIL import Image

        for path in self.files[start:]:
            with Image.open(path) as img:
                yield np.asarray(img.convert("RGB"))


def overlay_objects(rgb: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``rgb`` with each object's mask (``[O, H, W]`` bool) tinted and outlined in its colour."""
    import cv2

    out = rgb.copy()
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        colour = OBJECT_COLOURS[i % len(OBJECT_COLOURS)]
        region = out[mask].astype(np.float32)
        out[mask] = (region * (1 - alpha) + np.asarray(colour, np.float32) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, colour, 2)
    return out


class OverlayWriter:
    """An MP4 (``mp4v``) written to a temporary name beside ``path`` and renamed onto it only
    when complete, so an interrupted run never leaves a truncated video."""

    def __init__(self, path: Path, fps: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fps = fps
        self.tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix or '.mp4'}")
        self.writer = None

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            h, w = rgb.shape[:2]
            self.writer = cv2.VideoWriter(
                str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h)
            )
            if not self.writer.isOpened():
                raise UserError(f"cannot write {self.path}: OpenCV has no MP4 writer here")
        self.writer.write(np.ascontiguousarray(rgb[..., ::-1]))

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.release()
            os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.tmp.unlink(missing_ok=True)


# --- main ---------------------------------------------------------------------------------------


def _bar(total: int | None, desc: str, unit: str, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False)


def main(argv: Sequence[str] | None = None) -> int:
    from sam2_triton.client import Sam2Client, make_prompt
    from sam2_triton.client.outputs import save_mask_png

    args = build_parser().parse_args(argv)
    if args.frames_per_request < 1 or args.frames_per_response < 1:
        raise UserError("--frames-per-request and --frames-per-response must be ≥ 1")
    t0 = time.perf_counter()
    prompts = read_prompts(args.prompts)
    source = VideoSource(args.video)
    size = source.frame_size()
    for i, prompt in enumerate(prompts):  # before anything is sent: a typo costs no upload
        try:
            make_prompt(size, prompt.points, prompt.labels, prompt.box)
        except UserError as e:
            raise UserError(f"prompt {i}: {e}") from None
    if source.files is not None:
        last = max(p.frame for p in prompts)
        if last >= len(source.files):
            raise UserError(
                f"a prompt is on frame {last}, but {args.video} has {len(source.files)} frames "
                f"(0 to {len(source.files) - 1})"
            )
    quiet = args.no_progress
    with Sam2Client(args.url, args.protocol, timeout_s=args.timeout) as client:
        if args.wait > 0:
            client.wait_until_ready(args.wait, models=(VIDEO,))
        else:
            client.check_ready(models=(VIDEO,))
        with client.video_session(frames_per_request=args.frames_per_request) as video:
            total = None if source.files is None else len(source.files)
            t_upload = time.perf_counter()
            _send_frames(video, source, total, quiet)
            t_upload = time.perf_counter() - t_upload
            for i, prompt in enumerate(prompts):
                try:
                    video.add_prompt(
                        prompt.frame, prompt.object_id, prompt.points, prompt.labels, prompt.box
                    )
                except UserError as e:
                    raise UserError(f"prompt {i}: {e}") from None
            start = min(p.frame for p in prompts)
            t_track = time.perf_counter()
            written, frames = _track(video, source, start, args, quiet, save_mask_png)
            t_track = time.perf_counter() - t_track
            objects = list(video.object_ids)
            count = video.frame_count
    summary = {
        "video": str(args.video),
        "frames": count,
        "start_frame": start,
        "frames_tracked": frames,
        "objects": objects,
        "masks_written": written,
        "output": str(args.output),
        "visualize": None if args.visualize is None else str(args.visualize),
        "seconds": {
            "send_frames": round(t_upload, 3),
            "track": round(t_track, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
        "tracked_frames_per_second": round(frames / t_track, 2) if t_track > 0 else None,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{args.video}: {count} frames sent in {t_upload:.1f} s; objects {objects} tracked "
            f"on frames {start} to {start + frames - 1} in {t_track:.1f} s "
            f"({summary['tracked_frames_per_second']} frames/s); {written} masks in "
            f"{args.output}" + (f"; overlay {args.visualize}" if args.visualize else "")
        )
    return 0


def _send_frames(video, source: VideoSource, total: int | None, quiet: bool) -> None:
    batch: list[bytes] = []
    with _bar(total, "sending frames", "frame", quiet) as bar:
        for data in source.encoded():
            batch.append(data)
            if len(batch) == video.frames_per_request:
                video.add_frames(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            video.add_frames(batch)
            bar.update(len(batch))


def _track(video, source: VideoSource, start: int, args, quiet: bool, save) -> tuple[int, int]:
    """Propagate from ``start``, writing each frame's masks (and overlay) as it arrives."""
    overlay = (
        None if args.visualize is None else OverlayWriter(args.visualize, args.fps or source.fps)
    )
    pictures = source.pictures(start) if overlay is not None else None
    written = frames = 0
    try:
        with _bar(video.frame_count - start, "tracking", "frame", quiet) as bar:
            for result in video.propagate(frames_per_response=args.frames_per_response):
                for object_id, mask in zip(result.object_ids, result.masks):
                    save(args.output / str(object_id) / f"{result.frame_index:05d}.png", mask)
                    written += 1
                if overlay is not None:
                    overlay.write(overlay_objects(next(pictures), result.masks))
                frames += 1
                bar.update(1)
        if overlay is not None:
            overlay.finish()
    except BaseException:
        if overlay is not None:
            overlay.discard()
        raise
    return written, frames


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
