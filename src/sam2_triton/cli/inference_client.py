"""``inference_client``: masks for an image from a running sam2-triton server.

A thin layer over :class:`sam2_triton.client.Sam2Client`: parse flags, check every prompt
against the image, then by default open a session on ``sam2_session`` (the image file travels
once, with the first prompt set; the others carry only their prompts) or, with
``--stateless``, encode the image with ``sam2_encoder`` and decode the prompt sets with
``sam2_decoder(_prompts)``; write PNGs. Every mistake a user can fix is one ``error:`` line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam2_triton.cli import ArgumentParser
from sam2_triton.model_config import SESSION
from sam2_triton.models import UserError

EPILOG = """\
examples:
  %(prog)s --image photo.jpg --points 500,375 --output mask.png
  %(prog)s --image photo.jpg --points 500,375 300,200 --labels 1 0 --visualize overlay.png
  %(prog)s --image photo.jpg --box 75,275,1725,850 --points 575,750 --labels 0 --json
  %(prog)s --image photo.jpg --points 500,375 --multimask --output-all masks/ \\
      --save-low-res prev.npy
  %(prog)s --image photo.jpg --points 500,375 220,100 --labels 1 0 --mask-input prev.npy
  %(prog)s --image photo.jpg --prompts prompts.json --output mask.png   # mask_0.png, ...
  %(prog)s --protocol grpc --url localhost:8001 --shared-memory --image photo.jpg --box ...

prompts.json is a list of prompt sets, each with any of "points" ([[x, y], ...]),
"labels" ([1, 0, ...], default all 1), "box" ([x0, y0, x1, y1]), "mask_input" (a .npy
written by --save-low-res, relative to the prompts file) and "multimask" (true/false,
default --multimask). All are
decoded on one encoding of the image; sets with the same number of points (a box counts
two) share one decoder request (the sam2_decoder_prompts model). Coordinates are pixels of
the image as displayed (EXIF orientation applied), x to the right, y down.
"""


class _Parser(ArgumentParser):
    """The CLI's parser: one-line errors, and values such as ``-5,10`` taken as values."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse takes a value that starts with "-" for an option unless it looks like a
        # negative number, which "-5,10" does not; no option here starts with "-<digit>",
        # so treat every such word as a value (the point is then refused as outside the
        # image, with its coordinates, instead of "expected at least one argument").
        self._negative_number_matcher = re.compile(r"^-\.?\d")


def _floats(text: str, count: int, what: str, example: str) -> list[float]:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count or len(parts) != count:
        raise argparse.ArgumentTypeError(f"malformed {what} {text!r}: expected {example}")
    return values


def parse_point(text: str) -> list[float]:
    """``"X,Y"`` → ``[x, y]``."""
    return _floats(text, 2, "point", "X,Y, e.g. 500,375")


def parse_box(text: str) -> list[float]:
    """``"X0,Y0,X1,Y1"`` → ``[x0, y0, x1, y1]``."""
    return _floats(text, 4, "box", "X0,Y0,X1,Y1, e.g. 75,275,1725,850")


def parse_label(text: str) -> int:
    """``"1"`` or ``"0"``."""
    if text.strip() not in ("0", "1"):
        raise argparse.ArgumentTypeError(
            f"malformed label {text!r}: 1 (foreground) or 0 (background)"
        )
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="inference_client.py",
        description="Segment an image with SAM2.1 served by Triton: point and/or box prompts "
        "in, binary masks (PNG, original size) out. Encodes the image once for all prompt sets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    server = p.add_argument_group("server")
    server.add_argument(
        "--url",
        default="localhost:8000",
        help="Triton HOST:PORT (default %(default)s; gRPC is usually port 8001)",
    )
    server.add_argument("--protocol", choices=("http", "grpc"), default="http")
    server.add_argument(
        "--stateless",
        action="store_true",
        help="encode with sam2_encoder and decode with sam2_decoder(_prompts), the features "
        "sent back and forth, instead of a session on sam2_session (the default: the server "
        "keeps the image and only prompts travel)",
    )
    server.add_argument(
        "--shared-memory",
        action="store_true",
        help="with --stateless (implied): pass the image and embeddings through system shared "
        "memory (client and server on one host)",
    )
    server.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the server and models to be ready (default: check once)",
    )
    server.add_argument(
        "--timeout", type=float, default=120.0, metavar="SECONDS", help="per-request timeout"
    )
    prompt = p.add_argument_group("input and prompts (pixels of the original image)")
    prompt.add_argument("--image", required=True, type=Path, help="JPEG/PNG/WebP/... image")
    prompt.add_argument("--points", nargs="+", type=parse_point, metavar="X,Y", help="click points")
    prompt.add_argument(
        "--labels",
        nargs="+",
        type=parse_label,
        metavar="L",
        help="1 (foreground) or 0 (background) per point (default: all 1)",
    )
    prompt.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="a box prompt")
    prompt.add_argument(
        "--mask-input",
        type=Path,
        metavar="PATH",
        help="low-res logits of an earlier prediction (.npy from --save-low-res) to refine",
    )
    prompt.add_argument(
        "--prompts", type=Path, metavar="FILE.json", help="several prompt sets (see below)"
    )
    prompt.add_argument(
        "--multimask",
        action="store_true",
        help="predict three masks; --output gets the one with the highest predicted IoU",
    )
    out = p.add_argument_group("outputs (with several prompt sets, _N is added to file names)")
    out.add_argument("--output", type=Path, metavar="PATH", help="the mask as an 8-bit PNG, 0/255")
    out.add_argument(
        "--output-all",
        type=Path,
        metavar="DIR",
        help="every mask: DIR/mask_0.png, ... (DIR/prompt_N_mask_K.png with several prompt sets)",
    )
    out.add_argument(
        "--visualize", type=Path, metavar="PATH", help="the image with mask, points and box drawn"
    )
    out.add_argument(
        "--save-low-res",
        type=Path,
        metavar="PATH",
        help="the mask's 256x256 low-res logits (.npy) for --mask-input",
    )
    out.add_argument(
        "--json", action="store_true", help="print scores, mask areas and timings as JSON"
    )
    return p


@dataclass
class PromptSpec:
    """One prompt set as given (original-image pixels), before validation."""

    points: Any = None
    labels: Any = None
    box: Any = None
    mask_input: np.ndarray | None = None
    multimask: bool = False


def _spec_from_json(entry: Any, index: int, default_multimask: bool, base: Path) -> PromptSpec:
    from sam2_triton.client.outputs import load_low_res

    where = f"prompt set {index} in the prompts file"
    if not isinstance(entry, dict):
        raise UserError(f"{where} must be an object with points/labels/box, got {entry!r}")
    unknown = set(entry) - {"points", "labels", "box", "mask_input", "multimask", "name"}
    if unknown:
        raise UserError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    multimask = entry.get("multimask", default_multimask)
    if not isinstance(multimask, bool):
        raise UserError(f"{where}: multimask must be true or false")
    mask = None
    if entry.get("mask_input") is not None:
        mask_path = Path(entry["mask_input"])
        mask = load_low_res(mask_path if mask_path.is_absolute() else base / mask_path)
    return PromptSpec(entry.get("points"), entry.get("labels"), entry.get("box"), mask, multimask)


def prompt_specs(args: argparse.Namespace) -> list[PromptSpec]:
    """The prompt sets of the command line: the flags' one, or the ``--prompts`` file's."""
    from sam2_triton.client.outputs import load_low_res

    flags = args.points is not None or args.box is not None or args.labels is not None
    if args.prompts is not None:
        if flags or args.mask_input is not None:
            raise UserError("give prompts either as --points/--labels/--box or in --prompts")
        try:
            data = json.loads(args.prompts.read_text())
        except FileNotFoundError:
            raise UserError(f"prompts file not found: {args.prompts}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read prompts file {args.prompts}: {e}") from None
        except json.JSONDecodeError as e:
            raise UserError(f"prompts file {args.prompts} is not valid JSON: {e}") from None
        if isinstance(data, dict) and "prompts" in data:
            data = data["prompts"]
        if not isinstance(data, list) or not data:
            raise UserError(f"prompts file {args.prompts} must hold a non-empty list")
        base = args.prompts.parent
        return [_spec_from_json(e, i, args.multimask, base) for i, e in enumerate(data)]
    if not flags:
        raise UserError("give a prompt: --points X,Y [...] and/or --box X0,Y0,X1,Y1 (or --prompts)")
    if args.labels is not None and args.points is None:
        raise UserError("--labels given without --points")
    mask = load_low_res(args.mask_input) if args.mask_input is not None else None
    return [PromptSpec(args.points, args.labels, args.box, mask, args.multimask)]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def main(argv: Sequence[str] | None = None) -> int:
    from sam2_triton.client import Sam2Client, make_prompt
    from sam2_triton.client.session import image_file_bytes

    args = build_parser().parse_args(argv)
    if args.shared_memory:
        args.stateless = True  # sessions already keep the features on the server
    t0 = time.perf_counter()
    specs = prompt_specs(args)
    if args.stateless:
        from sam2_triton.client import load_image

        image = load_image(args.image)
        data, hw = None, image.shape[:2]
    else:
        image = None  # decoded by the server; here only if an overlay is asked for
        data, hw = image_file_bytes(args.image)
    t_load = time.perf_counter() - t0

    def validate(max_points: int | None = None) -> list:
        kw = {} if max_points is None else {"max_points": max_points}
        prompts = []
        for i, s in enumerate(specs):
            try:
                prompts.append(make_prompt(hw, s.points, s.labels, s.box, s.mask_input, **kw))
            except UserError as e:
                raise UserError(f"prompt set {i}: {e}" if len(specs) > 1 else str(e)) from None
        return prompts

    validate()  # before contacting the server: a typo costs no round trip
    with Sam2Client(
        args.url, args.protocol, shared_memory=args.shared_memory, timeout_s=args.timeout
    ) as client:
        models = None if args.stateless else (SESSION,)
        if args.wait > 0:
            client.wait_until_ready(args.wait, models=models)
        else:
            client.check_ready(models=models)
        prompts = validate(client.max_points)
        if args.stateless:
            predictions, timings = _stateless(client, image, prompts, specs)
        else:
            predictions, timings = _in_session(client, data, prompts, specs, args)
    if args.visualize is not None and image is None:
        from sam2_triton.client import load_image

        image = load_image(args.image)
    results = [
        _write_outputs(args, i if len(specs) > 1 else None, spec, prompt, pred, image)
        for i, (spec, prompt, pred) in enumerate(zip(specs, prompts, predictions))
    ]
    report = {
        "image": str(args.image),
        "height": int(hw[0]),
        "width": int(hw[1]),
        "url": args.url,
        "protocol": args.protocol,
        "mode": "stateless" if args.stateless else "session",
        "shared_memory": args.shared_memory,
        "timings_ms": {
            "load_image": _ms(t_load),
            **{k: _ms(v) for k, v in timings.items()},
            "total": _ms(time.perf_counter() - t0),
        },
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_summary(report)
    return 0


def _in_session(client, data: bytes, prompts: list, specs: list, args) -> tuple[list, dict]:
    """Every prompt set in one server-side session: the image travels with the first."""
    outputs = ("masks", "iou_predictions") + (("low_res_masks",) if args.save_low_res else ())
    predictions = []
    with client.session(data) as session:
        for spec, prompt in zip(specs, prompts):
            predictions.append(
                session.predict(
                    prompt.points,
                    prompt.labels,
                    prompt.box,
                    multimask=spec.multimask,
                    mask_input=None if prompt.mask_input is None else prompt.mask_input,
                    outputs=outputs,
                )
            )
        first = session.start_seconds
    return predictions, {"session_start": first}


def _stateless(client, image, prompts: list, specs: list) -> tuple[list, dict]:
    """The encoder once, then prompt sets of equal point count together
    (sam2_decoder_prompts): the image's features travel once per request."""
    embedding = client.encode_image(image)
    predictions: list = [None] * len(specs)
    for multimask in (False, True):
        chosen = [i for i, s in enumerate(specs) if s.multimask == multimask]
        batch = client.decode_batch(embedding, [prompts[i] for i in chosen], multimask)
        for i, pred in zip(chosen, batch):
            predictions[i] = pred
    return predictions, {
        "preprocess": embedding.preprocess_seconds,
        "encode": embedding.encode_seconds,
    }


def _write_outputs(args, index: int | None, spec, prompt, pred, image) -> dict:
    """Write the files one prompt set asked for; its entry of the JSON report."""
    from sam2_triton.client import outputs as out

    best = pred.best_index
    written: dict[str, Any] = {}
    if args.output is not None:
        path = out.indexed_path(args.output, index)
        written["mask"] = str(out.save_mask_png(path, pred.masks[best]))
    if args.output_all is not None:
        prefix = f"prompt_{index}_mask" if index is not None else "mask"
        names = out.mask_file_names(len(pred.masks), prefix)
        written["all"] = [
            str(out.save_mask_png(args.output_all / name, m)) for name, m in zip(names, pred.masks)
        ]
    if args.visualize is not None:
        path = out.indexed_path(args.visualize, index)
        mask = pred.masks[best]
        overlay = out.save_overlay(path, image, mask, prompt.points, prompt.labels, prompt.box)
        written["visualize"] = str(overlay)
    if args.save_low_res is not None:
        path = out.indexed_path(args.save_low_res, index)
        written["low_res"] = str(out.save_low_res(path, pred.low_res_logits[best]))
    timings = (
        {"round_trip": _ms(pred.round_trip_seconds)}
        if hasattr(pred, "round_trip_seconds")
        else {"decode": _ms(pred.decode_seconds), "postprocess": _ms(pred.postprocess_seconds)}
    )
    return {
        "prompt": prompt.to_json(),
        "multimask": spec.multimask,
        "iou_predictions": [round(float(v), 6) for v in pred.iou_predictions],
        "best": best,
        "mask_areas": pred.areas,
        "timings_ms": timings,
        "outputs": written,
    }


def _print_summary(report: dict) -> None:
    t = report["timings_ms"]
    where = f"{report['url']} ({report['protocol']})"
    size = f"{report['image']} ({report['width']}x{report['height']})"
    if report["mode"] == "session":
        first = t["session_start"]
        print(f"{size}: session on {where}, first request (image + prompt) {first:.0f} ms")
    else:
        print(
            f"{size}: encoded in {t['encode']:.0f} ms (+{t['preprocess']:.0f} ms "
            f"preprocessing) on {where}"
        )
    pixels = report["width"] * report["height"]
    for i, r in enumerate(report["results"]):
        b = r["best"]
        scores = ", ".join(f"{v:.3f}" for v in r["iou_predictions"])
        area = r["mask_areas"][b]
        saved = ", ".join(
            v if isinstance(v, str) else f"{len(v)} masks" for v in r["outputs"].values()
        )
        took = r["timings_ms"].get("round_trip", r["timings_ms"].get("decode", 0.0))
        print(
            f"prompt set {i}: mask {b} of {len(r['mask_areas'])}, predicted IoU {scores}; "
            f"{area} px ({100.0 * area / pixels:.1f}%); answered in {took:.0f} ms"
            + (f"; wrote {saved}" if saved else "")
        )


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
