"""Every curl command in docs/curl.md, run exactly as written against the embedded server.

The document's bash blocks run in order as one script (so its variables carry over) from the
repository root, as the document says, with ``IMAGE`` and ``OUT`` in a temporary folder. The
masks that come back must be Meta's predictor's masks for the same image and prompts, and the
repository must gain no untracked file (every file goes to ``OUT``, whose default git
ignores).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from sam2_triton.client import load_image

DOC = ROOT / "docs" / "curl.md"


def doc_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)


def untracked_files() -> list[str]:
    """Files in the checkout that git neither tracks nor ignores."""
    proc = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(line[3:] for line in proc.stdout.splitlines() if line.startswith("??"))


@pytest.fixture(scope="module")
def curl_run(triton_server, photos, tmp_path_factory):
    work = tmp_path_factory.mktemp("curl")
    Image.fromarray(photos["chelsea"]).save(work / "photo.jpg", quality=95)
    script = ["set -euo pipefail"]
    for i, block in enumerate(doc_blocks()):
        script += [f"echo '=== block {i}'", block]
    metrics_host = triton_server.metrics_url.split("//")[1].split("/")[0]
    env = {
        **os.environ,
        "TRITON": triton_server.http_url,
        "METRICS": metrics_host,
        "IMAGE": str(work / "photo.jpg"),
        "OUT": str(work / "out"),
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    }
    before = untracked_files()
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work / "out", proc.stdout, (before, untracked_files())


def test_the_recipes_leave_no_files_in_the_repository(curl_run):
    _, _, (before, after) = curl_run
    assert after == before
    # Without OUT set, the files go to a folder git ignores.
    default = re.search(r"^OUT=\$\{OUT:-(.+?)\}", "\n".join(doc_blocks()), flags=re.M).group(1)
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{default}/mask.png"], cwd=ROOT)
    assert ignored.returncode == 0, f"{default}/ is not ignored by git"


def test_the_document_has_the_promised_commands():
    text = "\n".join(doc_blocks())
    for needle in (
        "/v2/health/ready",
        "/v2/repository/index",
        "/v2/models/sam2_decoder/config",
        "/stats",
        "/metrics",
        "/v2/models/sam2/infer",
        "/v2/models/sam2_encoder/infer",
        "/v2/models/sam2_decoder/infer",
        "/v2/models/sam2_session/infer",
        "X-Sam2-Session",
        "sequence_start",
        "use_previous_mask",
        "sequence_end",
    ):
        assert needle in text, needle


def test_metadata_commands_print_what_they_promise(curl_run):
    _, out, _ = curl_run
    assert "server live" in out and "server ready" in out and "sam2 ready" in out
    assert '"name":"sam2_decoder"' in out and '"state":"READY"' in out
    assert '"max_batch_size":16' in out  # the config (CPU variant here)
    assert '"model_stats"' in out
    assert 'nv_inference_request_success{model="sam2_encoder",version="1"}' in out
    assert "unexpected shape for input 'image'" in out and "HTTP 400" in out


def reference_mask(predictor, image, **prompt) -> tuple[np.ndarray, np.ndarray]:
    """The predictor's best mask and its logits for ``prompt`` on ``image``; ``refines``: a
    first prompt whose best low-res logits go in as ``mask_input`` (what the session keeps)."""
    predictor.set_image(image)
    multimask = prompt.pop("multimask", False)
    mask_input = None
    if "refines" in prompt:
        first = {k: np.asarray(v, np.float32) for k, v in prompt.pop("refines").items()}
        _, iou, low_res = predictor.predict(**first, multimask_output=False, return_logits=True)
        mask_input = low_res[np.argmax(iou)][None]
    kw = {k: np.asarray(v, np.float32) for k, v in prompt.items()}
    logits, iou, _ = predictor.predict(
        **kw, mask_input=mask_input, multimask_output=multimask, return_logits=True
    )
    best = int(np.argmax(iou))
    return logits[best] > 0, logits[best]


@pytest.mark.parametrize(
    "png,prompt",
    [
        ("mask.png", dict(point_coords=[[250, 180]], point_labels=[1])),
        ("refined.png", dict(point_coords=[[250, 180], [320, 90]], point_labels=[1, 0])),
        ("box.png", dict(box=[60, 40, 400, 280], multimask=True)),
        ("session_mask.png", dict(point_coords=[[250, 180]], point_labels=[1])),
        (
            "session_refined.png",
            dict(
                point_coords=[[250, 180], [320, 90]],
                point_labels=[1, 0],
                refines=dict(point_coords=[[250, 180]], point_labels=[1]),
            ),
        ),
    ],
)
def test_curl_masks_equal_the_predictor(curl_run, predictor, png, prompt):
    out, _, _ = curl_run
    image = load_image(out.parent / "photo.jpg")
    got = np.asarray(Image.open(out / png))
    assert got.shape == image.shape[:2] and set(np.unique(got)) <= {0, 255}
    want, logits = reference_mask(predictor, image, **prompt)
    confident = np.abs(logits) > 0.05  # random-init logits are small; compare where decided
    differ = ((got > 127) != want) & confident
    assert confident.mean() > 0.5
    assert differ.sum() <= 0.01 * confident.sum()
