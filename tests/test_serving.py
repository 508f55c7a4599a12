"""The real embedded tritonserver serves the exported repository correctly.

Everything here goes over the wire to `tritonserver` from the nvidia-pytriton wheel (the
`triton_server` fixture), which loads the unchanged model repository with its CPU configs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import ROOT, run_script
from tritonclient.utils import InferenceServerException

from sam2_triton.export import DECODER_INPUTS, ENCODER_OUTPUTS
from sam2_triton.server import free_port

TOL = 1e-4


def _clients(server):
    return {
        "http": (httpclient, httpclient.InferenceServerClient(server.http_url)),
        "grpc": (grpcclient, grpcclient.InferenceServerClient(server.grpc_url)),
    }


def infer(module, client, model: str, feed: dict, outputs=None) -> dict:
    inputs = []
    for name, value in feed.items():
        dtype = {np.float32: "FP32", np.float64: "FP64", np.int32: "INT32"}[value.dtype.type]
        t = module.InferInput(name, list(value.shape), dtype)
        t.set_data_from_numpy(value)
        inputs.append(t)
    requested = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
    result = client.infer(model, inputs, outputs=requested)
    kw = {"as_json": True} if module is grpcclient else {}
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response(**kw)["outputs"]}


@pytest.fixture(scope="module")
def image(photos) -> np.ndarray:
    """The astronaut as an encoder input [1, 3, 1024, 1024] (any normalised image will do)."""
    import cv2

    x = cv2.resize(photos["astronaut"], (1024, 1024), interpolation=cv2.INTER_LINEAR) / 255.0
    x = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return x.transpose(2, 0, 1)[None].astype(np.float32)


@pytest.fixture(scope="module")
def local(tiny_repository):
    """The same ONNX files run in-process: what the server must reproduce."""

    def session(model):
        path = str(tiny_repository / model / "1" / "model.onnx")
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    return {"encoder": session("sam2_encoder"), "decoder": session("sam2_decoder")}


@pytest.fixture(scope="module")
def features(local, image) -> dict:
    return dict(zip(ENCODER_OUTPUTS, local["encoder"].run(None, {"image": image})))


SERVED = (
    "sam2_encoder",
    "sam2_decoder",
    "sam2_decoder_prompts",
    "sam2_prompt_check",
    "sam2",
    "sam2_session",
    "sam2_video",
)


def prompts(n_points: int = 3, batch: int = 1) -> dict:
    rng = np.random.default_rng(n_points)
    return {
        "point_coords": (rng.random((batch, n_points, 2)) * 1024).astype(np.float32),
        "point_labels": np.tile(np.array([1, 0, 1] * 30, np.float32)[:n_points], (batch, 1)),
        "mask_input": np.zeros((batch, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros((batch, 1), np.float32),
    }


def test_ready_within_budget(triton_server):
    assert triton_server.ready_seconds < 60
    assert requests.get(f"http://{triton_server.http_url}/v2/health/live").status_code == 200
    assert requests.get(f"http://{triton_server.http_url}/v2/health/ready").status_code == 200
    for model in SERVED:
        url = f"http://{triton_server.http_url}/v2/models/{model}/ready"
        assert requests.get(url).status_code == 200, model


def test_metadata_and_config_over_rest(triton_server):
    base = f"http://{triton_server.http_url}/v2/models"
    meta = requests.get(f"{base}/sam2_encoder").json()
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 1024, 1024]}]
    assert {o["name"] for o in meta["outputs"]} == set(ENCODER_OUTPUTS)

    config = requests.get(f"{base}/sam2_decoder/config").json()
    assert config["max_batch_size"] == 16  # the CPU variant (--model-config-name=cpu)
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert [i["name"] for i in config["input"]] == list(DECODER_INPUTS)
    assert config["parameters"]["max_points"]["string_value"] == "64"
    ensemble = requests.get(f"{base}/sam2/config").json()
    assert [s["model_name"] for s in ensemble["ensemble_scheduling"]["step"]] == [
        "sam2_prompt_check",
        "sam2_encoder",
        "sam2_decoder",
    ]
    models = requests.post(f"http://{triton_server.http_url}/v2/repository/index").json()
    assert {m["name"] for m in models} == set(SERVED)
    prompt_batch = requests.get(f"{base}/sam2_decoder_prompts").json()
    shapes = {t["name"]: t["shape"] for t in prompt_batch["inputs"]}
    assert shapes["image_embeddings"] == [1, 256, 64, 64]
    assert shapes["point_coords"] == [-1, -1, 2]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_encoder_decoder_ensemble_equal_in_process(triton_server, local, image, features, protocol):
    module, client = _clients(triton_server)[protocol]
    served = infer(module, client, "sam2_encoder", {"image": image})
    for name in ENCODER_OUTPUTS:
        assert np.abs(served[name] - features[name]).max() <= TOL, name

    feed = {**features, **prompts(3)}
    expected = dict(
        zip(["masks", "iou_predictions", "mmasks", "miou"], local["decoder"].run(None, feed))
    )
    served = infer(module, client, "sam2_decoder", feed)
    assert np.abs(served["masks"] - expected["masks"]).max() <= TOL
    assert np.abs(served["multimask_masks"] - expected["mmasks"]).max() <= TOL

    ensemble = infer(module, client, "sam2", {"image": image, **prompts(3)})
    assert np.abs(ensemble["masks"] - expected["masks"]).max() <= TOL
    assert np.abs(ensemble["iou_predictions"] - expected["iou_predictions"]).max() <= TOL


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_prompt_batch_on_one_image_equals_one_request_per_prompt(triton_server, features, protocol):
    """sam2_decoder_prompts: the features once, K prompt sets → what K requests of
    sam2_decoder give (each carrying its own copy of the features)."""
    module, client = _clients(triton_server)[protocol]
    k = 5
    batch = prompts(3, batch=k)
    batch["point_coords"] += np.arange(k, dtype=np.float32)[:, None, None] * 37  # distinct
    served = infer(module, client, "sam2_decoder_prompts", {**features, **batch})
    assert served["masks"].shape == (k, 1, 256, 256)
    shared_mask = {**features, **batch, "mask_input": batch["mask_input"][:1]}
    assert np.array_equal(
        infer(module, client, "sam2_decoder_prompts", shared_mask)["masks"], served["masks"]
    )
    assert served["multimask_iou_predictions"].shape == (k, 3)
    for i in range(k):
        one = infer(
            module,
            client,
            "sam2_decoder",
            {**features, **{n: v[i : i + 1] for n, v in batch.items()}},
        )
        for name, value in one.items():
            assert np.abs(served[name][i : i + 1] - value).max() <= TOL, (i, name)
    assert np.abs(served["masks"][0] - served["masks"][1]).max() > 10 * TOL  # not one mask K times


def test_only_requested_outputs_are_returned(triton_server, features):
    module, client = _clients(triton_server)["http"]
    out = infer(
        module, client, "sam2_decoder", {**features, **prompts(2)}, outputs=["multimask_masks"]
    )
    assert list(out) == ["multimask_masks"]
    assert out["multimask_masks"].shape == (1, 3, 256, 256)


def test_dynamic_batching_batches_concurrent_requests(triton_server, features):
    client = httpclient.InferenceServerClient(triton_server.http_url, concurrency=16)
    feed = {**features, **prompts(2)}
    inputs = []
    for name, value in feed.items():
        t = httpclient.InferInput(name, list(value.shape), "FP32")
        t.set_data_from_numpy(value)
        inputs.append(t)
    pending = [client.async_infer("sam2_decoder", inputs) for _ in range(16)]
    results = [p.get_result() for p in pending]
    first = results[0].as_numpy("masks")
    assert all(np.abs(r.as_numpy("masks") - first).max() <= TOL for r in results)
    stats = client.get_inference_statistics("sam2_decoder")["model_stats"][0]
    sizes = {int(b["batch_size"]) for b in stats["batch_stats"]}
    assert max(sizes) > 1, f"no batched execution, batch sizes seen: {sizes}"
    client.close()


def test_metrics_include_sam2_models(triton_server):
    text = requests.get(triton_server.metrics_url).text
    for model in SERVED:
        assert f'nv_inference_request_success{{model="{model}",version="1"}}' in text, model


def inference_count(server, model: str) -> int:
    url = f"http://{server.http_url}/v2/models/{model}/stats"
    return int(requests.get(url).json()["model_stats"][0]["inference_count"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ensemble_refuses_a_bad_prompt_before_encoding(triton_server, image, protocol):
    """sam2_prompt_check runs first and the encoder reads its image from it: a prompt the
    backend refuses costs no encoder run."""
    module, client = _clients(triton_server)[protocol]
    encoded = inference_count(triton_server, "sam2_encoder")
    with pytest.raises(InferenceServerException) as err:
        infer(module, client, "sam2", {"image": image, **prompts(65)})
    assert "sam2_prompt_check: 65 points per request, at most 64 are allowed" in str(err.value)
    assert inference_count(triton_server, "sam2_encoder") == encoded


@pytest.mark.parametrize(
    "model,value",
    [("sam2_encoder", "image"), ("sam2_decoder", "image_embeddings"), ("sam2", "image")],
)
def test_outputs_that_come_out_nan_are_a_clear_error(triton_server, features, model, value):
    """Finite inputs far out of range (3e38) overflow inside the model: 400, not NaN masks."""
    feed = {"image": np.full((1, 3, 1024, 1024), 3e38, np.float32)}
    if model == "sam2_decoder":
        feed = {**features, **prompts(2), value: np.full_like(features[value], 3e38)}
    elif model == "sam2":
        feed.update(prompts(2))
    response = post_binary(triton_server, model, feed)
    assert response.status_code == 400, response.text
    assert "came out NaN or infinite" in response.json()["error"]


def post_binary(server, model: str, feed: dict) -> requests.Response:
    """An inference request with the binary tensor extension, as curl would send it."""
    inputs = []
    for name, value in feed.items():
        dtype = {np.float32: "FP32", np.float64: "FP64", np.int32: "INT32"}[value.dtype.type]
        t = httpclient.InferInput(name, list(value.shape), dtype)
        t.set_data_from_numpy(value, binary_data=True)
        inputs.append(t)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs)
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    url = f"http://{server.http_url}/v2/models/{model}/infer"
    return requests.post(url, data=body, headers=headers, timeout=60)


def bad_requests(features) -> dict:
    good = {**features, **prompts(2)}
    nan = {**good, "point_coords": good["point_coords"].copy()}
    nan["point_coords"][0, 0, 0] = np.nan
    mismatch = {**good, "point_labels": np.ones((1, 3), np.float32)}
    bad_label = {**good, "point_labels": np.array([[1, 7]], np.float32)}
    missing = {k: v for k, v in good.items() if k != "has_mask_input"}
    three = prompts(2, batch=3)
    rows_differ = {**features, **three, "mask_input": three["mask_input"][:2]}
    return {
        "wrong_shape": ("sam2_encoder", {"image": np.zeros((1, 3, 64, 64), np.float32)}, "shape"),
        "wrong_dtype": ("sam2_encoder", {"image": np.zeros((1, 3, 4, 4), np.float64)}, "data-type"),
        "missing_input": ("sam2_decoder", missing, "has_mask_input"),
        "nan_coordinates": ("sam2_decoder", nan, "NaN"),
        "too_many_points": ("sam2_decoder", {**features, **prompts(65)}, "at most 64"),
        "labels_do_not_match_points": ("sam2_decoder", mismatch, "does not match"),
        "unknown_label": ("sam2_decoder", bad_label, "point_labels must be"),
        "prompt_rows_differ": ("sam2_decoder_prompts", rows_differ, "has 2 rows but point_coords"),
        "too_many_prompt_sets": (
            "sam2_decoder_prompts",
            {**features, **prompts(2, batch=65)},
            "at most 64 are allowed",
        ),
        "features_of_two_images": (
            "sam2_decoder_prompts",
            {**{n: np.repeat(v, 2, 0) for n, v in features.items()}, **prompts(2, batch=2)},
            "Expected [1,",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong_shape",
        "wrong_dtype",
        "missing_input",
        "nan_coordinates",
        "too_many_points",
        "labels_do_not_match_points",
        "unknown_label",
        "prompt_rows_differ",
        "too_many_prompt_sets",
        "features_of_two_images",
    ],
)
def test_bad_input_gets_400_and_server_stays_ready(triton_server, features, case):
    model, feed, message = bad_requests(features)[case]
    response = post_binary(triton_server, model, feed)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert requests.get(f"http://{triton_server.http_url}/v2/health/ready").status_code == 200


def test_bad_input_over_grpc_is_invalid_argument(triton_server, features):
    module, client = _clients(triton_server)["grpc"]
    model, feed, message = bad_requests(features)["nan_coordinates"]
    with pytest.raises(InferenceServerException) as err:
        infer(module, client, model, feed)
    assert "INVALID_ARGUMENT" in str(err.value.status())
    assert message in err.value.message()


# --- start-up problems: one clear line, non-zero exit -------------------------------------


def _serve(*args, env=None):
    ports = ["--http-port", free_port(), "--grpc-port", free_port(), "--metrics-port"]
    return run_script("serve_local.py", *args, *ports, free_port(), check=False, env=env)


def _assert_one_line_error(proc, text: str):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert text in lines[0]
    assert "Traceback" not in proc.stderr


def test_startup_port_in_use(triton_server, tiny_repository):
    port = triton_server.http_url.rsplit(":", 1)[1]
    proc = run_script(
        "serve_local.py",
        "--repository",
        tiny_repository,
        "--config-name",
        "cpu",
        "--http-port",
        port,
        "--grpc-port",
        free_port(),
        "--metrics-port",
        free_port(),
        check=False,
    )
    _assert_one_line_error(proc, f"port {port}")


def test_startup_missing_model_onnx(tiny_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository, repo, ignore=shutil.ignore_patterns("*.onnx"))
    proc = _serve("--repository", repo, "--config-name", "cpu")
    _assert_one_line_error(proc, "sam2_decoder/1/model.onnx is missing")


def test_startup_unknown_model_to_load(tiny_repository):
    proc = _serve("--repository", tiny_repository, "--config-name", "cpu", "--load-model", "sam3")
    _assert_one_line_error(proc, "no model sam3 in")


def test_the_cuda_memory_pool_is_kept_for_the_models_that_use_it():
    """2 GiB for the GPU configs unless every model loaded answers from host memory (then
    none: its GPU memory would be allocated and never used); Triton's own default on a CPU."""
    from sam2_triton.cli.serve_local import default_cuda_memory_pool_mb
    from sam2_triton.server import EmbeddedTriton

    assert default_cuda_memory_pool_mb(None, None) == 2048
    assert default_cuda_memory_pool_mb(None, ["sam2_session"]) == 0
    assert default_cuda_memory_pool_mb(None, ["sam2_session", "sam2_video"]) == 0
    none = EmbeddedTriton(Path("r"), cuda_memory_pool_mb=0, pinned_memory_pool_mb=0, gpu_count=1)
    pools = [a for a in none.command(Path("b")) if "memory-pool" in a]
    assert pools == ["--cuda-memory-pool-byte-size=0:0", "--pinned-memory-pool-byte-size=0"]
    # Triton sizes the pool per GPU: each GPU of the machine gets it, not GPU 0 alone.
    two_gpus = EmbeddedTriton(Path("r"), cuda_memory_pool_mb=2048, gpu_count=2)
    pools = [a for a in two_gpus.command(Path("b")) if "memory-pool" in a]
    assert pools == [f"--cuda-memory-pool-byte-size={gpu}:{2048 << 20}" for gpu in (0, 1)]
    assert default_cuda_memory_pool_mb(None, ["sam2_session", "sam2"]) == 2048
    assert default_cuda_memory_pool_mb("cpu", None) is None
    server = EmbeddedTriton(Path("r"), models=["sam2_session"])
    command = server.command(Path("b"))
    assert "--model-control-mode=explicit" in command
    assert "--load-model=sam2_session" in command
    # Explicit control opens the repository API: closed but to this server's secret.
    ((header, key),) = server.repository_api_headers.items()
    restriction = f"model-repository:{header}={key}"
    assert f"--http-restricted-api={restriction}" in command
    assert f"--grpc-restricted-protocol={restriction}" in command
    assert len(key) >= 24 and key != EmbeddedTriton(Path("r"), models=["x"]).repository_api_key
    everything = EmbeddedTriton(Path("r"))
    assert "--model-control-mode=none" in everything.command(Path("b"))
    assert everything.repository_api_headers == {}


def test_startup_without_tritonserver(tiny_repository):
    # The same CLI in an interpreter where the nvidia-pytriton package cannot be imported.
    code = (
        "import sys; sys.modules['pytriton'] = None; "
        "from sam2_triton.cli.serve_local import cli; cli()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--repository", str(tiny_repository)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    _assert_one_line_error(proc, "tritonserver is not installed")


def test_server_log_names_backend_choice(triton_server):
    log = triton_server.log_path.read_text()
    # Which file, which runtime, which providers: what a user checks when a model is slow.
    assert "sam2_encoder: model.onnx on ONNX Runtime" in log and "CPUExecutionProvider" in log
