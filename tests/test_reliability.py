"""Hostile input over raw HTTP and gRPC, broken model files, interrupted exports.

Each hostile case is sent as bytes on the wire (not through the client library, which would
refuse it first); the table below is the documented answer for each. Triton's frontend
answers 400 for a wrong shape, dtype, input name, batch size or byte count and 500 for a
body it cannot parse; where the project's backend decides (non-finite values, point cap,
labels) it answers INVALID_ARG (HTTP 400). After every case the server must still be ready.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from conftest import SCRIPTS, serving
from tritonclient.grpc import service_pb2, service_pb2_grpc

from sam2_triton.server import EmbeddedTriton, free_port

EMBED = {
    "image_embeddings": (256, 64, 64),
    "high_res_feats_0": (32, 256, 256),
    "high_res_feats_1": (64, 128, 128),
}


def tensor(name: str, shape, datatype: str = "FP32", nbytes: int | None = None):
    """One input's JSON header and its bytes (zeros unless ``nbytes`` says otherwise)."""
    size = int(np.prod(shape)) * (8 if datatype == "FP64" else 4) if nbytes is None else nbytes
    header = {
        "name": name,
        "shape": list(shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": size},
    }
    return header, b"\0" * size


def decoder_request(n_points: int = 2, coords=None, labels=None, drop: str | None = None):
    parts = [tensor(n, (1, *s)) for n, s in EMBED.items()]
    c = np.full((1, n_points, 2), 100, np.float32) if coords is None else coords
    lab = np.ones((1, n_points), np.float32) if labels is None else labels
    for name, value in (("point_coords", c), ("point_labels", lab)):
        parts.append(
            (
                {
                    "name": name,
                    "shape": list(value.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": value.nbytes},
                },
                value.astype(np.float32).tobytes(),
            )
        )
    parts.append(tensor("mask_input", (1, 1, 256, 256)))
    parts.append(tensor("has_mask_input", (1, 1)))
    return [p for p in parts if p[0]["name"] != drop]


def body(parts) -> tuple[bytes, int]:
    header = json.dumps({"inputs": [h for h, _ in parts]}).encode()
    return header + b"".join(b for _, b in parts), len(header)


nan_coords = np.array([[[np.nan, 10.0]]], np.float32)
inf_coords = np.array([[[np.inf, 10.0]]], np.float32)

# (case, model, request parts or raw bytes, expected HTTP status, text in the error)
HTTP_CASES = [
    (
        "batch_beyond_max",
        "sam2_encoder",
        [tensor("image", (100000, 3, 1024, 1024), nbytes=16)],
        400,
        "batch-size must be <=",
    ),
    (
        "declared_shape_larger_than_bytes",
        "sam2_encoder",
        [tensor("image", (1, 3, 1024, 1024), nbytes=16)],
        400,
        "byte size mismatch",
    ),
    (
        "wrong_image_size",
        "sam2_encoder",
        [tensor("image", (1, 3, 512, 512))],
        400,
        "unexpected shape",
    ),
    (
        "wrong_datatype",
        "sam2_encoder",
        [tensor("image", (1, 3, 1024, 1024), "FP64")],
        400,
        "data-type",
    ),
    (
        "unknown_input_name",
        "sam2_encoder",
        [tensor("img", (1, 3, 1024, 1024))],
        400,
        "unexpected inference input",
    ),
    ("missing_input", "sam2_decoder", decoder_request(drop="mask_input"), 400, "mask_input"),
    ("nan_coordinates", "sam2_decoder", decoder_request(1, coords=nan_coords), 400, "NaN"),
    ("infinite_coordinates", "sam2_decoder", decoder_request(1, coords=inf_coords), 400, "NaN"),
    ("enormous_point_count", "sam2_decoder", decoder_request(100_000), 400, "at most 64"),
    ("zero_points", "sam2_decoder", decoder_request(0), 400, "at least one point"),
    (
        "labels_out_of_range",
        "sam2_decoder",
        decoder_request(2, labels=np.array([[1, 9]], np.float32)),
        400,
        "point_labels must be",
    ),
    (
        "negative_dimension",
        "sam2_decoder",
        b'{"inputs":[{"name":"point_coords","shape":[1,-5,2],' b'"datatype":"FP32","data":[]}]}',
        500,
        "shape",
    ),
    ("unparseable_json", "sam2_encoder", b"{not json", 500, "parse"),
    ("header_length_beyond_body", "sam2_encoder", (b"xxxx", 99999), 400, "header size"),
]


def send_http(server, model: str, request) -> requests.Response:
    url = f"http://{server.http_url}/v2/models/{model}/infer"
    if isinstance(request, tuple):  # raw bytes with a (lying) header length
        data, header_len = request
        return requests.post(
            url, data=data, headers={"Inference-Header-Content-Length": str(header_len)}
        )
    if isinstance(request, bytes):
        return requests.post(url, data=request, headers={"Content-Type": "application/json"})
    data, header_len = body(request)
    return requests.post(
        url, data=data, headers={"Inference-Header-Content-Length": str(header_len)}
    )


def server_memory_mb(server) -> float:
    """Resident memory of tritonserver and its python stub processes, in MiB."""
    pids = [server.process.pid]
    out = subprocess.run(["pgrep", "-g", str(server.process.pid)], capture_output=True, text=True)
    pids += [int(p) for p in out.stdout.split() if int(p) != server.process.pid]
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
    return total / 1024


@pytest.mark.parametrize(
    "case,model,request_,status,message", HTTP_CASES, ids=[c[0] for c in HTTP_CASES]
)
def test_hostile_http(triton_server, case, model, request_, status, message):
    response = send_http(triton_server, model, request_)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert requests.get(f"http://{triton_server.http_url}/v2/health/ready").status_code == 200


def test_oversized_bodies_are_refused_with_bounded_memory(triton_server):
    big = [tensor("image", (24, 3, 1024, 1024))]  # 302 MB, past the CPU config's batch of 4
    before = server_memory_mb(triton_server)
    after = []
    for _ in range(3):
        response = send_http(triton_server, "sam2_encoder", big)
        assert response.status_code == 400
        assert "batch-size must be <=" in response.json()["error"]
        after.append(server_memory_mb(triton_server))
    # Triton reads a body before refusing it; the allocator may keep that memory for reuse,
    # but it is reused: the server does not keep the bodies, nor grow with each one.
    assert after[0] - before < 302
    assert after[-1] - after[0] < 50, (before, after)
    assert requests.get(f"http://{triton_server.http_url}/v2/health/ready").status_code == 200


def grpc_request(model: str, inputs: list[tuple[str, list[int], str, bytes]]):
    req = service_pb2.ModelInferRequest(model_name=model)
    for name, shape, datatype, raw in inputs:
        req.inputs.add(name=name, shape=shape, datatype=datatype)
        req.raw_input_contents.append(raw)
    return req


@pytest.mark.parametrize(
    "case,model,inputs,code,message",
    [
        (
            "byte_count_mismatch",
            "sam2_encoder",
            [("image", [1, 3, 1024, 1024], "FP32", b"\0" * 16)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "byte size mismatch",
        ),
        (
            "wrong_datatype",
            "sam2_encoder",
            [("image", [1, 3, 1024, 1024], "INT32", b"\0" * 12582912)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "data-type",
        ),
        (
            "batch_beyond_max",
            "sam2_encoder",
            [("image", [9999, 3, 1024, 1024], "FP32", b"")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "batch-size",
        ),
        (
            "nan_coordinates",
            "sam2_decoder",
            [(n, [1, *s], "FP32", b"\0" * (4 * int(np.prod(s)))) for n, s in EMBED.items()]
            + [
                ("point_coords", [1, 1, 2], "FP32", nan_coords.tobytes()),
                ("point_labels", [1, 1], "FP32", np.ones((1, 1), np.float32).tobytes()),
                ("mask_input", [1, 1, 256, 256], "FP32", b"\0" * 262144),
                ("has_mask_input", [1, 1], "FP32", b"\0" * 4),
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
    ],
    ids=["byte_count_mismatch", "wrong_datatype", "batch_beyond_max", "nan_coordinates"],
)
def test_hostile_grpc(triton_server, case, model, inputs, code, message):
    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(triton_server.grpc_url, options=options) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(grpc_request(model, inputs), timeout=60)
        assert err.value.code() == code
        assert message in err.value.details()
        ready = stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10)
        assert ready.ready


# --- broken model files --------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_broken_model_file_leaves_other_models_serving(tiny_repository, tmp_path, damage):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository, repo)
    onnx = repo / "sam2_decoder" / "1" / "model.onnx"
    if damage == "corrupt":
        onnx.write_bytes(os.urandom(4096))
    else:
        onnx.unlink()
    log_path = tmp_path / "triton.log"
    server = EmbeddedTriton(
        repo, free_port(), free_port(), free_port(), config_name="cpu", precheck=False
    )
    with serving(server, log_path, allow_unavailable=True):
        unavailable = server.unavailable_models()
        # sam2_session runs the decoder's graph too: it is unavailable with it, and says why.
        assert sorted(unavailable) == ["sam2_decoder", "sam2_session"]
        assert "sam2_decoder/1/model.onnx" in unavailable["sam2_session"]
        detail = "INVALID_PROTOBUF" if damage == "corrupt" else "file not found"
        assert "sam2_decoder: cannot load" in unavailable["sam2_decoder"]
        assert detail in unavailable["sam2_decoder"]
        base = f"http://{server.http_url}/v2/models"
        assert requests.get(f"{base}/sam2_encoder/ready").status_code == 200
        assert requests.get(f"{base}/sam2_decoder/ready").status_code == 400
        assert requests.get(f"{base}/sam2/ready").status_code == 400
    assert "sam2_decoder: cannot load" in log_path.read_text()


# --- interrupted export ---------------------------------------------------------------------


def test_interrupted_export_leaves_no_model_and_rerun_completes(tiny_checkpoint, tmp_path):
    repo = tmp_path / "repo"
    cmd = [
        sys.executable,
        str(SCRIPTS / "export_onnx.py"),
        "--model",
        "tiny",
        "--checkpoint",
        str(tiny_checkpoint),
        "--repository",
        str(repo),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    encoder_dir = repo / "sam2_encoder" / "1"
    deadline = time.monotonic() + 120
    # Kill it while the encoder graph is being written.
    while time.monotonic() < deadline and not list(encoder_dir.glob(".model.onnx.*.partial")):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (encoder_dir / "model.onnx").exists()
    assert not (repo / "sam2_decoder" / "1" / "model.onnx").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    import onnx

    for model in ("sam2_encoder", "sam2_decoder"):
        onnx.checker.check_model(str(repo / model / "1" / "model.onnx"))
    assert not list(repo.rglob("*.partial")), "stale partial files left behind"


# --- safe defaults --------------------------------------------------------------------------


class _Exploit:
    """Unpickling this runs a shell command: what a booby-trapped checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_never_executed(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Exploit(marker)}, checkpoint)
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "export_onnx.py"), "--model", "tiny"]
        + ["--checkpoint", str(checkpoint), "--repository", str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "is not a PyTorch checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists(), "the checkpoint's code ran"
    assert not (tmp_path / "repo").exists()


def test_every_model_config_bounds_its_queue_and_points():
    from sam2_triton.model_config import MAX_POINTS, MAX_PROMPTS, repository_configs

    for path, config in repository_configs().items():
        if config.platform == "ensemble":
            continue
        if config.HasField("sequence_batching"):
            # Triton's sequence batcher has no queue policy: it bounds the open sessions it
            # schedules per instance (more wait in a backlog); the proxy bounds request rates.
            assert 0 < config.sequence_batching.oldest.max_candidate_sequences <= 4096, path
            assert config.parameters["max_points"].string_value == str(MAX_POINTS), path
            continue
        policy = config.dynamic_batching.default_queue_policy
        assert 0 < policy.max_queue_size <= 1024, path
        if config.name in ("sam2_decoder", "sam2_decoder_prompts", "sam2_prompt_check"):
            assert config.parameters["max_points"].string_value == str(MAX_POINTS), path
        if config.name == "sam2_decoder_prompts":
            assert config.parameters["max_prompts"].string_value == str(MAX_PROMPTS), path


def test_embedded_server_defaults_are_local_and_static(tiny_repository):
    from sam2_triton.cli.serve_local import build_parser

    args = build_parser().parse_args([])
    assert args.host == "127.0.0.1"
    server = EmbeddedTriton(tiny_repository)
    command = server.command(Path("/nonexistent/backends"))
    assert "--model-control-mode=none" in command
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert f"{flag}=127.0.0.1" in command
