"""``sam2_video``: objects tracked through a video by the server equal Meta's video predictor.

The reference is Meta's ``SAM2VideoPredictor`` (``build_sam2_video_predictor``) on the same
weights, run on a folder of JPEG frames as Meta's notebooks do. The video: 12 shifted
256x320 crops of a real photo (the content moves), two objects (points on one, a box on the
other, both on frame 0), propagated, then a further click on frame 6 and a second
propagation from there (a correction, as in Meta's notebooks).

**Cost on CI's CPU.** At SAM2's 1024 px a frame's memory attention alone takes seconds per
object on 2 cores; the tests therefore serve and compare SAM2.1 tiny at 256 px (Meta's
``image_size`` override, applied to both sides alike: the same code, 16 times fewer tokens).
That frames are prepared exactly as Meta's loader prepares them is checked at 1024 px.
Random-init weights would mostly score "no object" (and Meta's predictor then tracks a
-1024 constant), so the checkpoint's occlusion head gets a large bias and the tests assert
that the masks are real logits.

**Tolerance.** Served masks equal Meta's on every pixel whose logit in Meta's predictor is
farther than 0.01 from 0 (the same PyTorch code runs on both sides); object scores within
1e-3.

A small dedicated server (``video_server``: ``sam2_video`` alone, one CPU instance, at most 2
videos of 3 objects) serves HTTP and gRPC.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, assert_real_logits, run_script, serving
from PIL import Image
from test_client_e2e import NO_TORCH, assert_one_line_error

from sam2_triton.client import Sam2Client, SessionLost, UserError
from sam2_triton.model_config import VIDEO

IMAGE_SIZE = 256
MARGIN = 1e-2  # |Meta's logit| above which a pixel's side of 0 must match
SCORE_TOL = 1e-3
FRAMES = 12
POINTS = {"points": [[150.0, 120.0]], "labels": [1]}  # object 1, frame 0
BOX = {"box": [30.0, 30.0, 120.0, 200.0]}  # object 2, frame 0
CLICK = {"points": [[200.0, 150.0]], "labels": [0]}  # object 1, frame 6: a correction
CORRECTED = 6
CLI = ROOT / "client_examples" / "video_client.py"


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def video_checkpoint(tmp_path_factory) -> Path:
    from sam2_triton.testing import save_random_checkpoint

    path = tmp_path_factory.mktemp("video_ckpt") / "sam2.1_hiera_tiny.pt"
    return save_random_checkpoint("tiny", path, seed=0, object_score_bias=20.0)


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory, photos) -> Path:
    """The 12 frames as JPEG files named as Meta's loader wants them (00000.jpg, ...)."""
    from sam2_triton.testing import shifted_crops

    folder = tmp_path_factory.mktemp("frames")
    for i, crop in enumerate(shifted_crops(photos["astronaut"], FRAMES, (256, 320), (6, 8))):
        (folder / f"{i:05d}.jpg").write_bytes(jpeg(crop))
    return folder


@pytest.fixture(scope="module")
def frame_files(frames_dir) -> list[bytes]:
    """The 12 frames' JPEG files, in order, as the engine tests send them."""
    return [p.read_bytes() for p in sorted(frames_dir.glob("*.jpg"))]


@pytest.fixture(scope="module")
def other_video(photos) -> list[bytes]:
    """A second video: 6 moving 200x240 crops of another photo."""
    from sam2_triton.testing import shifted_crops

    return [jpeg(c) for c in shifted_crops(photos["coffee"], 6, (200, 240), (10, 12))]


@pytest.fixture(scope="module")
def meta(video_checkpoint):
    """Meta's video predictor on the checkpoint, at the tests' input size."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    torch.set_grad_enabled(False)
    return build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        str(video_checkpoint),
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={IMAGE_SIZE}"],
    )


def _scores(state: dict, frame: int) -> np.ndarray:
    """Each object's score on ``frame`` from Meta's state (as propagation stored it)."""
    out = []
    for outputs in state["output_dict_per_obj"].values():
        found = outputs["cond_frame_outputs"].get(frame) or outputs["non_cond_frame_outputs"][frame]
        out.append(float(found["object_score_logits"].reshape(-1)[0]))
    return np.asarray(out, np.float32)


@pytest.fixture(scope="module")
def reference(meta, frames_dir) -> dict:
    """Meta's answers for the scenario: each prompt's masks, then the propagations, as
    ``{frame: (logits [O, H, W], scores [O])}``."""
    state = meta.init_state(str(frames_dir))
    answers: dict = {"state_keys": set(state)}
    _, _, logits = meta.add_new_points_or_box(state, 0, 1, **POINTS)
    answers["points"] = logits[:, 0].numpy()
    _, _, logits = meta.add_new_points_or_box(state, 0, 2, **BOX)
    answers["box"] = logits[:, 0].numpy()
    answers["pass1"] = {
        f: (logits[:, 0].numpy(), _scores(state, f))
        for f, _, logits in meta.propagate_in_video(state)
    }
    _, _, logits = meta.add_new_points_or_box(state, CORRECTED, 1, **CLICK)
    answers["click"] = logits[:, 0].numpy()
    answers["pass2"] = {
        f: (logits[:, 0].numpy(), _scores(state, f))
        for f, _, logits in meta.propagate_in_video(state, start_frame_idx=CORRECTED)
    }
    return answers


def assert_masks_equal(masks: np.ndarray, logits: np.ndarray, where: str) -> None:
    """Served ``[O, H, W]`` bool masks equal Meta's logits' sign on confident pixels, and
    Meta's logits are real ones (not the -1024 "no object" constant)."""
    assert masks.shape == logits.shape, (where, masks.shape, logits.shape)
    for obj in range(len(logits)):
        assert_real_logits(logits[obj], (where, obj))
    confident = np.abs(logits) > MARGIN
    assert confident.mean() > 0.5, where
    differ = int(((masks != (logits > 0)) & confident).sum())
    assert differ == 0, f"{where}: {differ} confident pixels differ"


def assert_frames_equal(frames: list, expected: dict, where: str) -> None:
    assert [f.frame_index for f in frames] == sorted(expected), where
    for frame in frames:
        logits, scores = expected[frame.frame_index]
        assert_masks_equal(frame.masks, logits, f"{where} frame {frame.frame_index}")
        assert (scores > 0).all()  # the objects are present: real masks were tracked
        np.testing.assert_allclose(frame.object_scores, scores, atol=SCORE_TOL)


def run_scenario(client: Sam2Client, frames_dir: Path, barrier=None) -> dict:
    """The scenario through the client: frames in requests of 5, prompts, a propagation in
    responses of 5 frames, the click on frame 6, a propagation from there."""
    out: dict = {}
    with client.video_session(frames_per_request=5) as video:
        assert video.add_frames(sorted(frames_dir.glob("*.jpg"))) == FRAMES
        assert video.video_size == (256, 320)
        out["points"] = video.add_prompt(0, 1, **POINTS)
        out["box"] = video.add_prompt(0, 2, **BOX)
        if barrier is not None:
            barrier.wait(timeout=300)
        out["pass1"] = list(video.propagate(frames_per_response=5))
        out["click"] = video.add_prompt(CORRECTED, 1, **CLICK)
        out["pass2"] = list(video.propagate(CORRECTED, frames_per_response=5))
    return out


def assert_scenario_equal(served: dict, reference: dict, where: str) -> None:
    for step in ("points", "box", "click"):
        answer = served[step]
        assert answer.object_ids == ([1] if step == "points" else [1, 2])
        assert_masks_equal(answer.masks, reference[step], f"{where} {step}")
    assert_frames_equal(served["pass1"], reference["pass1"], f"{where} propagation")
    assert_frames_equal(served["pass2"], reference["pass2"], f"{where} after the click")


# --- the server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_server(video_checkpoint, tmp_path_factory):
    """The real embedded tritonserver with sam2_video alone: one CPU instance, the tests'
    input size, at most 2 videos of 20 frames and 3 objects, warmed up at load as a GPU
    instance is (the CPU default skips it)."""
    from sam2_triton import model_config as mc
    from sam2_triton.model_config import write_video_repository
    from sam2_triton.server import EmbeddedTriton, free_port

    params = mc.RepositoryParams.cpu_defaults("tiny")
    video = dataclasses.replace(
        params.video,
        image_size=IMAGE_SIZE,
        max_videos=2,
        max_frames=20,
        max_objects=3,
        warmup=True,
    )
    repo = write_video_repository(
        tmp_path_factory.mktemp("video_repository"),
        video_checkpoint,
        dataclasses.replace(params, video=video),
    )
    server = EmbeddedTriton(
        repository=repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        exit_timeout_s=2,
    )
    with serving(server, tmp_path_factory.mktemp("video_triton") / "tritonserver.log"):
        yield server


def test_video_equals_meta_over_http(video_server, frames_dir, reference):
    with Sam2Client(video_server.http_url, "http", timeout_s=300) as client:
        served = run_scenario(client, frames_dir)
    assert_scenario_equal(served, reference, "http")


def test_grpc_equals_meta_while_another_video_is_tracked(
    video_server, frames_dir, reference, other_video
):
    """The scenario over gRPC while a second video is tracked over HTTP on the same (single)
    instance: the first equals Meta's, the second equals what it gives alone."""

    def second(client: Sam2Client, barrier=None) -> list:
        with client.video_session(frames_per_request=4) as video:
            video.add_frames(other_video)
            video.add_prompt(1, 7, points=[[120.0, 100.0]])
            if barrier is not None:
                barrier.wait(timeout=300)
            spans.append(time.monotonic())
            frames = list(video.propagate(frames_per_response=2))
            spans.append(time.monotonic())
            return frames

    spans: list[float] = []
    with Sam2Client(video_server.http_url, "http", timeout_s=300) as client:
        alone = second(client)
    spans.clear()
    barrier = threading.Barrier(2)
    with (
        Sam2Client(video_server.grpc_url, "grpc", timeout_s=300) as grpc_client,
        Sam2Client(video_server.http_url, "http", timeout_s=300) as http_client,
        ThreadPoolExecutor(2) as pool,
    ):
        first = pool.submit(run_scenario, grpc_client, frames_dir, barrier)
        together = pool.submit(second, http_client, barrier).result()
        served = first.result()
    assert_scenario_equal(served, reference, "grpc")
    assert [f.frame_index for f in together] == [1, 2, 3, 4, 5]
    for a, b in zip(alone, together):
        assert a.object_ids == b.object_ids == [7]
        assert np.array_equal(a.masks, b.masks) and a.masks.any() and not a.masks.all()
        np.testing.assert_array_equal(a.object_scores, b.object_scores)


# --- bad input --------------------------------------------------------------------------------


def send_raw(client: Sam2Client, session_id: int, inputs: dict, start: bool = False) -> dict:
    """One request as it is (no client-side checks)."""
    arrays = {k: np.asarray(v) for k, v in inputs.items()}
    return client.triton.infer_session(
        VIDEO, arrays, ("frame_count",), session_id=session_id, start=start, retry=False
    )


def assert_refused(
    client: Sam2Client, session_id: int, inputs: dict, text: str, start: bool = False
) -> None:
    """A request the server must refuse with ``text`` (one line)."""
    with pytest.raises(UserError) as info:
        send_raw(client, session_id, inputs, start)
    assert text in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_input_gets_400_and_changes_nothing(video_server, frames_dir, photos, protocol):
    """Each mistake is a 400 (gRPC INVALID_ARGUMENT) with its reason; the video it was sent
    to is unchanged (it tracks the same afterwards), and the server stays up."""
    files = sorted(frames_dir.glob("*.jpg"))
    truncated = files[1].read_bytes()[:2000]
    other_size = jpeg(photos["coffee"][:200, :200])
    url = video_server.http_url if protocol == "http" else video_server.grpc_url
    with Sam2Client(url, protocol, timeout_s=300) as client:
        with client.video_session() as video:
            video.add_frames(files[:2])
            video.add_prompt(0, 1, **POINTS)
            before = list(video.propagate())
            cases = [
                (
                    {"frames": np.array([files[2].read_bytes(), other_size], np.object_)},
                    "every frame of a video must have the same size",
                ),
                ({"frames": np.array([b"not an image"], np.object_)}, "cannot read frame 2"),
                ({"frames": np.array([truncated], np.object_)}, "cannot read frame 2"),
                (
                    {"frame_index": [5], "object_id": [1], "point_coords": [[5.0, 5.0]]},
                    "frame_index 5 has not been sent yet: this video has 2 frames",
                ),
                (
                    {"object_id": [9], "remove_object": [True]},
                    "object 9 is not in this video (its objects: [1])",
                ),
                ({"frame_index": [0], "box": [1.0, 1.0, 9.0, 9.0]}, "needs the object_id"),
                (
                    {"frame_index": [0], "object_id": [1], "point_coords": [[400.0, 5.0]]},
                    "outside the image",
                ),
            ]
            for inputs, text in cases:
                assert_refused(client, video.session_id, inputs, text)
            # Nothing of that changed the video: the same frames, the same tracking.
            after = list(video.propagate())
            assert video.frame_count == 2 and video.object_ids == [1]
            for a, b in zip(before, after, strict=True):
                assert np.array_equal(a.masks, b.masks)
                np.testing.assert_array_equal(a.object_scores, b.object_scores)
            for obj in (2, 3):
                video.add_prompt(0, obj, box=[1.0, 1.0, 50.0, 50.0])
            assert_refused(
                client,
                video.session_id,
                {"frame_index": [0], "object_id": [4], "box": [1.0, 1.0, 9.0, 9.0]},
                "at most 3 objects",
            )
            assert video.remove_object(3) == [1, 2]
        # A video that was never started, one whose start has no frame, and propagating
        # before any prompt.
        with pytest.raises(SessionLost, match="START"):
            send_raw(client, 77, {"propagate": [True]})
        assert_refused(client, 78, {"frame_index": [0]}, "must carry its first frame", start=True)
        with client.video_session() as video:
            video.add_frames(files[:1])
            with pytest.raises(UserError, match="add a prompt before propagating"):
                list(video.propagate())
        assert client.triton.client.is_server_ready()


def test_evicted_and_unknown_videos_say_why(video_server, frames_dir):
    """At most 2 videos per instance: a third evicts the least recently used one, whose next
    request is a 400 that says so (SessionLost in the client)."""
    first_frame = sorted(frames_dir.glob("*.jpg"))[:1]
    with Sam2Client(video_server.http_url) as client:
        videos = [client.video_session() for _ in range(3)]
        for video in videos:
            video.add_frames(first_frame)
        with pytest.raises(SessionLost, match="evicted to make room") as info:
            videos[0].add_prompt(0, 1, **POINTS)
        assert "start a new video session" in str(info.value)
        assert videos[2].add_prompt(0, 1, **POINTS).masks.shape == (1, 256, 320)
        for video in videos:
            video.close()


def test_the_instance_warmed_up_before_the_server_was_ready(video_server):
    """The instance's load line states its bound and the warm-up's time (that the warm-up
    keeps nothing is checked in process, below)."""
    lines = [
        line
        for line in video_server.log_path.read_text().splitlines()
        if "sam2_video: CPU instance" in line
    ]
    assert len(lines) == 1, lines
    assert re.search(r'at most 2 videos .* warmed up in \d+\.\d s"?$', lines[0]), lines[0]


def test_health_probe_gets_its_refusal(video_server):
    from sam2_triton.health import probe_server

    (result,) = probe_server(video_server.http_url, models=[VIDEO], timeout=60)
    assert result.healthy and "rejected the probe" in result.detail, result.line()


# --- in-process: frames, state, bounds ----------------------------------------------------------


def test_frames_are_prepared_as_metas_loader_does(tmp_path, photos):
    """At 1024 px, bit for bit: a JPEG; a PNG with an EXIF orientation (Meta's loader ignores
    it, so does the server: the frame is used as stored); a palette PNG."""
    import torch
    from sam2.utils.misc import _load_img_as_tensor

    from sam2_triton.sessions.video import FrameList, decode_frame

    rotated = Image.fromarray(photos["chelsea"])
    exif = rotated.getexif()
    exif[0x0112] = 6
    files = {"photo.jpg": jpeg(photos["coffee"])}
    for name, image, kw in (
        ("rotated.png", rotated, {"exif": exif}),
        ("palette.png", rotated.convert("P"), {}),
    ):
        buffer = io.BytesIO()
        image.save(buffer, "PNG", **kw)
        files[name] = buffer.getvalue()
    frames = FrameList(torch.device("cpu"))
    mean = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    for i, (name, data) in enumerate(files.items()):
        (tmp_path / name).write_bytes(data)
        expected, h, w = _load_img_as_tensor(str(tmp_path / name), 1024)
        expected = (expected.float() - mean) / std  # what load_video_frames does next
        rgb, size = decode_frame(data, 1024, max_pixels=10**8)
        frames.append(rgb)
        assert size == (h, w)
        assert torch.equal(frames[i], expected), name
    # A propagation's batch of frames is the same frames, in its order.
    assert torch.equal(frames.batch([2, 0]), torch.stack([frames[2], frames[0]]))


def cpu_predictor(video_checkpoint: Path) -> tuple[object, list[int]]:
    """The server's video predictor on the CPU at the tests' size, and the list to which each
    run of its image encoder appends the run's batch size."""
    import torch

    from sam2_triton.models import MODEL_SIZES
    from sam2_triton.sessions.video import build_video_predictor

    predictor = build_video_predictor(
        MODEL_SIZES["tiny"], video_checkpoint, torch.device("cpu"), image_size=IMAGE_SIZE
    )
    batches: list[int] = []
    encode = predictor.forward_image
    predictor.forward_image = lambda images: batches.append(len(images)) or encode(images)
    return predictor, batches


def test_bfloat16_predictors_store_the_weights_autocast_casts(video_checkpoint):
    """``build_video_predictor(precision="bfloat16")`` stores the linear and convolution
    layers' weights in bfloat16 (what autocast casts them to at every call) and leaves the
    rest float32; under bfloat16 autocast the image encoder's features are then the same bit
    for bit (CPU autocast here: the GPU's is measured by scripts/gpu/video_weight_cast.py).
    A float32 engine refuses such a predictor."""
    import torch

    from sam2_triton.models import MODEL_SIZES
    from sam2_triton.sessions.video import VideoSessionEngine, build_video_predictor

    cpu = torch.device("cpu")
    build = functools.partial(
        build_video_predictor, MODEL_SIZES["tiny"], video_checkpoint, cpu, image_size=IMAGE_SIZE
    )
    plain, cast = build(), build(precision="bfloat16")
    layers = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    dtypes = {
        (isinstance(m, layers), p.dtype)
        for m in cast.modules()
        for p in m.parameters(recurse=False)
    }
    assert dtypes == {(True, torch.bfloat16), (False, torch.float32)}, dtypes
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    image = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        exact = plain.forward_image(image)["vision_features"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs, ours = plain.forward_image(image), cast.forward_image(image)
    assert not torch.equal(theirs["vision_features"], exact)  # autocast ran in bfloat16
    for key in ("vision_features", "backbone_fpn"):
        a, b = theirs[key], ours[key]
        for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            assert torch.equal(x, y), key
    with pytest.raises(UserError, match="cast for bfloat16"):
        VideoSessionEngine(cast, cpu, precision="float32")


def test_engine_state_is_metas_and_stays_within_its_bound(
    video_checkpoint, frame_files, reference, meta, tmp_path
):
    """The engine's per-video state has exactly the keys of Meta's ``init_state``; after a
    propagation its device tensors fit the stated bound, the tracked part exactly; its host
    frames are 3·S² bytes each. And an object first prompted after the propagation's start
    is tracked from there, where Meta's predictor in float32 fails (SETUP.md: the memory
    cast)."""
    import torch

    from sam2_triton.sessions.video import (
        VideoRequest,
        VideoSessionEngine,
        tracked_bytes,
        video_state_bytes,
    )

    predictor, batches = cpu_predictor(video_checkpoint)
    engine = VideoSessionEngine(predictor, torch.device("cpu"))  # batches of 8, not padded
    files = frame_files[:3]
    (answer,) = engine.execute(
        [VideoRequest(5, start=True, frames=files, object_id=1, frame_index=0, **POINTS)]
    )
    assert not isinstance(answer, Exception), answer
    batches.clear()
    (answer,) = engine.execute([VideoRequest(5, propagate=True)])
    assert list(answer.frame_indices) == [0, 1, 2]
    assert batches == [2]  # frames 1 and 2 at once
    video = engine.store.get(5)
    assert set(video.state) == reference["state_keys"]
    device_bound, host = video_state_bytes(IMAGE_SIZE, 3, 1, max_points=1)
    fixed, _ = video_state_bytes(IMAGE_SIZE, 0, 0)
    used = video.device_bytes()
    assert 3 * tracked_bytes(IMAGE_SIZE) <= used - fixed <= device_bound - fixed
    assert used - fixed - 3 * tracked_bytes(IMAGE_SIZE) == 12  # the one click: 2 floats + label
    assert video.frames.host_bytes == host == 3 * 3 * IMAGE_SIZE**2
    assert tracked_bytes(1024) == 787_460  # the 769 KiB per object and frame SETUP.md states

    late = [VideoRequest(6, start=True, frames=files, object_id=1, frame_index=0, **POINTS)]
    late.append(VideoRequest(6, object_id=2, frame_index=2, **BOX))
    late.append(VideoRequest(6, propagate=True))
    *_, tracked = [engine.execute([r])[0] for r in late]
    assert not isinstance(tracked, Exception), tracked
    assert list(tracked.frame_indices) == [0, 1, 2] and list(tracked.object_ids) == [1, 2]
    assert np.isfinite(tracked.object_scores).all() and tracked.masks[:, 1].any()
    engine.close()
    for i, data in enumerate(files):
        (tmp_path / f"{i:05d}.jpg").write_bytes(data)
    state = meta.init_state(str(tmp_path))
    meta.add_new_points_or_box(state, 0, 1, **POINTS)
    meta.add_new_points_or_box(state, 2, 2, **BOX)
    with pytest.raises(RuntimeError, match="same dtype"):  # if Meta fixes it, drop the cast
        list(meta.propagate_in_video(state))


def test_propagation_encodes_frames_in_batches_with_metas_answers(
    video_checkpoint, frame_files, reference
):
    """With ``feature_batch`` 4, padded as on a GPU, one propagation over the 12 frames runs
    the image encoder on batches of 4, 4 and 3 frames + 1 copy (frame 0, prompted for both
    objects, is not tracked), and answers as Meta's predictor, which encodes one frame at a
    time; afterwards one frame's features stay cached, as in Meta's predictor. The two
    objects are tracked in one batch per frame (``ObjectBatches``), before and after a
    correcting click, with Meta's answers. Warm-up and requests,
    called from two threads, run on the engine's one tracker thread. The engine is
    warmed up first: the warm-up runs the shapes requests will (batch 1 for the click, full
    batches for the propagation, every memory length) and leaves nothing behind. (Unpadded
    batches, as on a CPU: the bound test above and every served test.)"""
    import torch

    from sam2_triton.sessions.video import VideoLimits, VideoRequest, VideoSessionEngine

    predictor, batches = cpu_predictor(video_checkpoint)
    threads = set()
    encode = predictor.forward_image
    predictor.forward_image = lambda images: threads.add(threading.get_ident()) or encode(images)
    limits = VideoLimits(feature_batch=4, max_frames_per_response=FRAMES)
    engine = VideoSessionEngine(predictor, torch.device("cpu"), limits, pad_feature_batches=True)
    with ThreadPoolExecutor(1) as loader:  # Triton may load on another thread than it executes
        assert loader.submit(engine.warm).result() > 0
    # The warm-up's blank video covers every memory length: a click, then 2 + 16 (object
    # pointers) - 1 frames tracked, in full batches.
    tracked_in_warm_up = 1 + max(predictor.num_maskmem, predictor.max_obj_ptrs_in_encoder)
    assert batches == [1] + [4] * -(-tracked_in_warm_up // 4) and len(engine.store) == 0
    for request in (
        VideoRequest(7, start=True, frames=frame_files, object_id=1, frame_index=0, **POINTS),
        VideoRequest(7, object_id=2, frame_index=0, **BOX),
    ):
        (answer,) = engine.execute([request])
        assert not isinstance(answer, Exception), answer
    batches.clear()
    (tracked,) = engine.execute([VideoRequest(7, propagate=True)])
    assert not isinstance(tracked, Exception), tracked
    assert batches == [4, 4, 4]
    expected = reference["pass1"]
    assert list(tracked.frame_indices) == sorted(expected)
    for masks, scores, frame in zip(tracked.masks, tracked.object_scores, tracked.frame_indices):
        assert_masks_equal(masks, expected[frame][0], f"batched features, frame {frame}")
        np.testing.assert_allclose(scores, expected[frame][1], atol=SCORE_TOL)
    assert list(engine.store.get(7).state["cached_features"]) == [FRAMES - 1]
    # Both objects, prompted on frame 0 alone, were tracked in one batch on every frame.
    assert engine.object_batches.runs == {2: FRAMES - 1}
    # A correcting click on a tracked frame (6, object 1) replaces that frame's output (Meta's
    # SAM2.1 keeps it a non-conditioning frame): the objects' memories still line up, so the
    # propagation from there is batched too, and answers as Meta's.
    (click,) = engine.execute([VideoRequest(7, object_id=1, frame_index=CORRECTED, **CLICK)])
    assert not isinstance(click, Exception), click
    (tracked,) = engine.execute([VideoRequest(7, propagate=True, start_frame=CORRECTED)])
    assert engine.object_batches.runs == {2: FRAMES - 1 + FRAMES - CORRECTED}
    expected = reference["pass2"]
    assert list(tracked.frame_indices) == sorted(expected)
    for masks, scores, frame in zip(tracked.masks, tracked.object_scores, tracked.frame_indices):
        assert_masks_equal(masks, expected[frame][0], f"after the click, frame {frame}")
        np.testing.assert_allclose(scores, expected[frame][1], atol=SCORE_TOL)
    # Warm-up and requests ran on the engine's one tracker thread (CUDA graphs are per thread).
    assert len(threads) == 1 and threading.get_ident() not in threads
    engine.close()


def test_objects_prompted_on_different_frames_are_tracked_one_at_a_time(
    video_checkpoint, frames_dir, frame_files, meta
):
    """Object 2 prompted on frames 0 and 3, object 1 on frame 0 alone: their memories differ,
    so ``ObjectBatches`` leaves each frame to Meta's per-object tracking (no batch), and the
    answers equal Meta's predictor given the same prompts."""
    import torch

    from sam2_triton.sessions.video import VideoLimits, VideoRequest, VideoSessionEngine

    prompts = [(0, 1, POINTS), (0, 2, BOX), (3, 2, {"points": [[90.0, 110.0]], "labels": [1]})]
    state = meta.init_state(str(frames_dir))
    for frame, obj, prompt in prompts:
        meta.add_new_points_or_box(state, frame, obj, **prompt)
    expected = {f: logits[:, 0].numpy() for f, _, logits in meta.propagate_in_video(state)}

    predictor, _ = cpu_predictor(video_checkpoint)
    limits = VideoLimits(max_frames_per_response=FRAMES)
    engine = VideoSessionEngine(predictor, torch.device("cpu"), limits)
    engine.execute([VideoRequest(3, start=True, frames=frame_files)])
    for frame, obj, prompt in prompts:
        (answer,) = engine.execute([VideoRequest(3, object_id=obj, frame_index=frame, **prompt)])
        assert not isinstance(answer, Exception), answer
    (tracked,) = engine.execute([VideoRequest(3, propagate=True)])
    assert not isinstance(tracked, Exception), tracked
    assert not engine.object_batches.runs
    assert list(tracked.frame_indices) == sorted(expected)
    for masks, frame in zip(tracked.masks, tracked.frame_indices):
        assert_masks_equal(masks, expected[frame], f"one object at a time, frame {frame}")
    engine.close()


def test_backward_propagation_equals_metas(video_checkpoint, frames_dir, frame_files, meta):
    """Both objects prompted on the last frame, then tracked backwards to frame 0
    (``reverse``, in responses of 5 frames as a client continues them): Meta's
    ``propagate_in_video(reverse=True)``'s masks, the objects in one batch per frame."""
    import torch

    from sam2_triton.sessions.video import VideoLimits, VideoRequest, VideoSessionEngine

    last = FRAMES - 1
    state = meta.init_state(str(frames_dir))
    meta.add_new_points_or_box(state, last, 1, **POINTS)
    meta.add_new_points_or_box(state, last, 2, **BOX)
    expected = {
        f: logits[:, 0].numpy() for f, _, logits in meta.propagate_in_video(state, reverse=True)
    }
    assert sorted(expected) == list(range(FRAMES))

    predictor, _ = cpu_predictor(video_checkpoint)
    engine = VideoSessionEngine(
        predictor, torch.device("cpu"), VideoLimits(max_frames_per_response=5)
    )
    engine.execute([VideoRequest(5, start=True, frames=frame_files)])
    engine.execute([VideoRequest(5, object_id=1, frame_index=last, **POINTS)])
    engine.execute([VideoRequest(5, object_id=2, frame_index=last, **BOX)])
    frames, start = [], last
    while start >= 0:
        (answer,) = engine.execute(
            [VideoRequest(5, propagate=True, reverse=True, start_frame=start)]
        )
        assert not isinstance(answer, Exception), answer
        for masks, frame in zip(answer.masks, answer.frame_indices):
            assert_masks_equal(masks, expected[frame], f"backwards, frame {frame}")
            frames.append(int(frame))
        start = frames[-1] - 1
    assert frames == list(range(last, -1, -1))
    assert engine.object_batches.runs == {2: last}
    engine.close()


def test_compiled_outputs_are_copied_out_of_the_graphs_memory():
    """``_run_graphed`` (each compiled network's call) hands back copies of every tensor of
    the network's output, however nested, so that a later CUDA graph replay cannot overwrite
    what the tracker keeps; everything else passes through."""
    import torch

    from sam2_triton.sessions.video import _run_graphed

    kept = {"fpn": [torch.ones(2, 3), torch.zeros(4)], "vision": torch.arange(5.0), "n": 3}
    out = _run_graphed(lambda x, scale=1: {**kept, "x": x * scale}, torch.ones(2), scale=2)
    assert out["n"] == 3 and torch.equal(out["x"], torch.full((2,), 2.0))
    for mine, theirs in ((out["vision"], kept["vision"]), (out["fpn"][0], kept["fpn"][0])):
        assert torch.equal(mine, theirs) and mine.data_ptr() != theirs.data_ptr()


def test_prompts_run_the_prompt_networks_eager_on_a_compiled_predictor(video_checkpoint):
    """``compile_video_predictor`` makes Meta's VOS predictor with compiled networks (lazily:
    nothing compiles until a call); inside ``eager_prompt_networks`` the prompt encoder and
    mask decoder are their classes' own eager forwards, after it the compiled ones again,
    and the networks a propagation needs stay compiled throughout."""
    from sam2.sam2_video_predictor import SAM2VideoPredictorVOS

    from sam2_triton.sessions.video import compile_video_predictor, eager_prompt_networks

    predictor, _ = cpu_predictor(video_checkpoint)
    compile_video_predictor(predictor, "reduce-overhead")
    assert isinstance(predictor, SAM2VideoPredictorVOS)
    names = ("image_encoder", "memory_encoder", "memory_attention")
    prompt_names = ("sam_prompt_encoder", "sam_mask_decoder")
    compiled = {n: vars(getattr(predictor, n))["forward"] for n in names + prompt_names}
    with eager_prompt_networks(predictor):
        for name in prompt_names:
            module = getattr(predictor, name)
            assert "forward" not in vars(module)
            assert module.forward.__func__ is type(module).forward
        for name in names:
            assert vars(getattr(predictor, name))["forward"] is compiled[name]
    for name in names + prompt_names:
        assert vars(getattr(predictor, name))["forward"] is compiled[name]


def test_a_compiled_engines_tracker_thread_has_its_own_cuda_graph_state(video_checkpoint):
    """torch.compile keeps its CUDA graphs (cudagraph trees) in per-thread state that torch
    2.11 makes only in the thread that imported it: the first compiled run on the engine's
    tracker thread failed on the H100 (``assert torch._C._is_key_in_tls``). A compiled
    engine's tracker thread makes that state when it starts; another new thread has none."""
    import torch
    from torch._inductor import cudagraph_trees

    from sam2_triton.sessions.video import (
        VideoLimits,
        VideoSessionEngine,
        compile_video_predictor,
    )

    def has_state() -> bool:
        return hasattr(cudagraph_trees.local, "tree_manager_containers")

    with ThreadPoolExecutor(1) as plain:
        assert not plain.submit(has_state).result()
    predictor, _ = cpu_predictor(video_checkpoint)
    compile_video_predictor(predictor, "reduce-overhead")
    engine = VideoSessionEngine(predictor, torch.device("cpu"), VideoLimits())
    try:
        assert engine._tracker.submit(has_state).result()
    finally:
        engine.close()


def test_a_compilation_that_fails_at_the_warm_up_leaves_the_engine_eager(video_checkpoint):
    """torch.compile can fail where a server runs (no C compiler for its kernels' launcher,
    a GPU its kernels do not support): the warm-up then gives the compiled networks up, the
    engine tracks with Meta's eager predictor, objects batched, and says why. (The failure
    is forced: each compiled network raises what such a compiler error would.)"""
    import torch
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    from sam2_triton.sessions.video import (
        VideoLimits,
        VideoSessionEngine,
        compile_video_predictor,
    )

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment")

    predictor, batches = cpu_predictor(video_checkpoint)
    compile_video_predictor(predictor, "reduce-overhead")
    for name in ("image_encoder", "memory_encoder", "memory_attention"):
        getattr(predictor, name).forward = no_compiler
    engine = VideoSessionEngine(predictor, torch.device("cpu"), VideoLimits(feature_batch=4))
    try:
        assert engine.compiled and engine.object_batches is None
        assert engine.warm() > 0
        assert engine.compile_error == (
            "RuntimeError: Failed to find C compiler. Please specify via CC environment"
        )
        assert type(predictor) is SAM2VideoPredictor and not engine.compiled
        for name in ("image_encoder", "memory_encoder", "memory_attention"):
            assert "forward" not in vars(getattr(predictor, name))
        assert engine.object_batches is not None
        # The eager warm-up ran whole: the click, then 17 frames in batches of ≤ 4 (unpadded,
        # as on a CPU; the first response of 16 frames holds frame 0 and 15 tracked ones).
        assert batches[-6:] == [1, 4, 4, 4, 3, 2] and len(engine.store) == 0
    finally:
        engine.close()


def test_torch_compile_is_a_gpu_choice_of_the_video_config():
    """``torch_compile`` reaches the GPU config as a parameter model.py reads, reduce-overhead
    by default there, none on the CPU; an unknown mode and any compile on a CPU instance are
    refused before a config is written."""
    from sam2_triton import model_config as mc

    gpu = mc.RepositoryParams(model_size="base_plus")
    eager = dataclasses.replace(gpu, video=dataclasses.replace(gpu.video, torch_compile="none"))
    parameters = mc.video_config(gpu).parameters
    assert parameters["torch_compile"].string_value == "reduce-overhead"  # the GPU default
    assert mc.video_config(eager).parameters["torch_compile"].string_value == "none"
    cpu_defaults = mc.RepositoryParams.cpu_defaults("tiny")
    assert mc.video_config(cpu_defaults).parameters["torch_compile"].string_value == "none"
    with pytest.raises(UserError, match="one of none, reduce-overhead"):
        dataclasses.replace(gpu.video, torch_compile="fast").check("gpu")
    cpu = mc.RepositoryParams.cpu_defaults("tiny").video
    with pytest.raises(UserError, match="without torch.compile"):
        dataclasses.replace(cpu, torch_compile="reduce-overhead").check("cpu")
    with pytest.raises(UserError, match="needs the warm-up"):  # it compiles there
        dataclasses.replace(gpu.video, warmup=False).check("gpu")


def test_the_video_idle_release_is_a_config_choice():
    """``memory_release_idle_s`` reaches sam2_video's configs (5 s by default, 0: never, as
    sam2_session's), configure_repository's ``--video-memory-release-idle`` sets it, and a
    negative value is refused before a config is written."""
    from sam2_triton import model_config as mc
    from sam2_triton.cli.configure_repository import build_parser, params_from_args

    gpu = mc.RepositoryParams(model_size="base_plus")
    assert mc.video_config(gpu).parameters["memory_release_idle_s"].string_value == "5"
    args = build_parser().parse_args(["--video-memory-release-idle", "0.5"])
    changed, _cpu = params_from_args(args)
    assert mc.video_config(changed).parameters["memory_release_idle_s"].string_value == "0.5"
    with pytest.raises(UserError, match="memory_release_idle_s"):
        dataclasses.replace(gpu.video, memory_release_idle_s=-1).check("gpu")


def test_a_video_engine_gives_memory_back_only_after_its_requests(
    video_checkpoint, frame_files, monkeypatch
):
    """Every request of a video engine counts as work for its idle release: none runs until
    ``memory_release_idle_s`` after the request's end, then one does; closing the engine
    stops its thread. A CPU engine has no release of its own (no torch cache to give
    back): the release here has stand-ins for the clock and torch's figures. The tracker's
    thread makes the engine's device its current one before its first task (recorded: it
    needs a GPU)."""
    import torch

    from sam2_triton.sessions import video
    from sam2_triton.sessions.runtime import IdleRelease
    from sam2_triton.sessions.video import VideoLimits, VideoRequest, VideoSessionEngine

    made_current = []
    monkeypatch.setattr(
        video, "make_current", lambda d: made_current.append((d, threading.current_thread().name))
    )
    predictor, _ = cpu_predictor(video_checkpoint)
    engine = VideoSessionEngine(predictor, torch.device("cpu"), VideoLimits(max_videos=1))
    assert engine.idle_release is None and engine.limits.memory_release_idle_s == 5.0
    now, reserved, released = [0.0], [1 << 30], []

    def release():
        released.append(now[0])
        reserved[0] = 0

    idle = engine.idle_release = IdleRelease(
        torch.device("cpu"),
        5.0,
        clock=lambda: now[0],
        reserved=lambda: reserved[0],
        release=release,
    )
    now[0] = 100.0
    (answer,) = engine.execute(
        [VideoRequest(1, start=True, frames=frame_files[:1], object_id=1, frame_index=0, **POINTS)]
    )
    assert not isinstance(answer, Exception), answer
    assert made_current == [(torch.device("cpu"), "video-tracker_0")]
    now[0] = 104.0
    assert idle.poll() is None and released == []  # 4 s after the request, not 104
    now[0] = 105.0
    assert idle.poll() == 1 << 30 and released == [105.0]
    idle.start()
    engine.close()
    assert not idle.running


# --- the CLI and the export -------------------------------------------------------------------


def run_cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    """``python client_examples/video_client.py ARGS`` with torch unimportable (the client
    needs none)."""
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(CLI), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_prompts(path: Path, prompts: list) -> Path:
    path.write_text(json.dumps(prompts))
    return path


def read_masks(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_cli_tracks_a_folder_of_frames(video_server, frames_dir, reference, tmp_path):
    """Every prompt of the file, then one forward propagation: DIR/<object>/<frame>.png equal
    Meta's first propagation; the overlay video has every tracked frame."""
    prompts = write_prompts(
        tmp_path / "prompts.json",
        [{"frame": 0, "object_id": 1, **POINTS}, {"frame": 0, "object_id": 2, **BOX}],
    )
    out, overlay = tmp_path / "masks", tmp_path / "overlay.mp4"
    proc = run_cli(
        *("--video", frames_dir, "--prompts", prompts, "--output", out),
        *("--url", video_server.grpc_url, "--protocol", "grpc", "--visualize", overlay),
        "--json",
    )
    summary = json.loads(proc.stdout)
    assert summary["objects"] == [1, 2] and summary["frames_tracked"] == FRAMES
    assert "tracking" in proc.stderr  # the progress bar
    for obj in (1, 2):
        masks = read_masks(out / str(obj))
        assert sorted(p.name for p in (out / str(obj)).iterdir())[:2] == ["00000.png", "00001.png"]
        assert set(np.unique(masks)) == {0, 255}
        for f in range(FRAMES):
            logits = reference["pass1"][f][0][obj - 1 : obj]
            assert_masks_equal(masks[f : f + 1] == 255, logits, f"cli object {obj} frame {f}")
    import cv2

    capture = cv2.VideoCapture(str(overlay))
    count = 0
    while (ok := capture.read())[0]:
        assert ok[1].shape == (256, 320, 3)
        count += 1
    assert count == FRAMES
    assert not list(tmp_path.glob(".*partial*"))


def test_cli_tracks_a_video_file_from_a_later_frame(video_server, other_video, tmp_path):
    """A video file (decoded by OpenCV, sent as lossless PNGs), a box on frame 2: masks for
    frames 2 to 5 only, at the video's size, equal to the client library's."""
    import cv2

    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (240, 200))
    for data in other_video:
        writer.write(np.asarray(Image.open(io.BytesIO(data)))[..., ::-1])
    writer.release()
    box = {"box": [20.0, 30.0, 150.0, 170.0]}
    prompts = write_prompts(tmp_path / "p.json", [{"frame": 2, "object_id": 4, **box}])
    run_cli(
        *("--video", path, "--prompts", prompts, "--output", tmp_path / "out"),
        *("--url", video_server.http_url, "--no-progress"),
    )
    written = sorted(p.name for p in (tmp_path / "out" / "4").iterdir())
    assert written == ["00002.png", "00003.png", "00004.png", "00005.png"]
    decoded = []
    capture = cv2.VideoCapture(str(path))
    while (ok := capture.read())[0]:
        decoded.append(np.ascontiguousarray(ok[1][..., ::-1]))
    with Sam2Client(video_server.http_url) as client, client.video_session() as video:
        video.add_frames(decoded)
        video.add_prompt(2, 4, **box)
        expected = [f.mask(4) for f in video.propagate()]
    assert np.array_equal(read_masks(tmp_path / "out" / "4") == 255, np.stack(expected))


@pytest.mark.parametrize(
    ("case", "prompts", "text"),
    [
        ("not json", "{", "is not valid JSON"),
        ("not a list", {"frame": 0}, "must hold a non-empty list"),
        ("no object", [{"frame": 0, **POINTS}], "needs 'object_id'"),
        ("no prompt", [{"frame": 0, "object_id": 1}], "needs points or a box"),
        ("frame", [{"frame": 99, "object_id": 1, **POINTS}], "has 12 frames"),
        ("float frame", [{"frame": 1.5, "object_id": 1, **POINTS}], "must be an integer"),
        ("outside", [{"frame": 0, "object_id": 1, "points": [[999, 5]]}], "outside the image"),
        ("unknown key", [{"frame": 0, "object_id": 1, "mask": "m.png"}], "unknown keys: mask"),
    ],
)
def test_cli_refuses_bad_prompts_in_one_line(frames_dir, tmp_path, case, prompts, text):
    """Checked before any server is contacted (the URL is a closed port)."""
    from sam2_triton.server import free_port

    path = tmp_path / "p.json"
    path.write_text(prompts if isinstance(prompts, str) else json.dumps(prompts))
    proc = run_cli(
        *("--video", frames_dir, "--prompts", path, "--output", tmp_path / "o"),
        *("--url", f"127.0.0.1:{free_port()}"),
        check=False,
    )
    assert_one_line_error(proc, text)
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_missing_video_and_an_unreachable_server(frames_dir, tmp_path):
    from sam2_triton.server import free_port

    prompts = write_prompts(tmp_path / "p.json", [{"frame": 0, "object_id": 1, **POINTS}])
    (tmp_path / "empty").mkdir()
    for video, text in (
        (tmp_path / "none.mp4", "video not found"),
        (tmp_path / "empty", "no frames in"),
        (prompts, "cannot read video"),
        (frames_dir, "cannot reach the Triton server"),
    ):
        proc = run_cli(
            *("--video", video, "--prompts", prompts, "--output", tmp_path / "o"),
            *("--url", f"127.0.0.1:{free_port()}"),
            check=False,
        )
        assert_one_line_error(proc, text)


def test_export_writes_the_video_weights(tiny_repository, tiny_checkpoint):
    """The export copies the checkpoint for sam2_video and records its SHA-256 beside it."""
    from sam2_triton.checksums import file_sha256, recorded_sha256

    weights = tiny_repository / VIDEO / "1" / "model.pt"
    assert weights.read_bytes() == tiny_checkpoint.read_bytes()
    assert recorded_sha256(weights) == file_sha256(weights)


def test_quick_video_benchmark_against_the_server(video_server, video_checkpoint, tmp_path):
    """``scripts/benchmark_video.py --quick`` against the running server and Meta's predictor
    in-process: every case ran and both files are written (no timing is asserted)."""
    out = tmp_path / "bench"
    proc = run_script(
        "benchmark_video.py",
        *("--quick", "--url", video_server.grpc_url, "--checkpoint", video_checkpoint),
        *("--videos", "2", "--out", out),
        timeout=600,
    )
    assert "wrote" in proc.stdout
    report = json.loads((out / "results.json").read_text())
    cases = {(r["backend"], r["objects"], r["videos"]) for r in report["results"]}
    in_process = ("meta_in_process", "engine_in_process_feature_batch_1")
    in_process += ("engine_in_process_feature_batch_8",)  # the default --feature-batch
    assert cases == {("served", o, 2) for o in (1, 2)} | {
        (b, o, 1) for b in in_process for o in (1, 2)
    }
    for r in report["results"]:
        assert r["frames_per_video"] == 4, r
        assert r["propagate_fps_per_video"] > 0 and r["end_to_end_fps_total"] > 0, r
        if r["backend"] == "served":  # Triton's own statistics over the case, per request
            # 2 videos: frames (1 request each), prompts (1 or 2), propagation (1), end (1)
            assert r["server"]["requests"] >= 2 * 4, r
            assert 0 < r["server"]["compute_infer_ms"] < 600_000, r
    assert report["config"]["image_size"] == IMAGE_SIZE and report["versions"]["sam2"]
    md = (out / "results.md").read_text()
    assert md.count("| served |") == 2 and md.count("| meta_in_process |") == 2, md
    assert md.count("| engine_in_process_feature_batch_8 |") == 2, md
    assert "Triton's statistics of `sam2_video`" in md, md
    assert report["server"] == {"url": video_server.grpc_url, "started_here": False}
