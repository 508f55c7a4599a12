"""Shared fixtures: a random-init SAM2.1 tiny, its exported repository, Meta's predictor."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def assert_real_logits(logits: np.ndarray, where: object = "") -> None:
    """Meta's logits that a parity test compares with are real ones: spread out, and nowhere
    near SAM2's -1024 "no object" fill (a test against that constant, or all zeros, would
    prove nothing)."""
    logits = np.asarray(logits)
    assert logits.std() > 0.01 and logits.max() > -100, (where, logits.std(), logits.max())


def run_script(name: str, *args: str, check: bool = True, timeout: float = 300, **kw):
    """Run ``scripts/<name>`` as a user would (a new Python process) and capture its output."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def repository_of(source: Path, dest: Path, *models: str) -> Path:
    """``dest`` holding only ``models`` of the repository ``source``, hard-linked (no copying
    of ONNX files). A server that needs two models starts in seconds instead of loading all
    of them (sam2_session and sam2_video take most of a start)."""
    for name in models:
        shutil.copytree(source / name, dest / name, copy_function=os.link)
    return dest


@contextlib.contextmanager
def serving(server, log_path: Path, allow_unavailable: bool = False) -> Iterator:
    """Start ``server`` (an ``EmbeddedTriton``) logging to ``log_path``, wait until it is
    ready (``allow_unavailable``: also with models that failed to load), and stop it on
    leaving, also when the body fails. Sets ``server.log_path`` and ``server.ready_seconds``.
    """
    server.log_path = log_path
    with open(log_path, "w") as log:
        server.start(stdout=log, stderr=subprocess.STDOUT)
        try:
            server.ready_seconds = server.wait_ready(
                timeout=120, allow_unavailable=allow_unavailable
            )
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A seeded random-init SAM2.1 tiny in Meta's checkpoint format, with its SHA-256 in a
    ``SHA256SUMS`` beside it as the downloader leaves it (so every export checks it)."""
    from sam2_triton.checksums import file_sha256, record_sha256
    from sam2_triton.testing import save_random_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    save_random_checkpoint("tiny", path)
    record_sha256(path, file_sha256(path))
    return path


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory, tiny_checkpoint) -> Path:
    """A model repository exported from ``tiny_checkpoint`` through the user-facing CLI."""
    repo = tmp_path_factory.mktemp("model_repository")
    run_script(
        "export_onnx.py", "--model", "tiny", "--checkpoint", tiny_checkpoint, "--repository", repo
    )
    return repo


@pytest.fixture(scope="session")
def sam2_model(tiny_checkpoint):
    """Meta's SAM2.1 tiny with the checkpoint's weights, built by Meta's own builder."""
    import torch
    from sam2.build_sam import build_sam2

    torch.set_grad_enabled(False)
    return build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", str(tiny_checkpoint), device="cpu")


@pytest.fixture(scope="session")
def predictor(sam2_model):
    """Meta's ``SAM2ImagePredictor``: the reference every mask is compared with."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return SAM2ImagePredictor(sam2_model)


@pytest.fixture(scope="session")
def photos():
    from sam2_triton.testing import photos

    return photos()


@pytest.fixture(scope="session")
def triton_server(tiny_repository, tmp_path_factory):
    """The real embedded tritonserver serving ``tiny_repository`` (CPU configs), free ports.

    Attributes: ``http_url``, ``grpc_url`` ("127.0.0.1:PORT"), ``metrics_url``,
    ``repository``, ``log_path`` and ``ready_seconds``. Stopped at the end of the session,
    also when tests fail.
    """
    from sam2_triton.server import EmbeddedTriton, free_port

    server = EmbeddedTriton(
        repository=tiny_repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        config_name="cpu",
        exit_timeout_s=5,
    )
    with serving(server, tmp_path_factory.mktemp("triton") / "tritonserver.log"):
        yield server


def decoder_feed(predictor, features: dict, prompt: dict, mask_input=None) -> dict:
    """The decoder inputs the predictor builds for ``prompt`` (``point_coords``,
    ``point_labels``, ``box`` in original pixels) on its set image: what
    ``SAM2ImagePredictor.predict → _prep_prompts → _predict`` hands the prompt encoder,
    plus ``features``."""
    import torch

    coords = prompt.get("point_coords")
    labels = prompt.get("point_labels")
    box = prompt.get("box")
    mask, points, point_labels, box_t = predictor._prep_prompts(
        None if coords is None else np.array(coords, np.float32),
        None if labels is None else np.array(labels),
        None if box is None else np.array(box, np.float32),
        mask_input,
        normalize_coords=True,
    )
    parts_xy, parts_l = [], []
    if box_t is not None:  # box corners first, labelled 2 and 3
        parts_xy.append(box_t.reshape(-1, 2, 2))
        parts_l.append(torch.tensor([[2, 3]]))
    if points is not None:
        parts_xy.append(points)
        parts_l.append(point_labels)
    feed = dict(features)
    feed["point_coords"] = torch.cat(parts_xy, dim=1).numpy().astype(np.float32)
    feed["point_labels"] = torch.cat(parts_l, dim=1).numpy().astype(np.float32)
    if mask is None:
        feed["mask_input"] = np.zeros((1, 1, 256, 256), np.float32)
        feed["has_mask_input"] = np.zeros((1, 1), np.float32)
    else:
        feed["mask_input"] = mask.numpy().astype(np.float32)
        feed["has_mask_input"] = np.ones((1, 1), np.float32)
    return feed
