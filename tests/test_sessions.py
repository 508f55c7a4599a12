"""``sam2_session``: the image once, then prompts alone; masks equal Meta's predictor.

In-process (:class:`ImageSessionEngine` on the ONNX files) and over the real embedded Triton
(``triton_server``: CPU configs, two ``sam2_session`` instances) through
:class:`~sam2_triton.client.Sam2Session`, over HTTP and gRPC. The reference is Meta's
``SAM2ImagePredictor`` on the same weights and photos (tolerances of
``test_client_pipeline.py``: logits within 1e-3, masks equal on confident pixels).

A second, small server (``small_server``: one instance, at most 2 sessions, a 3 s idle
timeout) shows the bounds: eviction, expiry, and memory that does not grow with sessions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import math
import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from conftest import assert_real_logits, run_script, serving
from PIL import Image
from test_client_pipeline import (
    LOGIT_TOL,
    MARGIN,
    MAX_MASK_MISMATCH,
    PROMPT_CASES,
    predictor_states,
)

from sam2_triton.client import Sam2Client, SessionLost, UserError
from sam2_triton.client.outputs import rle_to_mask
from sam2_triton.files import write_text_atomic
from sam2_triton.model_config import SESSION, SESSION_HEADER

#: The prompt sequence of one session: (case, multimask, refine with the previous mask).
STEPS = [
    ("one_point", False, False),
    ("points_with_negative", True, False),
    ("box", True, False),
    ("box_and_point", False, True),
]


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def reference(predictor):
    return predictor_states(predictor)


def reference_steps(reference, name: str, image: np.ndarray) -> list:
    """Meta's answers for :data:`STEPS` on ``image``, each refinement with the previous
    answer's best low-res logits (as Meta's notebooks do: ``logits[np.argmax(scores)]``)."""
    answers, previous = [], None
    for case, multimask, refine in STEPS:
        prompt = PROMPT_CASES[case].pixels(image.shape[:2])
        mask_input = previous if refine else None
        ref = reference.predict(name, image, multimask, mask_input, **prompt)
        answers.append(ref)
        previous = ref.low_res[np.argmax(ref.iou)][None]
    return answers


def assert_same(masks: np.ndarray, iou, low_res, ref) -> None:
    """Server answer (bool masks at the original size, IoU, clamped low-res logits) equal to
    the predictor's on real logits (random-init logits are small: no -1024 constant here)."""
    assert masks.shape == ref.logits.shape, (masks.shape, ref.logits.shape)
    # (The image predictor's path has no -1024 fill; this proves it.)
    assert_real_logits(ref.low_res)
    assert np.abs(np.asarray(iou) - ref.iou).max() <= LOGIT_TOL
    if low_res is not None:
        assert np.abs(low_res - ref.low_res).max() <= LOGIT_TOL
    confident = np.abs(ref.logits) > MARGIN
    differ = ((masks != (ref.logits > 0)) & confident).sum() / max(confident.sum(), 1)
    assert differ <= MAX_MASK_MISMATCH, differ


# --- in-process: the engine itself ------------------------------------------------------------


def make_engine(repository: Path, networks=None):
    import torch

    from sam2_triton.sessions.image import ImageSessionEngine, SessionLimits

    return ImageSessionEngine(
        repository / "sam2_encoder" / "1" / "model.onnx",
        repository / "sam2_decoder" / "1" / "model.onnx",
        torch.device("cpu"),
        SessionLimits(max_sessions=4),
        torch_networks=networks,
    )


@pytest.fixture(scope="module")
def engine(tiny_repository):
    """The engine on the exported ONNX files (the CPU config's runtime)."""
    return make_engine(tiny_repository)


@pytest.fixture(scope="module")
def pytorch_engine(tiny_repository, tiny_checkpoint):
    """The engine on the PyTorch modules the ONNX files are traced from (eager on a CPU)."""
    from sam2_triton.sessions.torch_networks import TorchNetworks

    return make_engine(tiny_repository, TorchNetworks("tiny", tiny_checkpoint))


@pytest.mark.parametrize("runtime", ["engine", "pytorch_engine"])
def test_engine_equals_predictor_over_a_session(request, runtime, reference, photos):
    """Every step of a session (single/multimask, negative points, box, box + point,
    refinement with the kept mask), in-process, equals the predictor's logits: on ONNX
    Runtime and on the PyTorch runtime."""
    from sam2_triton.sessions.image import SessionRequest

    engine = request.getfixturevalue(runtime)

    image = photos["coffee"]
    refs = reference_steps(reference, "coffee", image)
    for step, ((case, multimask, refine), ref) in enumerate(zip(STEPS, refs)):
        kw = PROMPT_CASES[case].pixels(image.shape[:2])
        request = SessionRequest(
            session_id=7,
            start=step == 0,
            image_bytes=png_bytes(image) if step == 0 else None,
            points=None if "points" not in kw else np.asarray(kw["points"], np.float32),
            labels=None if "labels" not in kw else np.asarray(kw["labels"]),
            box=None if "box" not in kw else np.asarray(kw["box"], np.float32),
            multimask=multimask,
            use_previous_mask=refine,
        )
        (answer,) = engine.execute([request])
        assert not isinstance(answer, Exception), answer
        assert answer.image_size == image.shape[:2]
        assert_same(answer.masks.astype(bool), answer.iou_predictions, answer.low_res_masks, ref)
        best = answer.masks[np.argmax(answer.iou_predictions)] == 1
        png = np.asarray(Image.open(io.BytesIO(answer.mask_png)))
        assert np.array_equal(png == 255, best)
        assert np.array_equal(rle_to_mask(answer.mask_rle, image.shape[:2]), best)


def test_engine_batches_prompts_of_several_sessions(engine, photos):
    """Prompts of two sessions in one batch (one decoder run) equal each alone."""
    from sam2_triton.sessions.image import SessionRequest

    images = {1: photos["astronaut"], 2: photos["chelsea"]}
    engine.execute(
        [SessionRequest(k, start=True, image_bytes=png_bytes(v)) for k, v in images.items()]
    )

    def request(key):
        kw = PROMPT_CASES["points_with_negative"].pixels(images[key].shape[:2])
        return SessionRequest(
            key, points=np.asarray(kw["points"], np.float32), labels=np.asarray(kw["labels"])
        )

    together = engine.execute([request(1), request(2)])
    for key, answer in zip(images, together):
        (alone,) = engine.execute([request(key)])
        assert np.array_equal(answer.masks, alone.masks)
        assert np.allclose(answer.low_res_masks, alone.low_res_masks, atol=1e-5)


def test_engine_answers_only_what_was_asked_alike_in_a_mixed_batch(engine, photos):
    """A batch mixing multimask and single-mask prompts of two sessions, each asking for other
    outputs: the best mask a request gets alone as run lengths or PNG (only that mask is
    upsampled) equals the best of the full masks, and the stage clock saw every stage."""
    from sam2_triton.sessions.image import SessionRequest
    from sam2_triton.sessions.runtime import StageClock

    images = {11: photos["astronaut"], 12: photos["chelsea"]}
    engine.clock = StageClock(engine.device)
    try:
        engine.execute(
            [SessionRequest(k, start=True, image_bytes=png_bytes(v)) for k, v in images.items()]
        )

        def request(key, multimask, outputs):
            kw = PROMPT_CASES["points_with_negative"].pixels(images[key].shape[:2])
            return SessionRequest(
                key,
                points=np.asarray(kw["points"], np.float32),
                labels=np.asarray(kw["labels"]),
                multimask=multimask,
                outputs=frozenset(outputs),
            )

        full = ("masks", "iou_predictions")
        few = ("mask_rle", "mask_png", "iou_predictions")
        alone = {k: engine.execute([request(k, k == 11, full)])[0] for k in images}
        mixed = engine.execute([request(11, True, few), request(12, False, few)])
        stages = set(engine.clock.seconds)
    finally:
        engine.clock = None
    assert {"image decode", "preprocess", "encoder", "prompt", "decoder", "masks"} <= stages
    for key, answer in zip(images, mixed):
        ref = alone[key]
        assert answer.masks is None and answer.low_res_masks is None
        assert np.allclose(answer.iou_predictions, ref.iou_predictions, atol=1e-5)
        best = ref.masks[np.argmax(ref.iou_predictions)] == 1
        assert 0 < best.sum() < best.size  # a real mask, not all or nothing
        assert np.array_equal(rle_to_mask(answer.mask_rle, images[key].shape[:2]), best)
        png = np.asarray(Image.open(io.BytesIO(answer.mask_png)))
        assert np.array_equal(png == 255, best)


def test_engine_batch_of_one_image_size_equals_each_alone(engine, photos, monkeypatch):
    """Three sessions on photos of one size in one batch (upsampled together): run lengths
    of the best single mask, of the best of three (multimask) with every mask asked for too,
    and a PNG: each equals the request alone; and again with the upsampling cut into runs
    of one row (``UPSAMPLE_ELEMENTS``, which bounds a batch's memory)."""
    from sam2_triton.sessions import image as image_module
    from sam2_triton.sessions.image import SessionRequest

    image = photos["coffee"]
    keys = (21, 22, 23)
    engine.execute([SessionRequest(k, start=True, image_bytes=png_bytes(image)) for k in keys])
    cases = {
        21: (False, ("mask_rle",)),
        22: (True, ("mask_rle", "masks", "iou_predictions")),
        23: (False, ("mask_png", "mask_rle")),
    }

    def request(key, shift):
        multimask, outputs = cases[key]
        kw = PROMPT_CASES["points_with_negative"].pixels(image.shape[:2])
        points = np.asarray(kw["points"], np.float32) + shift
        return SessionRequest(
            key,
            points=points,
            labels=np.asarray(kw["labels"]),
            multimask=multimask,
            outputs=frozenset(outputs),
        )

    together = engine.execute([request(k, 7.0 * i) for i, k in enumerate(keys)])
    monkeypatch.setattr(image_module, "UPSAMPLE_ELEMENTS", image.shape[0] * image.shape[1])
    in_chunks = engine.execute([request(k, 7.0 * i) for i, k in enumerate(keys)])
    monkeypatch.undo()
    for i, (key, answer) in enumerate(zip(keys, together)):
        (alone,) = engine.execute([request(key, 7.0 * i)])
        assert np.array_equal(answer.mask_rle, alone.mask_rle)
        assert np.array_equal(in_chunks[i].mask_rle, alone.mask_rle)
        assert in_chunks[i].mask_png == answer.mask_png
        assert (in_chunks[i].masks is None) == (answer.masks is None)
        if answer.masks is not None:
            assert np.array_equal(in_chunks[i].masks, answer.masks)
        assert len(answer.mask_rle) > 2  # a real mask: several runs
        if key == 22:
            assert answer.masks.shape == (3, *image.shape[:2])
            assert np.array_equal(answer.masks, alone.masks)
            best = answer.masks[np.argmax(answer.iou_predictions)] == 1
            assert np.array_equal(rle_to_mask(answer.mask_rle, image.shape[:2]), best)
        if key == 23:
            assert answer.mask_png == alone.mask_png and answer.masks is None


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((3, 4), bool),
        np.ones((3, 4), bool),
        np.eye(4, 5, dtype=bool),
        ~np.eye(5, 3, dtype=bool),
        np.random.default_rng(0).random((17, 9)) > 0.5,
    ],
    ids=["empty", "full", "diagonal", "first-set", "random"],
)
def test_run_lengths_of_several_masks_at_once(mask):
    """masks_to_rle counts every mask of a list in one pass; each equals COCO's column-major
    runs (starting with 0s) and decodes back to its mask."""
    import torch

    from sam2_triton.sessions.image import mask_to_rle, masks_to_rle

    others = [np.ones((2, 2), bool), mask, np.zeros((1, 5), bool)]
    rles = masks_to_rle([torch.from_numpy(m) for m in others])
    for m, rle in zip(others, rles):
        flat = m.T.reshape(-1)
        runs = [len(list(g)) for _, g in itertools.groupby(flat)]
        expected = ([0] if flat[0] else []) + runs
        assert rle.tolist() == expected
        assert np.array_equal(rle_to_mask(rle, m.shape), m)
    assert mask_to_rle(torch.from_numpy(mask)).tolist() == rles[1].tolist()
    # A stack of masks of one size is one item: the same runs as the masks one by one.
    stacked = masks_to_rle([torch.from_numpy(np.stack([mask, ~mask, mask]))])
    alone = masks_to_rle([torch.from_numpy(m) for m in (mask, ~mask, mask)])
    assert [r.tolist() for r in stacked] == [r.tolist() for r in alone]


def test_bucketed_decoder_pads_batches_and_keeps_each_rows_answer(tiny_repository):
    """Batches run padded up to a bucket, each bucket in a session of its own: every real
    row's outputs equal the unpadded run's, and a batch above the largest bucket or of one
    row goes unpadded to the plain session."""
    import torch

    from sam2_triton.export import TENSOR_SHAPES
    from sam2_triton.sessions.image import decoder_shapes
    from sam2_triton.sessions.runtime import BucketedOrtSession, TorchOrtSession

    path = tiny_repository / "sam2_decoder" / "1" / "model.onnx"
    cpu = torch.device("cpu")
    plain = TorchOrtSession(path, cpu)
    bucketed = BucketedOrtSession(path, cpu, plain, [2, 4], warm=decoder_shapes())
    assert sorted(bucketed.sessions) == [2, 4]
    generator = torch.Generator().manual_seed(0)
    for k in (1, 3, 4, 5):
        feed = {
            n: torch.randn((k, *shape), generator=generator)
            for n, shape in decoder_shapes(points=3)[0].items()
        }
        feed["point_labels"] = torch.ones((k, 3))
        feed["has_mask_input"] = torch.zeros((k, 1))
        want = {n: (k, *TENSOR_SHAPES[n]) for n in ("masks", "iou_predictions")}
        got, expected = bucketed.run(feed, want), plain.run(feed, want)
        for name in want:
            assert got[name].shape == expected[name].shape == want[name]
            assert torch.allclose(got[name], expected[name], atol=1e-4), (k, name)


def decoder_feed(batch: int, points: int, seed: int = 0) -> dict:
    """Random decoder inputs (``batch`` rows of ``points`` points) as torch tensors."""
    import torch

    from sam2_triton.sessions.image import decoder_shapes

    g = torch.Generator().manual_seed(seed)
    inputs, _ = decoder_shapes(points)
    feed = {n: torch.randn((batch, *s), generator=g) for n, s in inputs.items()}
    feed["point_labels"] = torch.ones((batch, points))
    feed["has_mask_input"] = torch.zeros((batch, 1))
    return feed


def test_pytorch_decoder_pads_batches_and_keeps_each_rows_answer(tiny_checkpoint):
    """``TorchModuleSession`` with buckets: three rows run padded to four; each row's answer
    equals that row run alone; the outputs are float32 and only those asked for."""
    import torch

    from sam2_triton.sessions.image import decoder_shapes
    from sam2_triton.sessions.torch_networks import TorchNetworks

    decoder = (
        TorchNetworks("tiny", tiny_checkpoint, "fp32")
        .build(torch.device("cpu"), decode_buckets=(1, 2, 4))
        .decoder
    )
    feed = decoder_feed(3, 2)
    _, outputs = decoder_shapes(2)
    asked = {n: (3, *outputs[n]) for n in ("masks", "iou_predictions")}
    together = decoder.run(feed, asked)
    assert set(together) == set(asked)
    for name, shape in asked.items():
        assert together[name].shape == shape and together[name].dtype == torch.float32
    for row in range(3):
        alone = decoder.run({n: v[row : row + 1] for n, v in feed.items()}, asked)
        for name in asked:
            assert torch.allclose(together[name][row], alone[name][0], atol=1e-4)


def test_absent_points_change_no_answer_and_need_their_mask(tiny_checkpoint):
    """Prompts of 1, 3 and 2 points filled up with absent points to 4 and decoded in one run
    by the masked decoder: each row equals Meta's decoder on that prompt alone (real
    logits); unfilled, the masked decoder equals Meta's; the same filled batch through
    Meta's decoder (no mask) answers otherwise, so the mask is what keeps them equal."""
    import torch

    from sam2_triton import export
    from sam2_triton.models import get_model_size
    from sam2_triton.sessions.padded_points import (
        ABSENT_LABEL,
        pad_points,
        point_bucket,
        session_prompt_decoder,
    )

    assert [point_bucket(n) for n in (1, 2, 3, 4, 5, 66)] == [1, 2, 4, 4, 8, 128]
    model = export.load_sam2(get_model_size("tiny"), tiny_checkpoint)
    meta, masked = export.prompt_decoder(model), session_prompt_decoder(model, absent_points=True)
    meta.precompute = masked.precompute = False  # as the PyTorch runtime runs them
    feed = decoder_feed(3, 1, seed=3)
    rng = np.random.default_rng(0)
    counts = (1, 3, 2)
    coords = [rng.uniform(0, 1024, (1, n, 2)).astype(np.float32) for n in counts]
    labels = [np.array([[1, 0, 2][:n]], np.float32) for n in counts]
    padded_coords, padded_labels = pad_points(coords, labels)
    assert padded_coords.shape == (3, 4, 2)
    assert (padded_labels == ABSENT_LABEL).sum(1).tolist() == [3, 1, 2]

    def run(decoder, rows, point_coords, point_labels):
        inputs = {**{n: v[rows] for n, v in feed.items()}}
        inputs["point_coords"] = torch.from_numpy(point_coords)
        inputs["point_labels"] = torch.from_numpy(point_labels)
        with torch.no_grad():
            return decoder(*[inputs[n] for n in export.DECODER_INPUTS])

    together = run(masked, slice(0, 3), padded_coords, padded_labels)
    for row in range(3):
        alone = run(meta, slice(row, row + 1), coords[row], labels[row])
        assert_real_logits(alone[0].numpy(), f"row {row}")
        for a, b in zip(alone, together):
            assert torch.allclose(a[0], b[row], atol=1e-4), row
        unfilled = run(masked, slice(row, row + 1), coords[row], labels[row])
        assert all(torch.equal(a, b) for a, b in zip(alone, unfilled))
    unmasked = run(meta, slice(0, 3), padded_coords, padded_labels)
    assert (unmasked[0][0] - together[0][0]).abs().max() > 1e-2


def test_pytorch_engine_decodes_prompts_of_any_point_counts_in_one_run(
    pytorch_engine, photos, monkeypatch
):
    """The PyTorch runtime decodes a batch of three sessions' prompts of one point, three
    points and a box (two corner points) in one run of the mixed decoder (absent points);
    each answer equals that prompt's answer alone (itself Meta's:
    test_engine_equals_predictor_over_a_session). Prompts of one point count take one run
    of the plain decoder (no mask to pay for)."""
    from sam2_triton.sessions.image import SessionRequest

    engine = pytorch_engine
    images = {11: photos["astronaut"], 12: photos["chelsea"], 13: photos["coffee"]}
    engine.execute(
        [SessionRequest(k, start=True, image_bytes=png_bytes(v)) for k, v in images.items()]
    )
    cases = [(11, "one_point"), (12, "points_with_negative"), (13, "box")]

    def request(key, case):
        kw = PROMPT_CASES[case].pixels(images[key].shape[:2])
        return SessionRequest(
            key,
            points=None if "points" not in kw else np.asarray(kw["points"], np.float32),
            labels=None if "labels" not in kw else np.asarray(kw["labels"]),
            box=None if "box" not in kw else np.asarray(kw["box"], np.float32),
        )

    alone = [engine.execute([request(key, case)])[0] for key, case in cases]
    runs = []
    for decoder in (engine.decoder, engine.mixed_decoder):
        run = decoder.run
        monkeypatch.setattr(
            decoder, "run", lambda *a, run=run, name=decoder.name: runs.append(name) or run(*a)
        )
    together = engine.execute([request(key, case) for key, case in cases])
    assert runs == ["mixed decoder"]
    engine.execute([request(key, "one_point") for key in images])
    assert runs == ["mixed decoder", "decoder"]
    for answer, lone in zip(together, alone):
        assert not isinstance(answer, Exception), answer
        assert np.array_equal(answer.masks, lone.masks)
        assert np.allclose(answer.low_res_masks, lone.low_res_masks, atol=1e-4)
        assert np.allclose(answer.iou_predictions, lone.iou_predictions, atol=1e-5)


def test_pytorch_decoder_takes_float16_features_and_converts_them_exactly(tiny_checkpoint):
    """The sessions keep FP16 runs' features in float16: the PyTorch decoder gets them so
    (its graphs' buffers at half the memory) and converts them itself, answering what the
    same values in float32 give, bit for bit; other floating inputs keep their dtype too."""
    import torch

    from sam2_triton.sessions.torch_networks import TorchNetworks, _as_input

    networks = TorchNetworks("tiny", tiny_checkpoint, "fp32").build(torch.device("cpu"))
    decoder = networks.decoder
    # The two decoders (one run at a time) keep their graphs' inputs in the same buffers.
    assert networks.mixed_decoder._buffers is decoder._buffers
    # The video tracker's memory modules are not kept for images, nor the neck's position
    # encodings (Meta's module caches them for 1024x1024 inputs), nor the precomputed
    # constants of the ONNX export that the PyTorch runs compute themselves.
    model = networks.encoder.module.model
    assert model.memory_encoder is None and model.memory_attention is None
    assert not hasattr(model.image_encoder.neck.position_encoding, "cache")
    level = torch.zeros(2, 5, 8, 6)
    assert model.image_encoder.neck.position_encoding(level).shape == (2, 256, 8, 6)
    assert networks.encoder.module.pos_embed is None and decoder.module.dense_pe is None
    feed = decoder_feed(2, 3, seed=5)
    features = ("image_embeddings", "high_res_feats_0", "high_res_feats_1")
    half = {n: v.half() if n in features else v for n, v in feed.items()}
    assert _as_input(half["image_embeddings"], torch.device("cpu")).dtype == torch.float16
    assert _as_input(torch.ones(2, dtype=torch.int32), torch.device("cpu")).dtype == torch.float32
    widened = {n: v.float() for n, v in half.items()}
    asked = {"masks": (2, 1, 256, 256), "iou_predictions": (2, 1)}
    a, b = decoder.run(half, asked), decoder.run(widened, asked)
    assert_real_logits(a["masks"].numpy(), "masks from float16 features")
    assert all(torch.equal(a[n], b[n]) for n in asked)


def test_weights_stored_in_autocast_dtype_give_the_same_answers(tiny_checkpoint):
    """``cast_autocast_weights``: the decoder's linear and convolution weights stored in the
    autocast dtype (here bfloat16, the CPU's autocast) answer bit for bit what autocast
    gives with float32 weights; layer norms and embeddings stay float32."""
    import torch

    from sam2_triton import export
    from sam2_triton.models import get_model_size
    from sam2_triton.sessions.torch_networks import cast_autocast_weights

    model = export.load_sam2(get_model_size("tiny"), tiny_checkpoint)
    decoder = export.prompt_decoder(model)
    feed = decoder_feed(2, 3)
    inputs = [feed[n] for n in export.DECODER_INPUTS]

    def answer():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return decoder(*inputs)

    before = answer()
    assert_real_logits(before[0].float().numpy(), "masks before the cast")
    changed = cast_autocast_weights(decoder, torch.bfloat16)
    after = answer()
    assert changed > 50
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and torch.equal(a, b)
    transformer = decoder.mask_decoder.transformer
    assert transformer.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert transformer.norm_final_attn.weight.dtype == torch.float32
    assert decoder.mask_decoder.iou_token.weight.dtype == torch.float32
    assert cast_autocast_weights(decoder, torch.bfloat16) == 0


def test_a_graph_and_a_plain_run_differ_only_where_their_values_do():
    """The graph check's difference: equal infinities and NaNs in both places are equal (a
    network's own overflow, not the graph's fault); a NaN in one of them is a difference."""
    import torch

    from sam2_triton.sessions.torch_networks import difference

    inf, nan = float("inf"), float("nan")
    assert difference(torch.tensor([1.0, inf, nan]), torch.tensor([1.0, inf, nan])) == 0.0
    assert difference(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0])) == 0.5
    assert math.isnan(difference(torch.tensor([1.0, nan]), torch.tensor([1.0, 2.0])))
    assert difference(torch.tensor([inf]), torch.tensor([-inf])) == inf


def test_graph_buffers_take_each_row_once_and_pad_with_the_last():
    """A graph's input buffer gets the batch's rows (converted to float32) and its last row
    repeated into the padding rows."""
    import torch

    from sam2_triton.sessions.torch_networks import _fill

    buffer = torch.full((4, 2), -1.0)
    _fill([buffer[:3]], [torch.tensor([[1, 2], [3, 4]], dtype=torch.float16)])
    assert buffer.tolist() == [[1, 2], [3, 4], [3, 4], [-1, -1]]


def test_a_failed_compilation_leaves_the_pytorch_network_eager(tiny_checkpoint, monkeypatch):
    """A ``torch.compile`` that fails (here: no C compiler, forced) answers the run eager,
    says why in ``compile_error`` and the providers, and never tries again; an out-of-memory
    error in a compiled run is raised as it is and leaves the compilation on."""
    import torch

    from sam2_triton.sessions.torch_networks import TorchModuleSession, TorchNetworks

    calls = []

    def broken_compile(module, **_options):
        def compiled(*_args):
            calls.append(1)
            raise RuntimeError("Failed to find C compiler. Please specify via CC")

        return compiled

    eager = TorchNetworks("tiny", tiny_checkpoint, "fp32").build(torch.device("cpu")).decoder

    def compiled_by(fake_compile) -> TorchModuleSession:
        monkeypatch.setattr(torch, "compile", fake_compile)
        names = (eager.input_names, eager.output_names)
        return TorchModuleSession(eager.module, *names, eager.device, compile_mode="default")

    decoder = compiled_by(broken_compile)
    assert decoder.providers == ["PyTorch cpu fp32 torch.compile default"]
    feed = decoder_feed(1, 2)
    asked = {"masks": (1, 1, 256, 256)}
    for _ in range(2):
        answer = decoder.run(feed, asked)
        assert torch.equal(answer["masks"], eager.run(feed, asked)["masks"])
    assert len(calls) == 1 and "C compiler" in decoder.compile_error
    assert decoder.providers == ["PyTorch cpu fp32 eager"]

    # Running out of memory is the run's failure, not the compiler's: raised, compile kept.
    def out_of_memory(module, **_options):
        def compiled(*_args):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")

        return compiled

    decoder = compiled_by(out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        decoder.run(feed, asked)
    assert decoder.compile_error is None
    assert decoder.providers == ["PyTorch cpu fp32 torch.compile default"]


def test_the_session_runtime_is_a_config_choice():
    """``runtime`` and ``torch_compile`` reach sam2_session's config (with the checkpoint's
    place for the pytorch runtime): PyTorch compiled by default on a GPU, ONNX Runtime on a
    CPU; a compile needs the pytorch runtime on a GPU and the warm-up; configure_repository
    sets both."""
    from sam2_triton import model_config as mc
    from sam2_triton.cli.configure_repository import build_parser, params_from_args

    gpu = mc.RepositoryParams(model_size="base_plus")
    parameters = mc.session_config(gpu).parameters
    assert parameters["runtime"].string_value == "pytorch"
    assert parameters["torch_compile"].string_value == "default"
    assert parameters["weights"].string_value == "sam2_video/1/model.pt"
    assert parameters["precision"].string_value == "fp16"
    cpu_parameters = mc.session_config(mc.RepositoryParams.cpu_defaults("tiny")).parameters
    assert cpu_parameters["runtime"].string_value == "onnxruntime"
    assert cpu_parameters["torch_compile"].string_value == "none"
    session = gpu.session
    for wrong, message in (
        (dict(runtime="tensorrt"), "runtime must be one of onnxruntime, pytorch"),
        (dict(torch_compile="reduce-overhead"), "torch_compile must be one of none, default"),
        (dict(runtime="onnxruntime"), "needs the pytorch runtime on a GPU"),
        (dict(warmup=False), "needs the warm-up"),
    ):
        with pytest.raises(UserError, match=message):
            dataclasses.replace(session, **wrong).check("gpu")
    session.check("gpu")
    with pytest.raises(UserError, match="on a GPU"):
        session.check("cpu")
    args = build_parser().parse_args(["--session-runtime", "onnxruntime"])
    changed, cpu = params_from_args(args)  # the compile goes with the pytorch runtime
    assert (changed.session.runtime, changed.session.torch_compile) == ("onnxruntime", "none")
    assert (cpu.session.runtime, cpu.session.torch_compile) == ("onnxruntime", "none")


def test_instances_go_on_the_gpus_a_config_names():
    """``--session-gpus``/``--video-gpus`` put each model's instances on those GPUs only
    (Triton's ``instance_group.gpus``: ``count`` instances on each); without them, on every
    GPU. Repeated, negative or CPU-config GPUs are refused before a config is written."""
    from sam2_triton import model_config as mc
    from sam2_triton.cli.configure_repository import build_parser, params_from_args

    flags = ["--session-gpus", "0", "--video-gpus", "1,2", "--video-instances", "1"]
    gpu, cpu = params_from_args(build_parser().parse_args(flags))
    (session,) = mc.session_config(gpu).instance_group
    assert (session.kind, list(session.gpus), session.count) == (session.KIND_GPU, [0], 2)
    (video,) = mc.video_config(gpu).instance_group
    assert (list(video.gpus), video.count) == ([1, 2], 1)
    assert "gpus: 1" in mc.to_text(mc.video_config(gpu))
    assert not mc.session_config(cpu).instance_group[0].gpus
    default = mc.RepositoryParams(model_size="base_plus")
    assert not mc.session_config(default).instance_group[0].gpus
    assert not mc.video_config(default).instance_group[0].gpus
    for wrong, message in (((0, 0), "distinct"), ((-1,), "distinct GPU indices ≥ 0")):
        with pytest.raises(UserError, match=message):
            dataclasses.replace(gpu.session, gpus=wrong).check("gpu")
    with pytest.raises(UserError, match="video gpus are for GPU instances"):
        params_from_args(build_parser().parse_args(["--target", "cpu", "--video-gpus", "0"]))


def test_arena_shrinks_on_the_first_small_run_after_large_ones(tiny_repository):
    """``shrink_arena_above=1``: runs of one row never ask ONNX Runtime to shrink its arena
    while no larger run came before; after a burst of larger runs (none of which shrinks: a
    burst reuses its memory), the next run of one row does, once. Recorded on the real
    session's calls (the shrink itself needs a GPU arena: on the CPU the run options carry
    no shrink entry). The engine sets it on the encoder; the policy is the same on any graph,
    so the small decoder stands in here."""
    import onnxruntime as ort
    import torch

    from sam2_triton.export import TENSOR_SHAPES
    from sam2_triton.sessions.image import decoder_shapes
    from sam2_triton.sessions.runtime import TorchOrtSession

    path = tiny_repository / "sam2_decoder" / "1" / "model.onnx"
    session = TorchOrtSession(path, torch.device("cpu"), shrink_arena_above=1)
    marker = session._shrink = ort.RunOptions()  # what a CUDA instance builds, less the entry
    real, passed = session.session, []

    class Recording:
        def io_binding(self):
            return real.io_binding()

        def run_with_iobinding(self, binding, options=None):
            passed.append(options is marker)
            return real.run_with_iobinding(binding, options)

    session.session = Recording()
    for batch in (1, 1, 2, 2, 1, 1, 2, 1):
        feed = {n: torch.zeros((batch, *s)) for n, s in decoder_shapes()[0].items()}
        session.run(feed, {"iou_predictions": (batch, *TENSOR_SHAPES["iou_predictions"])})
    assert passed == [False, False, False, False, True, False, False, True]


def test_idle_release_gives_a_bursts_memory_back_once_per_idle_spell():
    """An instance's cached device memory goes back only when it has been idle for
    ``idle_s`` and the cache grew beyond the slack since the warm-up; never while an
    execution runs; once per idle spell (what sessions still hold is not asked for again
    until the engine has run). The clock and torch's figures are stand-ins (no GPU here);
    the release on the device is measured by the GPU benchmark (docs/benchmarks.md)."""
    import torch

    from sam2_triton.sessions.runtime import IdleRelease

    now, reserved, released = [0.0], [1000], []

    def release():
        released.append(now[0])
        reserved[0] = 1300  # what live sessions hold stays

    idle = IdleRelease(
        torch.device("cpu"),
        5.0,
        slack_bytes=200,
        clock=lambda: now[0],
        reserved=lambda: reserved[0],
        release=release,
        on_release=lambda before, after: released.append((before, after)),
    )
    idle.settle()
    with idle.busy():
        reserved[0] = 1150  # one user's clicks: within the slack
    now[0] = 60.0
    assert idle.poll() is None and released == []
    with idle.busy():
        reserved[0] = 3000  # a burst
        now[0] = 100.0
        assert idle.poll() is None  # running: never
    now[0] = 104.9
    assert idle.poll() is None  # idle 4.9 s of 5
    now[0] = 105.0
    assert idle.poll() == 1700 and released == [105.0, (3000, 1300)]
    now[0] = 500.0
    assert idle.poll() is None  # 300 over the baseline, but released already this spell
    with idle.busy():
        pass
    now[0] = 505.0
    assert idle.poll() == 0 and len(released) == 4  # a new spell: asked once more
    with pytest.raises(ValueError, match="idle_s"):
        IdleRelease(torch.device("cpu"), 0)


def test_idle_work_runs_on_threads_of_its_own(monkeypatch):
    """With no request at all: the sweeper drops an expired session and the idle release gives
    a grown cache back, each from its own daemon thread, and both threads stop. Each thread
    runs its setup first: the release's makes its device the thread's current one (a new
    thread starts on GPU 0, where the cache's cudaFree made a CUDA context for an instance of
    GPU 1; ``make_current`` itself needs a GPU, so it is recorded here)."""
    import torch

    from sam2_triton.sessions import runtime
    from sam2_triton.sessions.runtime import IdleRelease
    from sam2_triton.sessions.store import SessionStore, Sweeper

    store: SessionStore[str] = SessionStore(4, 0.05)
    store.put("a", "session")
    reserved, released = [1 << 30], threading.Event()
    events: list[tuple] = []  # (what, thread name)
    device = torch.device("cpu")
    monkeypatch.setattr(
        runtime,
        "make_current",
        lambda d: events.append((("current", d), threading.current_thread().name)),
    )

    def release():
        events.append(("release", threading.current_thread().name))
        reserved[0] = 0
        released.set()

    idle = IdleRelease(device, 0.05, reserved=lambda: reserved[0], release=release)
    setup = lambda: events.append(("sweeper setup", threading.current_thread().name))  # noqa
    sweeper, idle = Sweeper(store, 0.02, setup=setup).start(), idle.start()
    assert sweeper.running and idle.running
    try:
        assert released.wait(10), "the idle release never ran"
        deadline = time.monotonic() + 10
        while "a" in store and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "a" not in store and store.why_missing("a") == "expired"
    finally:
        sweeper.stop()
        idle.stop()
    assert not sweeper.running and not idle.running
    release_thread = "idle-memory-release"
    assert ("sweeper setup", "session-sweeper") in events
    on_release_thread = [what for what, thread in events if thread == release_thread]
    assert on_release_thread[:2] == [("current", device), "release"], events


def test_the_idle_release_is_a_config_choice(engine):
    """``memory_release_idle_s`` reaches sam2_session's configs (5 s by default, 0: never),
    configure_repository sets it, a negative value is refused, and an engine on the CPU (no
    torch cache to give back) has none."""
    from sam2_triton import model_config as mc
    from sam2_triton.cli.configure_repository import build_parser, params_from_args

    gpu = mc.RepositoryParams(model_size="base_plus")
    assert mc.session_config(gpu).parameters["memory_release_idle_s"].string_value == "5"
    args = build_parser().parse_args(["--session-memory-release-idle", "0.5"])
    changed, cpu = params_from_args(args)
    assert changed.session.memory_release_idle_s == 0.5
    assert mc.session_config(changed).parameters["memory_release_idle_s"].string_value == "0.5"
    assert cpu.session.memory_release_idle_s == 5.0  # the flags change --target's configs
    with pytest.raises(UserError, match="memory_release_idle_s"):
        dataclasses.replace(gpu.session, memory_release_idle_s=-1).check("gpu")
    assert engine.limits.memory_release_idle_s == 5.0 and engine.idle_release is None


def _jpeg(image: np.ndarray, orientation: int = 1, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.fromarray(image).convert(mode).save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_decoder_gives_pillows_pixels_upright(photos, orientation):
    """torchvision's JPEG decode (libjpeg-turbo here; nvJPEG on a GPU) with the EXIF
    orientation applied equals the client's Pillow decode pixel for pixel."""
    import torch

    from sam2_triton.client.images import decode_image
    from sam2_triton.sessions.jpeg import JpegDecoder

    data = _jpeg(photos["chelsea"], orientation)
    image = JpegDecoder(torch.device("cpu")).decode(data)
    expected = decode_image(data)
    assert image is not None and image.dtype == torch.uint8
    assert np.array_equal(image.permute(1, 2, 0).numpy(), expected)


def test_jpeg_decoder_leaves_other_files_to_pillow(photos):
    """Files other than 8-bit colour JPEGs, and truncated JPEGs, go to Pillow (None); an image
    over the pixel limit is refused from its header, with Pillow's path's message."""
    import torch

    from sam2_triton.client.images import decode_image
    from sam2_triton.sessions.jpeg import JpegDecoder

    decoder = JpegDecoder(torch.device("cpu"))
    image = photos["coffee"]
    jpeg = _jpeg(image)
    assert decoder.decode(png_bytes(image)) is None
    assert decoder.decode(_jpeg(image, mode="L")) is None
    assert decoder.decode(_jpeg(image, mode="CMYK")) is None
    assert decoder.decode(jpeg[: len(jpeg) // 2]) is None
    with pytest.raises(UserError) as ours:
        decoder.decode(jpeg, "image_bytes", max_pixels=1000)
    with pytest.raises(UserError) as pillows:
        decode_image(jpeg, "image_bytes", max_pixels=1000)
    assert str(ours.value) == str(pillows.value) and "MP" in str(ours.value)


def test_engine_forgets_idle_sessions_and_says_why(engine, photos):
    """Expired, evicted, ended and unknown sessions get a 400 that names the reason and says
    to start again with the image."""
    from sam2_triton.sessions.image import RequestError, SessionRequest

    data = png_bytes(photos["chelsea"])
    engine.execute([SessionRequest(k, start=True, image_bytes=data) for k in (11, 12)])
    engine.execute([SessionRequest(12, end=True)])
    engine.store.expire(now=time.monotonic() + engine.limits.idle_timeout_s + 1)
    box = np.array([1, 1, 50, 50], np.float32)
    answers = engine.execute([SessionRequest(k, box=box) for k in (11, 12, 13)])
    assert all(isinstance(a, RequestError) for a in answers)
    for answer, why in zip(answers, ("idle for too long", "ended", "never started")):
        assert why in str(answer) and "start it again with the image" in str(answer)


# --- over the wire ------------------------------------------------------------------------------


def session_steps(client: Sam2Client, image: np.ndarray, data: bytes) -> list:
    """Run :data:`STEPS` in one session; the first request carries the image and the click."""
    out = []
    with client.session(data) as session:
        for case, multimask, refine in STEPS:
            pred = session.predict(
                **PROMPT_CASES[case].pixels(image.shape[:2]),
                multimask=multimask,
                use_previous_mask=refine,
                outputs=("masks", "iou_predictions", "low_res_masks", "mask_png", "mask_rle"),
            )
            out.append(pred)
    return out


def session_count(server) -> tuple[int, int]:
    """(inferences, executions) of sam2_session so far."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics(SESSION)["model_stats"][0]
        return int(stats["inference_count"]), int(stats["execution_count"])
    finally:
        client.close()


@pytest.mark.parametrize(("protocol", "photo"), [("http", "astronaut"), ("grpc", "chelsea")])
def test_session_equals_predictor(triton_server, reference, photos, protocol, photo):
    image = photos[photo]
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    before = session_count(triton_server)[0]
    with Sam2Client(url, protocol) as client:
        predictions = session_steps(client, image, jpeg_bytes(image, 100))
    # The reference decodes the very same JPEG file the server got.
    decoded = np.asarray(Image.open(io.BytesIO(jpeg_bytes(image, 100))).convert("RGB"))
    for pred, ref in zip(predictions, reference_steps(reference, f"{photo}.jpg", decoded)):
        assert_same(pred.masks, pred.iou_predictions, pred.low_res_logits, ref)
        png = np.asarray(Image.open(io.BytesIO(pred.mask_png)))
        assert png.shape == image.shape[:2] and np.array_equal(png == 255, pred.best_mask)
        rle_only = dataclasses.replace(pred, masks=None)  # the same mask from its run lengths
        assert np.array_equal(rle_only.best_mask, pred.best_mask)
    # One request per step plus the closing one: the image travelled with the first click.
    assert session_count(triton_server)[0] - before == len(STEPS) + 1


def test_interleaved_sessions_on_two_instances_are_isolated(triton_server, reference, photos):
    """Six sessions on three photos (two instances), their clicks interleaved from six
    threads: each answer equals Meta's for that photo and prompt alone; concurrent clicks of
    different sessions share executions (the sequence batcher's oldest strategy)."""
    names = ["astronaut", "coffee", "chelsea"] * 2
    cases = ["one_point", "points_with_negative", "box"]
    barrier = threading.Barrier(len(names))

    def run(i: int, client: Sam2Client) -> list:
        image = photos[names[i]]
        with client.session(png_bytes(image)) as session:
            session.start()
            barrier.wait(timeout=300)
            return [
                session.predict(
                    **PROMPT_CASES[c].pixels(image.shape[:2]),
                    multimask=i % 2 == 1,
                    outputs=("masks", "iou_predictions", "low_res_masks"),
                )
                for c in cases
            ]

    with Sam2Client(triton_server.grpc_url, "grpc") as client:
        inferences, executions = session_count(triton_server)
        with ThreadPoolExecutor(len(names)) as pool:
            together = list(pool.map(lambda i: run(i, client), range(len(names))))
        inferences2, executions2 = session_count(triton_server)
    for i, predictions in enumerate(together):
        image = photos[names[i]]
        for case, pred in zip(cases, predictions):
            prompt = PROMPT_CASES[case].pixels(image.shape[:2])
            ref = reference.predict(names[i], image, i % 2 == 1, None, **prompt)
            assert_same(pred.masks, pred.iou_predictions, pred.low_res_logits, ref)
    assert executions2 - executions < inferences2 - inferences  # some batches held several


def test_session_header_and_small_requests(triton_server, photos):
    """Each request carries the affinity header; a prompt-only request is a few hundred
    bytes (measured on the wire through a recording proxy-less HTTP client)."""
    from sam2_triton.client.triton import TritonBackend

    sent = []
    backend = TritonBackend(triton_server.http_url)
    original = backend.infer_session

    def recording(*args, **kwargs):
        sent.append(kwargs["session_id"])
        return original(*args, **kwargs)

    backend.infer_session = recording
    from sam2_triton.client.session import Sam2Session

    image = photos["chelsea"]
    with Sam2Session(backend, png_bytes(image)) as session:
        session.start()
        kw = PROMPT_CASES["one_point"].pixels(image.shape[:2])
        # The same request by hand: JSON header + binary prompt, as a browser would send it.
        body = (
            b'{"parameters":{"sequence_id":%d,"binary_data_output":true},'
            b'"inputs":[{"name":"point_coords","shape":[1,1,2],"datatype":"FP32",'
            b'"parameters":{"binary_data_size":8}},{"name":"point_labels","shape":[1,1],'
            b'"datatype":"INT32","parameters":{"binary_data_size":4}}],'
            b'"outputs":[{"name":"iou_predictions"}]}' % session.session_id
        )
        header_length = len(body)
        body += np.asarray(kw["points"], np.float32).tobytes() + np.int32(1).tobytes()
        assert len(body) <= 2048
        r = requests.post(
            f"http://{triton_server.http_url}/v2/models/{SESSION}/infer",
            data=body,
            headers={
                "Inference-Header-Content-Length": str(header_length),
                SESSION_HEADER: str(session.session_id),
            },
            timeout=60,
        )
        assert r.status_code == 200, r.text
        pred = session.predict(**kw)
        assert pred.masks.shape == (1, *image.shape[:2])
    backend.close()
    assert sent and set(sent) == {sent[0]}


# --- bad input ----------------------------------------------------------------------------------


def truncated_jpeg(photos) -> bytes:
    data = jpeg_bytes(photos["coffee"])
    return data[: len(data) // 2]


def huge_png() -> bytes:
    """A 10000x10000 (100 MP) PNG: small on the wire, refused from its header."""
    buffer = io.BytesIO()
    Image.new("L", (10000, 10000)).save(buffer, "PNG")
    return buffer.getvalue()


BAD_STARTS = {
    "not an image": (lambda photos: b"%PDF-1.4 not an image", "not an image file"),
    "truncated jpeg": (truncated_jpeg, "image_bytes"),
    "100 megapixels": (lambda photos: huge_png(), "100.0 MP"),
    "empty": (lambda photos: b"", "image_bytes"),
}


@pytest.fixture(scope="module")
def bystander(triton_server, photos):
    """A live session of another user: it must answer the same before and after."""
    client = Sam2Client(triton_server.http_url)
    image = photos["astronaut"]
    session = client.session(png_bytes(image))
    kw = PROMPT_CASES["box"].pixels(image.shape[:2])
    first = session.predict(**kw)
    yield lambda: np.array_equal(session.predict(**kw).masks, first.masks)
    session.close()
    client.close()


@pytest.mark.parametrize("case", sorted(BAD_STARTS))
def test_bad_image_gets_400_and_harms_nobody(triton_server, photos, bystander, case):
    make, text = BAD_STARTS[case]
    with Sam2Client(triton_server.http_url) as client:
        backend = client.triton
        data = np.frombuffer(make(photos), np.uint8)
        with pytest.raises(UserError) as info:
            backend.infer_session(
                SESSION,
                {"image_bytes": data},
                ("image_size",),
                session_id=4242,
                start=True,
                end=True,
            )
        assert text in str(info.value)
        assert client.triton.client.is_server_ready()
    assert bystander()


def test_bad_prompts_get_400_and_harm_nobody(triton_server, photos, bystander):
    image = photos["chelsea"]
    h, w = image.shape[:2]
    with Sam2Client(triton_server.http_url) as client:
        backend = client.triton
        with client.session(png_bytes(image)) as session:
            session.start()
            sid = session.session_id

            def send(**inputs):
                inputs = {k: np.asarray(v) for k, v in inputs.items()}
                return backend.infer_session(SESSION, inputs, ("masks",), session_id=sid)

            cases = {
                "outside": (dict(point_coords=[[w + 5.0, 10.0]], point_labels=[1]), "outside"),
                "negative": (dict(point_coords=[[-5.0, 10.0]], point_labels=[1]), "outside"),
                "labels": (dict(point_coords=[[5.0, 5.0]], point_labels=[1, 0]), "2 point_labels"),
                "label 7": (dict(point_coords=[[5.0, 5.0]], point_labels=[7]), "labels must be"),
                "box order": (dict(box=[50.0, 50.0, 10.0, 10.0]), "x0 < x1"),
                "nan": (dict(point_coords=[[np.nan, 1.0]], point_labels=[1]), "finite"),
                "no previous": (
                    dict(point_coords=[[5.0, 5.0]], point_labels=[1], use_previous_mask=[True]),
                    "no previous mask",
                ),
                "too many": (
                    dict(point_coords=np.ones((65, 2), np.float32), point_labels=np.ones(65)),
                    "at most",
                ),
            }
            for name, (inputs, text) in cases.items():
                with pytest.raises(UserError) as info:
                    send(**inputs)
                assert text in str(info.value), (name, str(info.value))
            # A 1x1 image is served like any other (Meta's predictor accepts it too).
        with client.session(np.full((1, 1, 3), 128, np.uint8)) as tiny:
            assert tiny.predict(points=[[0.5, 0.5]]).masks.shape == (1, 1, 1)
        # A prompt for a session that was never started, and a start without an image.
        with pytest.raises(SessionLost, match="START"):
            backend.infer_session(
                SESSION, {"box": np.array([1, 1, 5, 5], np.float32)}, ("masks",), session_id=99
            )
        with pytest.raises(UserError, match="must carry the image"):
            backend.infer_session(SESSION, {}, ("masks",), session_id=98, start=True, end=True)
    assert bystander()


# --- bounds: a small server -------------------------------------------------------------------


#: Big allocations straight from mmap (glibc's threshold fixed instead of adaptive): freed
#: memory goes back at once, so the stub's RSS is what it really holds (see the memory test).
MMAP_THRESHOLD = ("MALLOC_MMAP_THRESHOLD_", "131072")


@contextlib.contextmanager
def pytorch_session_server(checkpoint: Path, tmp_path_factory, name: str, session, stage_log_every):
    """A server of sam2_session alone whose networks run in PyTorch (``runtime`` pytorch) on
    ``checkpoint`` (an absolute ``weights`` path), scheduled as ``session`` (a
    ``SessionServing``) says, loaded by name (``models``: Triton's explicit model control)
    from a repository that also has a ``sam2_video`` whose weights were never written; its
    instance logs where its time goes every ``stage_log_every`` executions (the diagnostic
    SETUP.md describes)."""
    from sam2_triton import model_config as mc
    from sam2_triton.server import EmbeddedTriton, free_port

    params = dataclasses.replace(mc.RepositoryParams.cpu_defaults("tiny"), session=session)
    config = mc.session_config(params)
    config.parameters["weights"].string_value = str(checkpoint)
    repo = tmp_path_factory.mktemp(f"{name}_repository")
    write_text_atomic(repo / mc.SESSION / "config.pbtxt", mc.to_text(config))
    (repo / mc.SESSION / "1").mkdir()
    # Not loaded, so its missing weights must stop neither the start nor the readiness.
    write_text_atomic(repo / mc.VIDEO / "config.pbtxt", mc.to_text(mc.video_config(params)))
    server = EmbeddedTriton(
        repository=repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        exit_timeout_s=5,
        models=[mc.SESSION],
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv(*MMAP_THRESHOLD)
        env.setenv("SAM2_TRITON_STAGE_LOG_EVERY", str(stage_log_every))
        with serving(server, tmp_path_factory.mktemp(name) / "tritonserver.log"):
            env.undo()
            yield server


@pytest.fixture(scope="module")
def small_server(tiny_checkpoint, tmp_path_factory):
    """sam2_session alone (one instance, at most 2 sessions) on the PyTorch runtime
    (:func:`pytorch_session_server`), its stages logged every 2 executions. The
    ``triton_server`` serves the ONNX Runtime one."""
    from sam2_triton.model_config import SessionServing

    session = SessionServing(
        max_batch_size=2, instance_count=1, max_sessions=2, torch_compile="none"
    )
    with pytorch_session_server(tiny_checkpoint, tmp_path_factory, "small", session, 2) as server:
        yield server


def stub_rss_mib(server) -> float:
    """Resident memory of the server's python stub processes (where the sessions live)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if (
                b"triton_python_backend_stub" not in cmdline
                or str(server.repository).encode() not in cmdline
            ):
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def test_the_instance_warmed_up_at_load_and_kept_nothing(small_server, engine):
    """``warmup`` (on by default for GPU instances; this CPU server has it on): the load line
    gives the warm-up's seconds. In process, the warm-up (a whole session on a blank JPEG,
    started and ended in one request) leaves the engine's sessions as they were."""
    from sam2_triton.sessions.image import WARM_UP_SESSION

    lines = [
        line
        for line in small_server.log_path.read_text().splitlines()
        if "sam2_session: CPU instance 0" in line
    ]
    assert lines, "no load line"
    assert re.search(r'at most 2 sessions .* warmed up in \d+\.\d s"?$', lines[0]), lines[0]
    held = len(engine.store)
    assert engine.warm() > 0
    assert len(engine.store) == held and WARM_UP_SESSION not in engine.store


def test_the_server_loads_only_the_models_named(small_server):
    """``models`` (serve_local's ``--load-model``): sam2_session is served; the repository's
    sam2_video, whose weights are missing, was not loaded and is neither reported as failed
    nor probed; Triton's repository API, open under explicit model control, is closed to
    requests without the server's secret header."""
    from sam2_triton.health import probe_server

    states = small_server.model_states()
    assert states["sam2_session"][0] == "READY", states
    assert states["sam2_video"][0] != "READY" and small_server.unavailable_models() == {}, states
    # The health probe (serve_local's supervision, the healthchecks) probes what was loaded.
    headers = small_server.repository_api_headers
    results = probe_server(small_server.http_url, timeout=60, headers=headers)
    assert [(r.model, r.healthy) for r in results] == [("sam2_session", True)], results
    # Explicit model control opens the repository API: without the server's secret header,
    # neither a load nor an unload nor the index is accepted, over HTTP or gRPC.
    base = f"http://{small_server.http_url}/v2/repository"
    for path in ("models/sam2_video/load", "models/sam2_session/unload", "index"):
        answer = requests.post(f"{base}/{path}", data=b"{}", timeout=30)
        assert answer.status_code in (401, 403), (path, answer.status_code, answer.text)
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(small_server.grpc_url)
    with client, pytest.raises(InferenceServerException):
        client.unload_model("sam2_session")
    assert small_server.model_states()["sam2_session"][0] == "READY"
    assert small_server.model_states()["sam2_video"][0] != "READY"
    # The healthcheck CLI: with --header it reads the index and probes; without, it fails.
    ((name, key),) = headers.items()
    url = ("--url", small_server.http_url, "--timeout", "60")
    probe = run_script("healthcheck.py", *url, "--header", f"{name}={key}", check=False)
    assert probe.returncode == 0 and "sam2_session" in probe.stdout, probe.stderr
    assert "sam2_video" not in probe.stdout + probe.stderr
    refused = run_script("healthcheck.py", *url, check=False)
    assert refused.returncode == 1 and "repository index: HTTP 403" in refused.stderr, refused


@pytest.fixture(scope="module")
def batching_server(tiny_checkpoint, tmp_path_factory):
    """sam2_session alone on the PyTorch runtime (:func:`pytorch_session_server`; one
    instance, at most three sessions and three requests a batch) whose sequence batcher
    waits up to 0.3 s for a fuller batch; its stages logged at every execution."""
    from sam2_triton.model_config import SessionServing

    session = SessionServing(
        max_batch_size=3,
        instance_count=1,
        max_sessions=3,
        torch_compile="none",
        max_queue_delay_us=300_000,
    )
    with pytorch_session_server(
        tiny_checkpoint, tmp_path_factory, "batching", session, 1
    ) as server:
        yield server


def test_served_clicks_of_different_point_counts_share_one_decoder_run(batching_server, photos):
    """Three users click at once on their sessions, with one point, three points and a box,
    round after round: Triton's sequence batcher puts clicks of different point counts into
    one execution, which decodes them in one run of the mixed decoder (the stage log says
    so; the batches are Triton's to form, so rounds go on until one was mixed, at most 10),
    and every click gets the answer that prompt gets alone."""
    images = {"astronaut": "one_point", "chelsea": "points_with_negative", "coffee": "box"}
    outputs = ("masks", "low_res_masks")
    prompts = {
        name: PROMPT_CASES[case].pixels(photos[name].shape[:2]) for name, case in images.items()
    }
    clients = {name: Sam2Client(batching_server.http_url) for name in images}
    sessions = {name: clients[name].session(png_bytes(photos[name])) for name in images}
    alone = {name: sessions[name].predict(**prompts[name], outputs=outputs) for name in images}
    log = batching_server.log_path
    batched = re.compile(r"[2-9]\.\d\d requests per execution.* mixed decoder ")
    mixed_runs = 0
    with ThreadPoolExecutor(len(images)) as pool:
        for _ in range(10):
            logged = len(log.read_text().splitlines())
            clicks = {
                n: pool.submit(sessions[n].predict, **prompts[n], outputs=outputs) for n in images
            }
            for name, click in clicks.items():
                answer = click.result()
                assert np.array_equal(answer.masks, alone[name].masks)
                assert np.allclose(answer.low_res_logits, alone[name].low_res_logits, atol=1e-4)
            new_lines = log.read_text().splitlines()[logged:]
            mixed_runs += sum(bool(batched.search(line)) for line in new_lines)
            if mixed_runs:
                break
    assert mixed_runs, "no execution decoded clicks of several point counts together"
    for name in images:
        sessions[name].close()
        clients[name].close()


def test_pytorch_runtime_session_equals_predictor(small_server, reference, photos):
    """Served with the PyTorch runtime (gRPC), every step of a session equals Meta's."""
    image = photos["chelsea"]
    lines = small_server.log_path.read_text().splitlines()
    assert any("PyTorch cpu fp32 eager; the PyTorch modules" in line for line in lines)
    with Sam2Client(small_server.grpc_url, "grpc") as client:
        predictions = session_steps(client, image, jpeg_bytes(image, 100))
    decoded = np.asarray(Image.open(io.BytesIO(jpeg_bytes(image, 100))).convert("RGB"))
    for pred, ref in zip(predictions, reference_steps(reference, "chelsea.jpg", decoded)):
        assert_same(pred.masks, pred.iou_predictions, pred.low_res_logits, ref)


def test_oldest_idle_session_is_evicted_and_the_client_restarts_it(small_server, photos):
    image = photos["coffee"]
    kw = PROMPT_CASES["one_point"].pixels(image.shape[:2])
    with Sam2Client(small_server.http_url) as client:
        first = client.session(png_bytes(image))
        answer = first.predict(**kw)
        others = [client.session(png_bytes(photos[n])) for n in ("astronaut", "chelsea")]
        for other in others:
            other.start()  # two more sessions: the cap is 2, the first (least recent) goes
        with pytest.raises(SessionLost, match="evicted"):
            client.triton.infer_session(
                SESSION,
                {"box": np.array([1, 1, 50, 50], np.float32)},
                ("masks",),
                session_id=first.session_id,
            )
        again = first.predict(**kw)  # restarted with the image, in a new sequence
        assert again.restarted and np.array_equal(again.masks, answer.masks)
        with pytest.raises(SessionLost, match="previous mask is gone"):
            others[0].predict(**kw, use_previous_mask=True)  # it was evicted meanwhile
        for s in (first, *others):
            s.close()
    stage_lines = [
        line for line in small_server.log_path.read_text().splitlines() if "per execution" in line
    ]
    assert stage_lines, "no stage line in the log"
    for stage in ("backend read", "image decode", "encoder", "decoder", "backend respond"):
        assert any(f"{stage} " in line for line in stage_lines), (stage, stage_lines)


def test_server_restart_loses_sessions_and_the_client_starts_them_again(small_server, photos):
    """After a restart the server holds no session: Triton answers a prompt with its
    START-flag 400 and the client starts the session again with the image."""
    image = photos["chelsea"]
    kw = PROMPT_CASES["box"].pixels(image.shape[:2])
    with Sam2Client(small_server.http_url, retries=20) as client:
        session = client.session(png_bytes(image))
        before = session.predict(**kw)
        small_server.stop()
        with open(small_server.log_path, "a") as log, pytest.MonkeyPatch.context() as env:
            env.setenv(*MMAP_THRESHOLD)  # as at its first start (the memory test reads it)
            small_server.start(stdout=log, stderr=subprocess.STDOUT)
        small_server.wait_ready(timeout=120)
        after = session.predict(**kw)
        assert after.restarted and np.array_equal(after.masks, before.masks)
        session.close()


def test_memory_stays_bounded_with_many_sessions(small_server, photos):
    """Open four times the cap (2) without closing any: from twice the cap on, the stub's
    memory grows by less than one session's state (a leak would add 16 MiB per session)."""
    from sam2_triton.sessions.image import ImageSession

    image = photos["chelsea"]
    with Sam2Client(small_server.http_url) as client:
        rss = []
        for _ in range(8):
            client.session(png_bytes(image)).start()
            rss.append(stub_rss_mib(small_server))
        assert client.triton.client.is_server_ready()
    growth = max(rss[4:]) - rss[3]
    assert rss[3] > 0 and growth < ImageSession.nbytes() / 2**20, rss
