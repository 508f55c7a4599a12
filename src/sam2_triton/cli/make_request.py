"""``make_request``: request bodies for ``curl`` and masks from its responses.

Triton's REST API takes tensors as JSON or, for anything large, with the binary tensor
extension: a JSON header followed by raw bytes, its length in the
``Inference-Header-Content-Length`` HTTP header. An encoder request is a 12 MiB float image,
so this command builds the body (with the same preprocessing as the Python client) and
prints that length; ``curl`` sends it; ``mask`` turns the response into a PNG. See
docs/curl.md.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam2_triton.models import UserError


def _xy(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 250,180, got {text!r}") from None
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_request.py",
        description="Build Triton request bodies for curl (prints the value of the "
        "Inference-Header-Content-Length header) and read masks from its responses.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def prompts(sp) -> None:
        sp.add_argument("--points", nargs="+", type=_xy, metavar="X,Y", help="pixels")
        sp.add_argument("--labels", nargs="+", type=int, help="1 foreground, 0 background")
        sp.add_argument("--box", type=_xy, metavar="X0,Y0,X1,Y1", help="pixels")
        sp.add_argument("--multimask", action="store_true", help="ask for the 3 masks")

    enc = sub.add_parser("encoder", help="sam2_encoder request for an image")
    ens = sub.add_parser("ensemble", help="sam2 ensemble request: image + prompts")
    dec = sub.add_parser("decoder", help="sam2_decoder request from an encoder response")
    for sp in (enc, ens, dec):
        sp.add_argument("--image", required=True, type=Path)
        sp.add_argument("--out", required=True, type=Path, help="request body to write")
    for sp in (ens, dec):
        prompts(sp)
    dec.add_argument("--encoder-response", required=True, type=Path)
    dec.add_argument("--encoder-headers", type=Path, help="curl -D file of that response")

    mask = sub.add_parser("mask", help="PNG of the best mask in a decoder/ensemble response")
    mask.add_argument("--image", required=True, type=Path, help="the image it was made for")
    mask.add_argument("--response", required=True, type=Path)
    mask.add_argument("--headers", type=Path, help="curl -D file of that response")
    mask.add_argument("--output", required=True, type=Path)
    return p


def header_length(headers: Path | None) -> int | None:
    """``Inference-Header-Content-Length`` from a ``curl -D`` file (None: all-JSON body)."""
    if headers is None:
        return None
    try:
        text = headers.read_text(errors="replace")
    except OSError as e:
        raise UserError(f"cannot read {headers}: {e.strerror}") from None
    found = re.findall(r"(?im)^inference-header-content-length:\s*(\d+)", text)
    return int(found[-1]) if found else None


def read_response(body: Path, headers: Path | None):
    """A tritonclient ``InferResult`` parsed from a saved HTTP response body."""
    import tritonclient.http as httpclient

    try:
        data = body.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {body}: {e.strerror}") from None
    length = header_length(headers)
    try:
        result = httpclient.InferenceServerClient.parse_response_body(data, header_length=length)
    except Exception as e:  # noqa: BLE001 - tritonclient raises several kinds on bad input
        raise UserError(f"{body} is not a Triton inference response ({type(e).__name__})") from e
    response = result.get_response()
    if "error" in response:
        raise UserError(f"{body} holds an error answer: {response['error']}")
    return result


def _request_body(
    inputs: dict[str, np.ndarray], json_outputs: Sequence[str], binary: Sequence[str]
):
    import tritonclient.http as httpclient

    tensors = []
    for name, value in inputs.items():
        t = httpclient.InferInput(name, list(value.shape), "FP32")
        t.set_data_from_numpy(np.ascontiguousarray(value, np.float32), binary_data=True)
        tensors.append(t)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in json_outputs]
    outputs += [httpclient.InferRequestedOutput(n, binary_data=True) for n in binary]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(tensors, outputs)
    return body, json_size


def _prompt_inputs(args, orig_hw) -> dict[str, np.ndarray]:
    from sam2_triton.client import Sam2Transforms, make_prompt

    prompt = make_prompt(orig_hw, args.points, args.labels, args.box)
    coords, labels = Sam2Transforms().prompt_tensors(
        prompt.points, prompt.labels, prompt.box, orig_hw
    )
    return {
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros((1, 1), np.float32),
    }


def _mask_outputs(multimask: bool) -> tuple[str, str]:
    return (
        ("multimask_masks", "multimask_iou_predictions")
        if multimask
        else (
            "masks",
            "iou_predictions",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    from sam2_triton.client import Sam2Transforms, load_image
    from sam2_triton.client.outputs import save_mask_png
    from sam2_triton.export import ENCODER_OUTPUTS
    from sam2_triton.files import write_bytes_atomic

    args = build_parser().parse_args(argv)
    image = load_image(args.image)
    orig_hw = image.shape[:2]
    transforms = Sam2Transforms()

    if args.command == "mask":
        result = read_response(args.response, args.headers)
        names = [o["name"] for o in result.get_response()["outputs"]]
        masks_name = "multimask_masks" if "multimask_masks" in names else "masks"
        iou_name = masks_name.replace("masks", "iou_predictions")
        if masks_name not in names or iou_name not in names:
            raise UserError(f"{args.response} holds no {masks_name}/{iou_name} outputs")
        low_res = result.as_numpy(masks_name)[0]
        best = int(np.argmax(result.as_numpy(iou_name)[0]))
        mask = transforms.threshold(transforms.postprocess_masks(low_res[best : best + 1], orig_hw))
        save_mask_png(args.output, mask[0])
        print(args.output)
        return 0

    if args.command == "encoder":
        inputs = {"image": transforms.preprocess(image)}
        body, size = _request_body(inputs, [], ENCODER_OUTPUTS)
    elif args.command == "ensemble":
        inputs = {"image": transforms.preprocess(image), **_prompt_inputs(args, orig_hw)}
        masks, iou = _mask_outputs(args.multimask)
        body, size = _request_body(inputs, [iou], [masks])
    else:
        encoded = read_response(args.encoder_response, args.encoder_headers)
        features = {n: encoded.as_numpy(n) for n in ENCODER_OUTPUTS}
        if any(v is None for v in features.values()):
            raise UserError(f"{args.encoder_response} is not a sam2_encoder response")
        masks, iou = _mask_outputs(args.multimask)
        body, size = _request_body({**features, **_prompt_inputs(args, orig_hw)}, [iou], [masks])
    write_bytes_atomic(args.out, body)
    print(size if size is not None else len(body))
    return 0


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
