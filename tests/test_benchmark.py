"""``scripts/benchmark.py --quick`` against the real embedded Triton: its JSON, Markdown and plot.

No timing is asserted (CI machines vary); the test checks that every case ran, that each
Triton figure carries its in-process baseline and ratio, and that the files are complete.
Also the benchmark's helpers: client processes, the smooth-masks stand-in checkpoint.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from conftest import ROOT, run_script


def test_quick_benchmark_against_embedded_triton(
    triton_server, tiny_repository, tiny_checkpoint, tmp_path
):
    out = tmp_path / "bench"
    proc = run_script(
        "benchmark.py",
        "--quick",
        "--url",
        triton_server.http_url,
        "--grpc-url",
        triton_server.grpc_url,
        "--repository",
        tiny_repository,
        "--checkpoint",
        tiny_checkpoint,
        "--out",
        out,
        "--no-progress",
        # One timed call per case and no warm-up call: every case still runs end to end (CI
        # checks the report, not the numbers), in a third of --quick's time.
        "--iterations",
        1,
        "--warmup",
        0,
        # Two users, their clients in two processes (as 32 users run in four).
        "--session-concurrency",
        "1,2",
        "--client-processes",
        2,
        timeout=600,
    )
    assert "wrote" in proc.stdout
    report = json.loads((out / "results.json").read_text())
    rows = report["results"]
    assert rows, report
    backends = {r["backend"] for r in rows}
    assert {"onnxruntime", "pytorch", "triton"} <= backends, backends
    models = {(r["backend"], r["model"]) for r in rows}
    for model in ("encoder", "decoder", "interactive"):
        assert ("triton", model) in models, models
        assert ("onnxruntime", model) in models, models
    # --quick's prompts per request (1, 4): 4 also as 4 prompt sets on one image.
    assert {r["batch"] for r in rows if r["model"] == "decoder_prompts"} == {4}, rows
    triton = [r for r in rows if r["backend"] == "triton"]
    assert {(r["protocol"], r["shared_memory"]) for r in triton} == {
        (p, s) for p in ("http", "grpc") for s in ("none", "system")
    }
    for r in rows:
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"], r
        assert r["throughput"] > 0 and r["calls"] >= 1, r
    sessions = [r for r in triton if r["model"].startswith("session")]
    assert {(r["protocol"], r["model"]) for r in sessions} == {  # --quick: HTTP only
        ("http", "session_start"),
        ("http", "session_empty"),
        ("http", "session_decode"),
    }
    for r in sessions:  # beside the session engine in process, on the same files
        assert r["baseline"]["backend"] == "sam2_triton.sessions", r
        assert r["ratio"]["p50_latency"] > 0
        if r["model"] == "session_decode":
            assert r["outputs"] in (
                ["iou_predictions"],
                ["iou_predictions", "mask_rle"],
                ["iou_predictions", "masks"],
            )
            assert 0 < r["request_bytes"] <= 2048, r  # a click is a small request
            # Where a click's time goes in process, alone and in a batch of sessions.
            assert r["baseline"]["stages_ms"]["decoder"] > 0, r
            batch = r["baseline"]["batch"]
            assert batch["batch"] == 2 and batch["throughput"] > 0, r
            assert {"prompt", "decoder", "masks"} <= set(batch["stages_ms"]), r
        elif r["model"] == "session_empty":  # the served path's own cost: no prompt at all
            assert r["outputs"] == ["image_size"] and r["concurrency"] == 1, r
            assert 0 < r["request_bytes"] < 512, r
            assert r["baseline"]["latency_ms_p50"] > 0, r
        else:
            assert {"image decode", "encoder"} <= set(r["baseline"]["stages_ms"]), r
        served = r["server"]["sam2_session"]  # Triton's split of the session model's time
        assert served["requests"] >= r["calls"] and served["compute_infer_ms"] > 0, r
        assert r["client_cpu_cores"] > 0, r  # how busy the benchmark's own process was
    decodes = [r for r in sessions if r["model"] == "session_decode"]
    assert len({tuple(r["outputs"]) for r in decodes}) == 3  # IoU alone, run lengths, masks
    for r in decodes:  # two users: one per process, each timed call counted once
        assert r["client_processes"] == r["concurrency"], r
        assert r["server"]["sam2_session"]["requests"] >= r["calls"] >= r["concurrency"], r
    for r in (r for r in triton if r not in sessions):
        base = r["baseline"]
        assert base["backend"] == "onnxruntime" and base["latency_ms_p50"] > 0, r
        ratio = r["latency_ms"]["p50"] / base["latency_ms_p50"]
        assert math.isclose(r["ratio"]["p50_latency"], ratio, rel_tol=1e-2), r
        # Triton's own statistics split the server's share of each case.
        model = {"decoder": "sam2_decoder", "decoder_prompts": "sam2_decoder_prompts"}
        served = r["server"][model.get(r["model"], "sam2_encoder")]
        assert served["requests"] >= r["calls"] and served["executions"] >= 1, r
        phases = sum(served[f"{p}_ms"] for p in ("queue", "compute_input", "compute_infer"))
        assert served["compute_infer_ms"] > 0 and phases <= served["success_ms"] * 1.05, r
    assert report["versions"]["onnxruntime"] and report["machine"]["cpu_count"] >= 1
    md = (out / "results.md").read_text()
    assert md.count("| triton |") == len(triton), md
    assert "| compute infer |" in md
    assert "| session_decode (iou_predictions, mask_rle) | 2 |" in md  # stages, batch of 2
    assert all("fp16" in s["case"] for s in report["skipped"]), report["skipped"]
    assert (out / "latency_vs_concurrency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_client_processes_report_a_worker_failure():
    """A user's client failing in another process (no server there) stops the case with
    that process's error, not a hang."""
    from sam2_triton.bench.sessions import SessionClicks
    from sam2_triton.bench.stats import closed_loop_processes
    from sam2_triton.bench.triton import TritonTarget

    clicks = SessionClicks(
        TritonTarget(http_url="127.0.0.1:9", timeout_s=5), "http", np.zeros(4, np.uint8), [], ()
    )
    with pytest.raises(RuntimeError, match="Connection refused|connect"):
        closed_loop_processes(clicks, processes=2, concurrency=2, iterations=1, timeout_s=60)


def test_plot_draws_the_session_cases(tmp_path):
    """The committed H100 run's session results alone still make a plot, with a line per
    protocol and answer (a click answered with run lengths is not one answered with masks)."""
    from sam2_triton.bench import report as rep

    run = ROOT / "docs/benchmarks/h100/2026-11-27/served_base_plus_sessions_and_stateless.json"
    report = json.loads(run.read_text())
    report["results"] = [r for r in report["results"] if r["model"].startswith("session")]
    clicks = [r for r in report["results"] if r["model"] == "session_decode"]
    assert len({rep._series(r) for r in clicks}) == 4  # {http, grpc} × {mask_rle, masks}
    png = rep.plot_latency_vs_concurrency(report, tmp_path / "plot.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kernel_classes_of_the_profiled_kernels():
    """The kernel-class split of ``profile_models.py`` (docs/benchmarks.md) files the kernels
    seen on the H100 where they belong (names as CUPTI reports them)."""
    from sam2_triton.bench.profile import kernel_class

    seen = {
        "void onnxruntime::cuda::_PadKernel<__half, 0>(unsigned long)": "copy, transpose, layout",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7": "attention",
        "nvjet_sm90_hsh_256x128_64x4_1x2_h_bz_coopA_NNT": "matrix product",
        "void onnxruntime::cuda::cuApplyLayerNorm<__half, float, __half, false>": "normalisation",
        "void onnxruntime::cuda::_BinaryElementWise<__half, __half, __half, OP_Add>": (
            "elementwise, activation"
        ),
        "sm90_xmma_dgrad_implicit_gemm_indexed_f16f16_f16f32_f32_nhwckrsc_nhwc": "convolution",
        "void onnxruntime::cuda::Transpose4DKernelParallelizeMultipleElements": (
            "copy, transpose, layout"
        ),
        "void at::native::vectorized_elementwise_kernel<8, GeluCUDAKernelImpl>": (
            "elementwise, activation"
        ),
    }
    assert {name: kernel_class(name) for name in seen} == seen


def test_device_memory_of_each_process_on_each_gpu(tmp_path, monkeypatch):
    """``bench.profile``'s reading of nvidia-smi (a stand-in here: no GPU) keeps a process's
    memory on each GPU apart, by the GPUs' bus ids, and sums it per process; a process on two
    GPUs is how a stray CUDA context shows (scripts/gpu/second_gpu.py)."""
    from sam2_triton.bench.profile import device_mib_by_process, device_mib_by_process_and_gpu

    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "--query-gpu=*) printf '0, 00000000:00:06.0\\n1, 00000000:00:07.0\\n' ;;\n"
        "*) printf '839, 00000000:00:06.0, 520\\n905, 00000000:00:06.0, 518\\n"
        "839, 00000000:00:07.0, 520\\n905, 00000000:00:07.0, 2378\\n' ;;\n"
        "esac\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert device_mib_by_process_and_gpu() == {
        (839, 0): 520,
        (905, 0): 518,
        (839, 1): 520,
        (905, 1): 2378,
    }
    assert device_mib_by_process() == {839: 1040, 905: 2896}


def test_smooth_masks_checkpoint_gives_outlines_not_speckle(tmp_path):
    """``make_random_checkpoint.py --smooth-masks`` changes only the decoder's upsampling
    kernels, and Meta's predictor then answers a click on a real photo with a mask of a few
    runs per column instead of random speckle."""
    import torch
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam2_triton.models import get_model_size
    from sam2_triton.sessions.image import masks_to_rle
    from sam2_triton.testing import UPSCALING_KERNELS, photos

    paths = {}
    for kind in ("plain", "smooth"):
        paths[kind] = tmp_path / f"{kind}.pt"
        flags = ["--smooth-masks"] if kind == "smooth" else []
        run_script("make_random_checkpoint.py", "--model", "tiny", "--out", paths[kind], *flags)
    plain, smooth = (torch.load(paths[k], map_location="cpu")["model"] for k in paths)
    assert [n for n in plain if not torch.equal(plain[n], smooth[n])] == list(UPSCALING_KERNELS)
    photo = photos()["coffee"]
    runs = {}
    for kind, path in paths.items():
        model = build_sam2(get_model_size("tiny").config, ckpt_path=str(path), device="cpu")
        predictor = SAM2ImagePredictor(model)
        predictor.set_image(photo)
        masks, iou, _ = predictor.predict(np.array([[300.0, 200.0]]), np.array([1]))
        best = torch.from_numpy(masks[int(np.argmax(iou))] > 0)
        runs[kind] = len(masks_to_rle([best])[0])
    assert runs["plain"] > 10 * photo.shape[1]  # speckle: many runs in every column
    assert runs["smooth"] < runs["plain"] / 5, runs
