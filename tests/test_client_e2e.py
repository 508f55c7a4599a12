"""The client over the real embedded tritonserver equals Meta's ``SAM2ImagePredictor``.

``triton_server`` (conftest) serves ``tiny_repository`` on CPU. The CLI runs as a user runs
it, ``python client_examples/inference_client.py ...`` in a new process, with ``torch``
made unimportable to prove the client needs none. Masks it writes are compared with the
predictor on the same weights (see ``test_client_pipeline.py`` for the tolerances).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from conftest import ROOT, repository_of, serving
from PIL import Image
from test_client_pipeline import (
    LOGIT_TOL,
    MARGIN,
    MAX_MASK_MISMATCH,
    PROMPT_CASES,
    assert_matches,
    predictor_states,
)

from sam2_triton.client import Sam2Client, UserError

CLI = ROOT / "client_examples" / "inference_client.py"
NO_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run_client(*args, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python client_examples/inference_client.py ARGS`` with torch unimportable."""
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(CLI), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *texts: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for text in texts:
        assert text in lines[0], lines[0]


@pytest.fixture(scope="module")
def photo_files(photos, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, image in photos.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(image).save(paths[name])
    return paths


@pytest.fixture(scope="module")
def reference(predictor):
    return predictor_states(predictor)


def read_mask(path) -> np.ndarray:
    mask = np.asarray(Image.open(path))
    assert mask.dtype == np.uint8 and mask.ndim == 2
    assert set(np.unique(mask).tolist()) <= {0, 255}
    return mask == 255


def assert_mask_matches(mask: np.ndarray, ref_logits: np.ndarray) -> None:
    assert mask.shape == ref_logits.shape
    confident = np.abs(ref_logits) > MARGIN
    differ = ((mask != (ref_logits > 0)) & confident).sum() / max(confident.sum(), 1)
    assert differ <= MAX_MASK_MISMATCH, differ


def inference_count(server, model: str) -> int:
    """Inferences ``model`` has run so far: batch rows, or requests where Triton does not
    batch the model (sam2_decoder_prompts)."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics(model)["model_stats"][0]
        return int(stats["inference_count"])
    finally:
        client.close()


def encoder_count(server) -> int:
    """Images the server's sam2_encoder has encoded so far."""
    return inference_count(server, "sam2_encoder")


# --- the CLI over HTTP, gRPC and shared memory ------------------------------------------------

#: protocol, photo, and the prompt sets of one run (all kinds, single and multimask, spread
#: over the two runs; each run's first set is one point with multimask, then refined).
CLI_RUNS = {
    "http": (
        "http",
        "astronaut",
        [
            ("one_point", True),
            ("points_with_negative", False),
            ("box", True),
            ("box_and_point", False),
        ],
    ),
    "grpc": (
        "grpc",
        "coffee",
        [
            ("one_point", True),
            ("points_with_negative", True),
            ("box", False),
            ("box_and_point", True),
        ],
    ),
}


@pytest.mark.parametrize("run", list(CLI_RUNS))
def test_cli_prompt_sets_and_refinement_equal_predictor(
    triton_server, photos, photo_files, reference, tmp_path, run
):
    """Over HTTP the CLI's default, a session on sam2_session; over gRPC ``--stateless``
    (sam2_encoder once, prompt sets of equal point count in one sam2_decoder_prompts
    request). The same files and answers either way."""
    protocol, photo, cases = CLI_RUNS[run]
    stateless = protocol == "grpc"
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    image = photos[photo]
    hw = image.shape[:2]
    sets = [{**PROMPT_CASES[name].pixels(hw), "multimask": multi} for name, multi in cases]
    (tmp_path / "prompts.json").write_text(json.dumps(sets))
    common = ["--url", url, "--protocol", protocol, "--image", photo_files[photo]]
    common += ["--stateless"] if stateless else []
    encodes = encoder_count(triton_server)
    prompt_batches = inference_count(triton_server, "sam2_decoder_prompts")
    session_requests = inference_count(triton_server, "sam2_session")
    proc = run_client(
        *common,
        "--prompts",
        tmp_path / "prompts.json",
        "--output",
        tmp_path / "best.png",
        "--output-all",
        tmp_path / "all",
        "--save-low-res",
        tmp_path / "low.npy",
        "--visualize",
        tmp_path / "overlay.png",
        "--json",
    )
    report = json.loads(proc.stdout)
    assert report["mode"] == ("stateless" if stateless else "session")
    if stateless:
        assert encoder_count(triton_server) == encodes + 1  # one encoding for all prompt sets
        # The two sets of 3 points with the same multimask flag went in one request.
        assert inference_count(triton_server, "sam2_decoder_prompts") == prompt_batches + 1
    else:
        # One request per prompt set (the first with the image), and the closing one.
        assert inference_count(triton_server, "sam2_session") == session_requests + len(sets) + 1
        assert encoder_count(triton_server) == encodes
    assert (report["height"], report["width"]) == hw
    assert len(report["results"]) == len(sets)
    refs = []
    for i, (prompt_set, result) in enumerate(zip(sets, report["results"])):
        kw = {k: v for k, v in prompt_set.items() if k != "multimask"}
        ref = reference.predict(photo, image, prompt_set["multimask"], **kw)
        refs.append(ref)
        count = 3 if prompt_set["multimask"] else 1
        assert len(result["iou_predictions"]) == count == len(result["mask_areas"])
        assert np.abs(np.array(result["iou_predictions"]) - ref.iou).max() <= LOGIT_TOL
        best = result["best"]
        assert best == int(np.argmax(ref.iou))
        for k in range(count):
            mask = read_mask(tmp_path / "all" / f"prompt_{i}_mask_{k}.png")
            assert_mask_matches(mask, ref.logits[k])
            assert int(mask.sum()) == result["mask_areas"][k]
        assert np.array_equal(
            read_mask(tmp_path / f"best_{i}.png"),
            read_mask(tmp_path / "all" / f"prompt_{i}_mask_{best}.png"),
        )
        low = np.load(tmp_path / f"low_{i}.npy")
        assert low.shape == (1, 256, 256)
        assert np.abs(low - ref.low_res[best : best + 1]).max() <= LOGIT_TOL
        overlay = np.asarray(Image.open(tmp_path / f"overlay_{i}.png"))
        assert overlay.shape == (*hw, 3)
    assert not list(tmp_path.rglob("*.partial"))  # atomic writes leave nothing behind

    # Refinement: set 0's best low-res mask (--save-low-res) back in with more clicks; over
    # gRPC also through shared memory.
    second = PROMPT_CASES["points_with_negative"].pixels(hw)
    proc = run_client(
        *common,
        *(["--shared-memory"] if protocol == "grpc" else []),
        "--points",
        *[f"{x},{y}" for x, y in second["points"]],
        "--labels",
        *map(str, second["labels"]),
        "--mask-input",
        tmp_path / "low_0.npy",
        "--output",
        tmp_path / "refined.png",
        "--json",
    )
    refined = json.loads(proc.stdout)
    assert refined["shared_memory"] is (protocol == "grpc")
    assert refined["results"][0]["prompt"]["mask_input"] is True
    prev = refs[0].low_res[np.argmax(refs[0].iou)][None]
    ref = reference.predict(photo, image, False, mask_input=prev, **second)
    assert abs(refined["results"][0]["iou_predictions"][0] - ref.iou[0]) <= LOGIT_TOL
    assert_mask_matches(read_mask(tmp_path / "refined.png"), ref.logits[0])


# --- the library over the wire ------------------------------------------------------------------


def test_client_library_equals_predictor_and_caches(triton_server, photos, reference):
    image = photos["chelsea"]
    hw = image.shape[:2]
    with Sam2Client(triton_server.http_url, "http") as client:
        assert client.wait_until_ready(timeout=30) < 30
        before = encoder_count(triton_server)
        embedding = client.encode_image(image)
        assert encoder_count(triton_server) == before + 1
        for case in PROMPT_CASES.values():
            for multimask in (False, True):
                pred = client.decode(embedding, **case.pixels(hw), multimask=multimask)
                ref = reference.predict("chelsea", image, multimask, **case.pixels(hw))
                assert_matches(pred, ref)
        # Refinement with the previous prediction's clamped low-res logits.
        one_point = PROMPT_CASES["one_point"].pixels(hw)
        first = client.decode(embedding, **one_point, multimask=True)
        second = PROMPT_CASES["points_with_negative"].pixels(hw)
        pred = client.decode(embedding, **second, mask_input=first.low_res_logits[first.best_index])
        prev = reference.predict("chelsea", image, True, **one_point)
        prev = prev.low_res[np.argmax(prev.iou)][None]
        assert_matches(pred, reference.predict("chelsea", image, False, mask_input=prev, **second))
        # Many prompt sets at once: those of equal point count share one sam2_decoder_prompts
        # request (the features sent once), each answer equal to the predictor's.
        h, w = hw
        clicks = [{"points": [[w * x, h * 0.5]], "labels": [1]} for x in (0.2, 0.5, 0.8)]
        sets = [case.pixels(hw) for case in PROMPT_CASES.values()] + clicks
        requests_before = inference_count(triton_server, "sam2_decoder_prompts")
        for multimask in (False, True):
            preds = client.decode_batch(embedding, sets, multimask=multimask)
            assert len(preds) == len(sets)
            for pred, prompt in zip(preds, sets):
                assert_matches(pred, reference.predict("chelsea", image, multimask, **prompt))
        # Per call, one request for the 4 sets of 1 point and one for the 2 sets of 3 points;
        # the lone box (2 points) went to sam2_decoder.
        assert inference_count(triton_server, "sam2_decoder_prompts") == requests_before + 2 * 2
        # The embedding cache: the same pixels again are not sent to the encoder.
        again = client.encode_image(image.copy())
        assert again is embedding and client.stats.hits == 1
        assert encoder_count(triton_server) == before + 1


def test_shared_memory_mode(triton_server, photos, reference):
    image = photos["coffee"]
    prompt = PROMPT_CASES["box_and_point"].pixels(image.shape[:2])
    ref = reference.predict("coffee", image, True, **prompt)
    admin = httpclient.InferenceServerClient(triton_server.http_url)
    with Sam2Client(triton_server.http_url, "http", shared_memory=True, cache_size=1) as client:
        embedding = client.encode_image(image)
        regions = client.triton.shared_memory_regions()
        assert len(regions) == 2  # this embedding's features, and the image
        features_region, image_region = regions
        registered = {r["name"] for r in admin.get_system_shared_memory_status()}
        assert set(regions) <= registered
        assert_matches(client.decode(embedding, **prompt, multimask=True), ref)
        # A prompt batch reads the same region: K prompt sets, no features in the request.
        batch = client.decode_batch(embedding, [prompt] * 3, multimask=True)
        for pred in batch:
            assert_matches(pred, ref)

        # The decoder reads the features from shared memory, not from the request: zeroing
        # the region changes the result.
        saved = embedding.numpy()
        offset, shape = embedding.features.layout["image_embeddings"]
        handle = embedding.features.region.handle
        shm.set_shared_memory_region(handle, [np.zeros(shape, np.float32)], offset)
        changed = client.decode(embedding, **prompt, multimask=True)
        assert np.abs(changed.low_res_logits - ref.low_res).max() > 10 * LOGIT_TOL
        shm.set_shared_memory_region(handle, [saved["image_embeddings"]], offset)

        # Evicting (cache_size=1) unregisters the region; the embedding keeps working.
        client.encode_image(photos["chelsea"][:8, :8])
        registered = {r["name"] for r in admin.get_system_shared_memory_status()}
        assert features_region not in registered and image_region in registered
        assert_matches(client.decode(embedding, **prompt, multimask=True), ref)
        ours = set(client.triton.shared_memory_regions())
    registered = {r["name"] for r in admin.get_system_shared_memory_status()}
    assert ours and not ours & registered  # close() unregistered everything
    admin.close()


def test_library_errors_are_user_errors(triton_server):
    from sam2_triton.server import free_port

    unreachable = pytest.raises(UserError, match="cannot reach the Triton server")
    with Sam2Client(f"127.0.0.1:{free_port()}") as client, unreachable:
        client.check_ready()
    unreachable = pytest.raises(UserError, match="cannot reach the Triton server")
    with Sam2Client(f"127.0.0.1:{free_port()}", "grpc") as client, unreachable:
        client.encode_image(np.zeros((4, 4, 3), np.uint8))
    with Sam2Client(triton_server.http_url, encoder_model="nope") as client:
        with pytest.raises(UserError, match="model nope is not ready .*no such model"):
            client.check_ready()
        with pytest.raises(UserError, match="waited 1 s"):
            client.wait_until_ready(timeout=1)
    with pytest.raises(UserError, match="HOST:PORT"):
        Sam2Client("http://localhost:8000")
    with pytest.raises(UserError, match="protocol"):
        Sam2Client("localhost:8000", "websocket")


# --- CLI user errors: one line on stderr, exit 2, no traceback ----------------------------------


@pytest.fixture(scope="module")
def broken_server(tiny_repository, tmp_path_factory):
    """A real tritonserver whose sam2_encoder cannot load (its ONNX file is garbage), nor
    sam2_session, which runs the same file."""
    from sam2_triton.server import EmbeddedTriton, free_port

    repo = tmp_path_factory.mktemp("broken_repository")
    shutil.copytree(tiny_repository / "sam2_decoder", repo / "sam2_decoder")
    shutil.copytree(tiny_repository / "sam2_session", repo / "sam2_session")
    shutil.copytree(
        tiny_repository / "sam2_encoder",
        repo / "sam2_encoder",
        ignore=shutil.ignore_patterns("*.onnx"),
    )
    (repo / "sam2_encoder" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = EmbeddedTriton(
        repository=repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        config_name="cpu",
        exit_timeout_s=0,
    )
    log = tmp_path_factory.mktemp("broken_log") / "tritonserver.log"
    with serving(server, log, allow_unavailable=True):
        yield server


@pytest.mark.parametrize(
    ("flags", "model"), [([], "sam2_session"), (["--stateless"], "sam2_encoder")]
)
def test_cli_model_not_ready(broken_server, photo_files, flags, model):
    proc = run_client(
        "--url",
        broken_server.http_url,
        "--image",
        photo_files["chelsea"],
        "--points",
        "10,10",
        *flags,
        check=False,
    )
    assert_one_line_error(proc, f"model {model} is not ready", "UNAVAILABLE")


def test_cli_unreachable_server(photo_files):
    from sam2_triton.server import free_port

    for protocol in ("http", "grpc"):
        port = free_port()
        proc = run_client(
            "--url",
            f"127.0.0.1:{port}",
            "--protocol",
            protocol,
            "--image",
            photo_files["chelsea"],
            "--points",
            "10,10",
            check=False,
        )
        assert_one_line_error(proc, f"cannot reach the Triton server at 127.0.0.1:{port}")


CLI_ERRORS = {
    "missing_image": (["--image", "{tmp}/missing.jpg", "--points", "1,1"], "image not found"),
    "unreadable_image": (
        ["--image", "{tmp}/notes.jpg", "--points", "1,1"],
        "cannot read image {tmp}/notes.jpg: not an image file",
    ),
    "point_outside": (["--points", "452,10"], "point 1 (452, 10) is outside the image"),
    # A leading "-" must not make argparse read the point as an option.
    "negative_point": (["--points", "5,5", "-5,10"], "point 2 (-5, 10) is outside the image"),
    "negative_box": (["--box", "-1.5,2,30,40"], "box (-1.5, 2, 30, 40) is outside the image"),
    "malformed_point": (["--points", "10;20"], "malformed point '10;20'"),
    "malformed_box": (["--box", "1,2,3,x"], "malformed box"),
    "malformed_label": (["--points", "1,1", "--labels", "yes"], "malformed label 'yes'"),
    "labels_count": (["--points", "1,1", "2,2", "--labels", "1"], "1 label for 2 points"),
    "labels_count_2": (["--points", "1,1", "--labels", "1", "0"], "2 labels for 1 point:"),
    "no_prompt": ([], "give a prompt"),
    "bad_url": (["--points", "1,1", "--url", "http://{url}"], "HOST:PORT"),
    "bad_mask_input": (["--points", "1,1", "--mask-input", "{tmp}/notes.jpg"], "mask input"),
    "bad_prompts_file": (["--prompts", "{tmp}/notes.jpg"], "not valid JSON"),
}


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_cli_user_errors(triton_server, photo_files, tmp_path, case):
    (tmp_path / "notes.jpg").write_text("not an image\n")
    args, message = CLI_ERRORS[case]
    args = [a.format(tmp=tmp_path, url=triton_server.http_url) for a in args]
    if "--image" not in args:
        args = ["--image", photo_files["chelsea"], *args]
    if "--url" not in args:
        args = ["--url", triton_server.http_url, *args]
    proc = run_client(*args, "--output", tmp_path / "mask.png", check=False)
    assert_one_line_error(proc, message.format(tmp=tmp_path))
    assert not (tmp_path / "mask.png").exists()


#: --protocol, the server's port it is pointed at, and what the one error line must say.
WRONG_PORTS = {
    "http_at_grpc_port": ("http", "grpc", "the answer is not HTTP (is this Triton's gRPC port?"),
    "http_at_metrics_port": ("http", "metrics", "not Triton's JSON"),
    "grpc_at_http_port": ("grpc", "http", "is this its gRPC port?"),
    "grpc_at_metrics_port": ("grpc", "metrics", "is this its gRPC port?"),
}


@pytest.mark.parametrize("case", list(WRONG_PORTS))
def test_cli_wrong_port(triton_server, photo_files, tmp_path, case):
    """The right server, the wrong port for the protocol: one line naming the likely cause."""
    protocol, port, message = WRONG_PORTS[case]
    url = {
        "http": triton_server.http_url,
        "grpc": triton_server.grpc_url,
        "metrics": triton_server.metrics_url.split("//")[1].split("/")[0],
    }[port]
    args = ["--url", url, "--protocol", protocol, "--image", photo_files["chelsea"]]
    proc = run_client(*args, "--points", "10,10", "--output", tmp_path / "m.png", check=False)
    assert_one_line_error(proc, url, message)
    assert not (tmp_path / "m.png").exists()


# --- one client, many threads; a server restart under shared memory ---------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_one_client_shared_by_eight_threads(triton_server, photos, protocol):
    """Eight threads share one client (the stateless path in all, a session in every other
    one: a session start encodes); every answer equals the single-threaded one, and the
    client still works in its own thread afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    image = photos["chelsea"]
    hw = image.shape[:2]
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    prompts = [
        {"points": [[hw[1] * (0.1 + 0.1 * i), hw[0] * 0.5]], "labels": [1]} for i in range(8)
    ]
    with Sam2Client(url, protocol) as client:
        embedding = client.encode_image(image)
        alone = [client.decode(embedding, **p).masks for p in prompts]

        def work(i: int):
            stateless = client.decode(embedding, **prompts[i]).masks
            if i % 2:
                return stateless, None
            with client.session(image) as session:
                return stateless, session.predict(**prompts[i]).masks

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        for i, (expected, (stateless, in_session)) in enumerate(zip(alone, results)):
            assert np.array_equal(stateless, expected)
            assert i % 2 or np.array_equal(in_session, expected)
        assert np.array_equal(client.decode(embedding, **prompts[0]).masks, alone[0])


@pytest.fixture
def restartable_server(tiny_repository, tmp_path):
    from sam2_triton.server import EmbeddedTriton, free_port

    # The two models the client calls: each start takes seconds, not all models' load.
    repository = repository_of(tiny_repository, tmp_path / "repo", "sam2_encoder", "sam2_decoder")
    server = EmbeddedTriton(
        repository=repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        config_name="cpu",
        exit_timeout_s=2,
    )
    with serving(server, tmp_path / "tritonserver.log"):
        yield server


def test_shared_memory_client_survives_a_server_restart(restartable_server, photos):
    """The server forgets registered regions when it restarts; the client registers its
    regions again (their contents are its own) and the same embedding decodes the same."""
    image = photos["coffee"]
    prompt = PROMPT_CASES["box"].pixels(image.shape[:2])
    server = restartable_server
    with Sam2Client(server.grpc_url, "grpc", shared_memory=True, retries=20) as client:
        embedding = client.encode_image(image)
        before = client.decode(embedding, **prompt)
        server.stop()
        with open(server.log_path, "a") as log:
            server.start(stdout=log, stderr=subprocess.STDOUT)
        server.wait_ready(timeout=120)
        after = client.decode(embedding, **prompt)
        assert np.array_equal(after.masks, before.masks)
        fresh = client.encode_image(photos["chelsea"])  # a new encode works too
        assert client.decode(fresh, points=[[10, 10]]).masks.shape[1:] == (300, 451)
