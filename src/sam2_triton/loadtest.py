"""Load test: many concurrent interactive sessions against a running sam2-triton server.

Two modes. ``stateless``: each simulated user repeats an interactive session on the stateless
models: encode an image (the client cache is off, so every session really hits the encoder),
then decode several prompts against that embedding one at a time, then all its single-mask
prompts at once with ``decode_batch`` (those of equal point count share one
``sam2_decoder_prompts`` request). ``sessions``: each user repeatedly opens a session on
``sam2_session`` with an image file (the first click travels with it) and clicks, then ends
it. Every answer is compared with the same prompt answered alone before the load started; a
single error or differing mask fails the run. The run is bounded in time and in request
count, and by default refuses any server that is not on this machine.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from sam2_triton.client import Sam2Client, UserError
from sam2_triton.model_config import SESSION

#: Prompts of each session, as fractions of the image's width and height.
SESSION_PROMPTS: tuple[dict, ...] = (
    {"points": [[0.5, 0.45]], "labels": [1]},
    {"points": [[0.3, 0.4], [0.6, 0.5], [0.8, 0.2]], "labels": [1, 1, 0]},
    {"box": [0.2, 0.1, 0.8, 0.9]},
    {"box": [0.1, 0.2, 0.7, 0.95], "points": [[0.4, 0.5]], "labels": [0]},
    {"points": [[0.25, 0.75]], "labels": [1], "multimask": True},
)

#: The prompts a session also decodes together with ``decode_batch`` (single-mask ones).
BATCH_PROMPTS: tuple[int, ...] = tuple(
    i for i, p in enumerate(SESSION_PROMPTS) if not p.get("multimask")
)

#: Logits may differ by float rounding between a request run alone and inside a batch.
LOGIT_TOLERANCE = 1e-3


def _scaled(prompt: dict, hw: tuple[int, int]) -> dict:
    h, w = hw
    out = dict(prompt)
    if "points" in prompt:
        out["points"] = [[x * w, y * h] for x, y in prompt["points"]]
    if "box" in prompt:
        x0, y0, x1, y1 = prompt["box"]
        out["box"] = [x0 * w, y0 * h, x1 * w, y1 * h]
    return out


def check_loopback(url: str) -> None:
    """Raise :class:`UserError` unless ``url``'s host resolves to this machine only."""
    host = url.rsplit(":", 1)[0].strip("[]")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as e:
        raise UserError(f"cannot resolve {host!r}: {e.strerror}") from None
    remote = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if remote:
        raise UserError(
            f"{host} is not a loopback address ({', '.join(sorted(remote))}); a load test "
            "sends heavy traffic: pass --allow-remote only for a server you operate"
        )


@dataclass
class Stats:
    """Latencies (seconds) and failures of one load test."""

    encode: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    decode_batch: list[float] = field(default_factory=list)
    #: sessions mode: the first request (image + click), and the clicks after it.
    session_start: list[float] = field(default_factory=list)
    click: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    sessions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def summary(self, wall_s: float, clients: int) -> dict:
        def pct(values: list[float]) -> dict:
            if not values:
                return {"count": 0}
            ms = np.asarray(values) * 1000
            return {
                "count": len(values),
                "p50_ms": round(float(np.percentile(ms, 50)), 2),
                "p90_ms": round(float(np.percentile(ms, 90)), 2),
                "p99_ms": round(float(np.percentile(ms, 99)), 2),
                "max_ms": round(float(ms.max()), 2),
                "per_s": round(len(values) / wall_s, 2),
            }

        ops = ("encode", "decode", "decode_batch", "session_start", "click")
        return {
            "clients": clients,
            "wall_s": round(wall_s, 2),
            "sessions": self.sessions,
            "calls": sum(len(getattr(self, op)) for op in ops),
            "errors": len(self.errors),
            "mismatches": len(self.mismatches),
            **{op: pct(getattr(self, op)) for op in ops},
            "first_errors": self.errors[:5],
            "first_mismatches": self.mismatches[:5],
        }


def reference_answers(
    client: Sam2Client, images: Sequence[np.ndarray]
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Low-res logits and IoU of every (image, prompt), each request made alone."""
    refs = []
    for image in images:
        embedding = client.encode_image(image)
        answers = []
        for prompt in SESSION_PROMPTS:
            pred = client.decode(embedding, **_scaled(prompt, embedding.orig_hw))
            answers.append((pred.low_res_logits, pred.iou_predictions))
        refs.append(answers)
    return refs


def _differs(pred, reference: tuple[np.ndarray, np.ndarray]) -> str | None:
    """How ``pred`` differs from the answer to the same prompt made alone, if it does."""
    ref_logits, ref_iou = reference
    diff = float(np.abs(pred.low_res_logits - ref_logits).max())
    if diff > LOGIT_TOLERANCE or not np.allclose(
        pred.iou_predictions, ref_iou, atol=LOGIT_TOLERANCE
    ):
        return f"max |Δlogit| {diff:.2e}"
    return None


def _user(
    index: int,
    url: str,
    protocol: str,
    images: Sequence[np.ndarray],
    refs,
    decodes: int,
    deadline: float,
    max_sessions: int,
    stats: Stats,
) -> None:
    with Sam2Client(url, protocol, cache_size=0) as client:
        session = 0
        while time.monotonic() < deadline and session < max_sessions:
            which = (index + session) % len(images)
            try:
                t0 = time.perf_counter()
                embedding = client.encode_image(images[which])
                t1 = time.perf_counter()
                with stats.lock:
                    stats.encode.append(t1 - t0)
                for k in range(decodes):
                    p = (index + session + k) % len(SESSION_PROMPTS)
                    t0 = time.perf_counter()
                    pred = client.decode(
                        embedding, **_scaled(SESSION_PROMPTS[p], embedding.orig_hw)
                    )
                    elapsed = time.perf_counter() - t0
                    problem = _differs(pred, refs[which][p])
                    with stats.lock:
                        stats.decode.append(elapsed)
                        if problem:
                            stats.mismatches.append(
                                f"client {index} image {which} prompt {p}: {problem}"
                            )
                t0 = time.perf_counter()
                batch = client.decode_batch(
                    embedding,
                    [_scaled(SESSION_PROMPTS[p], embedding.orig_hw) for p in BATCH_PROMPTS],
                )
                elapsed = time.perf_counter() - t0
                problems = [
                    (p, _differs(pred, refs[which][p])) for p, pred in zip(BATCH_PROMPTS, batch)
                ]
                with stats.lock:
                    stats.decode_batch.append(elapsed)
                    stats.mismatches += [
                        f"client {index} image {which} prompt {p} (batch): {problem}"
                        for p, problem in problems
                        if problem
                    ]
                    stats.sessions += 1
            except UserError as e:
                with stats.lock:
                    stats.errors.append(f"client {index}: {e}")
            session += 1


#: What a session click asks for in the sessions mode: enough to compare with the reference.
SESSION_OUTPUTS = ("iou_predictions", "low_res_masks")


def session_reference_answers(
    client: Sam2Client, files: Sequence[bytes]
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Low-res logits and IoU of every (image file, prompt), one session per image, before
    any load (no prompt refines another, so each answer is the prompt's alone)."""
    refs = []
    for data in files:
        with client.session(data) as session:
            answers = []
            for prompt in SESSION_PROMPTS:
                pred = session.predict(
                    **_scaled(prompt, session.image_size), outputs=SESSION_OUTPUTS
                )
                answers.append((pred.low_res_logits, pred.iou_predictions))
        refs.append(answers)
    return refs


def _session_user(
    index: int,
    url: str,
    protocol: str,
    files: Sequence[bytes],
    refs,
    decodes: int,
    deadline: float,
    max_sessions: int,
    stats: Stats,
) -> None:
    with Sam2Client(url, protocol) as client:
        session_index = 0
        while time.monotonic() < deadline and session_index < max_sessions:
            which = (index + session_index) % len(files)
            try:
                with client.session(files[which]) as session:
                    for k in range(decodes):
                        p = (index + session_index + k) % len(SESSION_PROMPTS)
                        t0 = time.perf_counter()
                        pred = session.predict(
                            **_scaled(SESSION_PROMPTS[p], session.image_size),
                            outputs=SESSION_OUTPUTS,
                        )
                        elapsed = time.perf_counter() - t0
                        problem = _differs(pred, refs[which][p])
                        with stats.lock:
                            (stats.click if k else stats.session_start).append(elapsed)
                            if problem:
                                stats.mismatches.append(
                                    f"client {index} image {which} prompt {p}: {problem}"
                                )
                with stats.lock:
                    stats.sessions += 1
            except UserError as e:
                with stats.lock:
                    stats.errors.append(f"client {index}: {e}")
            session_index += 1


def run_load(
    url: str,
    images: Sequence[np.ndarray],
    protocol: str = "http",
    clients: int = 32,
    duration_s: float = 60.0,
    decodes_per_session: int = 4,
    max_sessions_per_client: int = 1000,
    mode: str = "stateless",
) -> dict:
    """Run the load test and return its summary (see :meth:`Stats.summary`). ``mode``:
    ``"stateless"`` (encoder + decoders) or ``"sessions"`` (``sam2_session``)."""
    if clients < 1 or duration_s <= 0 or decodes_per_session < 1:
        raise UserError("clients and decodes must be ≥ 1 and the duration > 0")
    if mode not in ("stateless", "sessions"):
        raise UserError(f"mode must be stateless or sessions, not {mode!r}")
    if mode == "sessions":
        from sam2_triton.client.outputs import encode_png

        images = [encode_png(image) for image in images]  # the files users send
        user = _session_user
    else:
        user = _user
    with Sam2Client(url, protocol) as probe:
        if mode == "sessions":
            probe.wait_until_ready(timeout=30, models=(SESSION,))
            refs = session_reference_answers(probe, images)
        else:
            probe.wait_until_ready(timeout=30)
            refs = reference_answers(probe, images)
    stats = Stats()
    start = time.monotonic()
    deadline = start + duration_s
    threads = [
        threading.Thread(
            target=user,
            args=(
                i,
                url,
                protocol,
                images,
                refs,
                decodes_per_session,
                deadline,
                max_sessions_per_client,
                stats,
            ),
            daemon=True,
        )
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        # Sessions end at the deadline; a request in flight then gets the client's timeout.
        t.join(timeout=duration_s + 180)
    return stats.summary(time.monotonic() - start, clients)


def format_summary(summary: dict) -> str:
    """A short Markdown table of a :func:`run_load` summary."""
    rows = [
        "| | count | per s | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for op in ("encode", "decode", "decode_batch", "session_start", "click"):
        s = summary[op]
        if s["count"]:
            rows.append(
                f"| {op} | {s['count']} | {s['per_s']} | {s['p50_ms']} | {s['p90_ms']} | "
                f"{s['p99_ms']} | {s['max_ms']} |"
            )
    head = (
        f"{summary['clients']} clients, {summary['wall_s']} s, {summary['sessions']} sessions, "
        f"{summary['calls']} calls, {summary['errors']} errors, "
        f"{summary['mismatches']} differing answers"
    )
    return head + "\n\n" + "\n".join(rows)


def to_json(summary: dict) -> str:
    return json.dumps(summary, indent=2, default=lambda o: asdict(o))
