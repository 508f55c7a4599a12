"""Does every model really answer? A probe that makes each model's backend run a request.

Triton's ``/v2/health/ready`` and a model's ``ready`` endpoint say only that Triton loaded the
model. Triton 2.51 keeps saying "ready" after a python-backend stub process has died, while
each request to that model fails with 500 "Stub process '...' is not healthy" (NVIDIA's
release notes list a fix in 2.65, NGC 26.01). This probe sends every model one small
request that its backend itself must answer, and calls the model healthy only when it did:

* 200: the backend ran the request (NVIDIA's C++ ONNX Runtime backend in the NGC image runs
  even the deliberately invalid probes below);
* 400 with the probe's expected message: this project's backend read the request and
  rejected it, as it must (``INVALID_ARG``), without running the model;
* 503 "exceeds maximum queue size": the model is busy, not dead.

Anything else (a 500, a 400 from Triton itself, a model not READY, no connection, no answer
within the timeout) is a failure. ``serve_local``'s supervisor calls :func:`probe_server`; the
compose healthcheck and Kubernetes exec probes run this file.

This module uses nothing but the Python standard library, so that the NGC image (python3 and
curl, no tritonclient) runs it as it is::

    python3 health.py --url localhost:8000         # exit 0: every model answered; 1: not
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_BYTES_PER_ELEMENT = {"FP32": 4, "INT32": 4, "UINT8": 1, "BOOL": 1}
_NAN = struct.pack("<f", float("nan"))
_ONE = struct.pack("<f", 1.0)


@dataclass(frozen=True)
class Input:
    """One input tensor of a probe request; zeros unless ``head`` gives its first bytes."""

    name: str
    shape: tuple[int, ...]
    datatype: str = "FP32"
    head: bytes = b""

    def raw(self) -> bytes:
        size = _BYTES_PER_ELEMENT[self.datatype]
        for d in self.shape:
            size *= d
        return self.head + b"\0" * (size - len(self.head))


@dataclass(frozen=True)
class ModelProbe:
    """A model's probe request, and the 400 message that proves its backend rejected it
    (``rejected_with``; None for a probe that must be answered, never rejected).

    ``output`` is the one output asked for (as binary data, so a 200 stays small).
    ``one_shot_sequence``: send it as a whole Triton sequence (``sequence_start`` and
    ``sequence_end`` set, a random ``sequence_id``) for a stateful model, so the probe never
    joins or ends a client's session.
    """

    inputs: tuple[Input, ...]
    output: str
    rejected_with: str | None
    one_shot_sequence: bool = False

    def body(self) -> tuple[bytes, int]:
        """The binary HTTP request body and the length of its JSON header."""
        raws = [i.raw() for i in self.inputs]
        request: dict = {
            "inputs": [
                {
                    "name": i.name,
                    "shape": list(i.shape),
                    "datatype": i.datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
                for i, raw in zip(self.inputs, raws)
            ],
            "outputs": [{"name": self.output, "parameters": {"binary_data": True}}],
        }
        if self.one_shot_sequence:
            request["parameters"] = {
                "sequence_id": random.randrange(1, 2**53),
                "sequence_start": True,
                "sequence_end": True,
            }
        header = json.dumps(request).encode()
        return header + b"".join(raws), len(header)


_FEATURES = (
    Input("image_embeddings", (1, 256, 64, 64)),
    Input("high_res_feats_0", (1, 32, 256, 256)),
    Input("high_res_feats_1", (1, 64, 128, 128)),
)
_ONE_POINT = (
    Input("point_coords", (1, 1, 2)),
    Input("point_labels", (1, 1), head=_ONE),
    Input("mask_input", (1, 1, 256, 256)),
    Input("has_mask_input", (1, 1)),
)
_NAN_IMAGE = Input("image", (1, 3, 1024, 1024), head=_NAN)

#: The probe of each model this project serves. The decoders get a real one-point request on
#: zero features (a few milliseconds of decoder work); the encoder and the ensemble get an
#: image with a NaN, which this project's backend refuses before running anything (the
#: ensemble's first step, sam2_prompt_check, refuses it before the encoder runs). The session
#: model gets a whole sequence of its own whose "image" is no image file, which its backend
#: refuses after reading it. A model added to the repository gets its line here.
PROBES: dict[str, ModelProbe] = {
    "sam2_encoder": ModelProbe((_NAN_IMAGE,), "image_embeddings", "contains NaN"),
    "sam2_decoder": ModelProbe(_FEATURES + _ONE_POINT, "iou_predictions", None),
    "sam2_decoder_prompts": ModelProbe(_FEATURES + _ONE_POINT, "iou_predictions", None),
    "sam2": ModelProbe((_NAN_IMAGE, *_ONE_POINT), "iou_predictions", "contains NaN"),
    "sam2_session": ModelProbe(
        (Input("image_bytes", (1, 4), "UINT8", b"nope"),),
        "image_size",
        "cannot read image_bytes: not an image file",
        one_shot_sequence=True,
    ),
    "sam2_video": ModelProbe(
        (Input("frame_index", (1, 1), "INT32"),),
        "frame_count",
        "the first request of a video must carry its first frame",
        one_shot_sequence=True,
    ),
}


@dataclass
class ProbeResult:
    """One model's answer to its probe."""

    model: str
    healthy: bool
    detail: str
    #: No answer within the timeout: a hung model, or one busy with a long queue.
    timed_out: bool = False
    seconds: float = 0.0

    def line(self) -> str:
        return f"{'ok  ' if self.healthy else 'FAIL'}  {self.model}: {self.detail}"


@dataclass
class _Answer:
    status: int
    text: str = ""
    timed_out: bool = False
    error: str = field(default="")


def _request(url: str, data: bytes | None, headers: dict, timeout: float) -> _Answer:
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return _Answer(r.status, r.read().decode(errors="replace"))
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):  # Triton's {"error": "..."}
            text = json.loads(text).get("error", text)
        return _Answer(e.code, text)
    except TimeoutError:
        return _Answer(0, timed_out=True, error=f"no answer within {timeout:.0f} s")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            return _Answer(0, timed_out=True, error=f"no answer within {timeout:.0f} s")
        return _Answer(0, error=f"cannot reach the server: {reason}")


def _base(url: str) -> str:
    return url if url.startswith(("http://", "https://")) else f"http://{url}"


class ServerUnreachable(OSError):
    """The server did not list its models (no connection, no answer, an error)."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def model_states(
    url: str, timeout: float = 10, headers: dict[str, str] | None = None
) -> dict[str, tuple[str, str]]:
    """``{model: (state, reason)}`` from Triton's repository index, or
    :class:`ServerUnreachable`. ``headers``: what a server that restricts its repository API
    asks for (``serve_local --load-model``)."""
    answer = _request(f"{_base(url)}/v2/repository/index", b"{}", dict(headers or {}), timeout)
    if answer.status != 200:
        message = answer.error or f"repository index: HTTP {answer.status} {answer.text}"
        raise ServerUnreachable(message, answer.timed_out)
    try:
        index = json.loads(answer.text)
        return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in index}
    except (ValueError, TypeError, KeyError) as e:
        raise ServerUnreachable(f"repository index: unreadable answer ({e})") from None


def probe_model(url: str, model: str, timeout: float = 30) -> ProbeResult:
    """Send ``model`` its probe (from :data:`PROBES`) and judge the answer."""
    probe = PROBES[model]
    data, header_length = probe.body()
    headers = {
        "Inference-Header-Content-Length": str(header_length),
        # Never form-urlencoded (what `curl --data-binary` sends unless told): tritonserver
        # 2.51 parses such a body as a query string and crashes on a large one.
        "Content-Type": "application/octet-stream",
    }
    t0 = time.monotonic()
    answer = _request(f"{_base(url)}/v2/models/{model}/infer", data, headers, timeout)
    seconds = time.monotonic() - t0
    took = f"in {seconds * 1000:.0f} ms"
    if answer.status == 200:
        return ProbeResult(model, True, f"answered {took}", seconds=seconds)
    if answer.status == 400 and probe.rejected_with and probe.rejected_with in answer.text:
        return ProbeResult(model, True, f"its backend rejected the probe {took}", seconds=seconds)
    if answer.status == 503 and "queue size" in answer.text:
        return ProbeResult(model, True, f"busy (queue full) {took}", seconds=seconds)
    detail = answer.error or f"HTTP {answer.status}: {answer.text.strip()}"
    return ProbeResult(model, False, detail, timed_out=answer.timed_out, seconds=seconds)


def probe_server(
    url: str,
    models: Sequence[str] | None = None,
    timeout: float = 30,
    headers: dict[str, str] | None = None,
):
    """Probe ``models`` (default: every model the server has loaded or tried to load, probed
    by :data:`PROBES` where it has a probe there, else by its READY state only: a model of
    the repository that explicit model control never loaded has no state and is left out);
    ``timeout`` bounds the whole round; ``headers`` go with the repository index request (see
    :func:`model_states`). Returns one :class:`ProbeResult` per model (one for the server
    when it cannot be asked).
    """
    deadline = time.monotonic() + timeout
    try:
        states = model_states(url, timeout=min(10, timeout), headers=headers)
    except ServerUnreachable as e:
        return [ProbeResult("server", False, str(e), timed_out=e.timed_out)]
    results = []
    for model in models if models is not None else sorted(m for m, (st, _) in states.items() if st):
        state, reason = states.get(model, ("", "not in the repository"))
        if state != "READY":
            results.append(ProbeResult(model, False, f"not ready ({state or reason})"))
        elif model not in PROBES:
            results.append(ProbeResult(model, True, "READY (no probe request for this model)"))
        else:
            left = max(1.0, deadline - time.monotonic())
            results.append(probe_model(url, model, timeout=left))
    return results


# --- the command line (healthchecks, Kubernetes exec probes) ---------------------------------


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def stop_if_failing(healthy: bool, after: int, pid: int, state_file: Path) -> str | None:
    """Count consecutive failed rounds; at ``after``, send SIGTERM to ``pid``; say so.

    For containers: Docker restarts one only when its main process (PID 1, tritonserver)
    exits, never for an unhealthy status. Failures count only once the server has been
    healthy since that process started (its start time is kept in ``state_file``), so a
    server still building TensorRT engines (Docker's start period) is never stopped.
    """
    start = _start_time(pid)
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    if state.get("start") != start:
        state = {"start": start, "was_healthy": False, "failures": 0}
    if healthy:
        state.update(was_healthy=True, failures=0)
    elif state["was_healthy"]:
        state["failures"] += 1
    message = None
    if state["failures"] >= after:
        message = f"sending SIGTERM to pid {pid} after {after} failed rounds in a row"
        state = {"start": "", "was_healthy": False, "failures": 0}
        os.kill(pid, signal.SIGTERM)
    state_file.write_text(json.dumps(state))
    return message


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="health.py",
        description="Send every model a running sam2-triton server loaded a request its "
        "backend must answer; exit 0 when all did, 1 when one did not (one line per model).",
    )
    p.add_argument("--url", default="127.0.0.1:8000", help="HTTP host:port (default: %(default)s)")
    p.add_argument(
        "--model", action="append", help="probe only this model (repeatable; default: all)"
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="send this header with the repository index request, for a server that restricts "
        "its repository API (tritonserver --http-restricted-api=model-repository:NAME=VALUE)",
    )
    p.add_argument(
        "--timeout", type=float, default=20, help="seconds for the whole round (default: 20)"
    )
    p.add_argument("--quiet", action="store_true", help="print failures only")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="after N failed rounds in a row (counted once the server has been healthy), "
        "send SIGTERM to --stop-pid: in a container, PID 1 is tritonserver, and its exit "
        "makes the restart policy start a new one",
    )
    p.add_argument("--stop-pid", type=int, default=1, help="see --stop-after (default: 1)")
    p.add_argument(
        "--state-file",
        type=Path,
        default=Path("/tmp/sam2-triton-health.json"),
        help="where --stop-after counts failures (default: %(default)s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    headers = dict(h.partition("=")[::2] for h in args.header)
    if any(not name or not value for name, value in headers.items()):
        parser.error("--header takes NAME=VALUE")
    results = probe_server(args.url, args.model, args.timeout, headers=headers)
    healthy = all(r.healthy for r in results)
    for r in results:
        if not (args.quiet and r.healthy):
            print(r.line(), file=sys.stdout if r.healthy else sys.stderr)
    if args.stop_after:
        message = stop_if_failing(healthy, args.stop_after, args.stop_pid, args.state_file)
        if message:
            print(message, file=sys.stderr)
    return 0 if healthy else 1


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
