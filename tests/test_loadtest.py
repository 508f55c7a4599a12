"""The load test, short, against the real embedded server: no errors, identical answers."""

from __future__ import annotations

import json

import numpy as np
from conftest import run_script

from sam2_triton import loadtest
from sam2_triton.testing import photos


def test_short_load_run_has_no_errors_and_identical_answers(triton_server, tmp_path):
    out = tmp_path / "load.json"
    proc = run_script(
        "loadtest.py",
        # Four users on two instances (of each model): concurrent enough, and on CI's two
        # cores each user's one session is most of the run's time (eight took 50 s).
        *("--url", triton_server.http_url, "--clients", 4, "--duration", 3),
        *("--decodes", 3, "--json", out),
        check=False,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(out.read_text())
    assert summary["errors"] == 0 and summary["mismatches"] == 0
    assert summary["clients"] == 4
    assert summary["sessions"] >= 4  # every client finished at least one session
    assert summary["decode"]["count"] == 3 * summary["sessions"]
    assert summary["decode_batch"]["count"] == summary["sessions"]
    for op in ("encode", "decode", "decode_batch"):
        assert f"| {op} |" in proc.stdout


def test_sessions_mode_has_no_errors_and_identical_answers(triton_server, tmp_path):
    """Users opening sessions on sam2_session and clicking, interleaved; every click equals
    the same prompt answered in a session of its own."""
    out = tmp_path / "load.json"
    proc = run_script(
        "loadtest.py",
        *("--url", triton_server.grpc_url, "--protocol", "grpc", "--mode", "sessions"),
        *("--clients", 4, "--duration", 3, "--decodes", 3, "--json", out),
        check=False,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(out.read_text())
    assert summary["errors"] == 0 and summary["mismatches"] == 0
    assert summary["sessions"] >= 4
    assert summary["session_start"]["count"] == summary["sessions"]
    assert summary["click"]["count"] == 2 * summary["sessions"]
    assert summary["encode"]["count"] == 0  # the stateless models were not used
    for op in ("session_start", "click"):
        assert f"| {op} |" in proc.stdout


def test_a_differing_answer_fails_the_run(triton_server, monkeypatch):
    real = loadtest.reference_answers

    def shifted(client, images):  # as if the server had answered differently under load
        return [[(logits + 0.01, iou) for logits, iou in per] for per in real(client, images)]

    monkeypatch.setattr(loadtest, "reference_answers", shifted)
    image = photos()["chelsea"]
    summary = loadtest.run_load(
        triton_server.grpc_url,
        [image],
        protocol="grpc",
        clients=2,
        duration_s=1,
        decodes_per_session=2,
        max_sessions_per_client=1,
    )
    assert summary["errors"] == 0
    # 2 clients × (2 decodes + the 4 single-mask prompts of the batch), every one shifted.
    assert summary["mismatches"] == 2 * (2 + len(loadtest.BATCH_PROMPTS)) == 12
    assert "max |Δlogit| 1.00e-02" in summary["first_mismatches"][0]
    assert np.isfinite(summary["decode"]["p50_ms"])


def test_remote_servers_are_refused_by_default():
    proc = run_script("loadtest.py", "--url", "192.0.2.10:8000", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: 192.0.2.10 is not a loopback address")
