"""The client's numpy transforms equal Meta's torch ``SAM2Transforms`` and predictor prompts.

Measured (this machine): preprocess ≤ 1.4e-6 after normalisation, postprocess ≤ 8e-6 on
logits of magnitude ~40, prompt coordinates ≤ 1e-4 px. The asserted bounds leave headroom.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import decoder_feed

from sam2_triton.client.transforms import Sam2Transforms, clamp_low_res

PRE_TOL = 1e-5  # the brief's target is 1e-4
POST_TOL = 5e-5  # logits ~N(0, 10): 1e-6 relative
COORD_TOL = 1e-4


@pytest.fixture(scope="module")
def meta():
    from sam2.utils.transforms import SAM2Transforms as MetaTransforms

    return MetaTransforms(resolution=1024, mask_threshold=0.0)


@pytest.fixture(scope="module")
def ours():
    return Sam2Transforms()


def synthetic(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random pixels: the hardest case for resampling (every pixel differs)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
def test_preprocess_photos_equal_meta(meta, ours, photos, photo):
    image = photos[photo]
    expected = meta(image)[None].numpy()
    got = ours.preprocess(image)
    assert got.shape == (1, 3, 1024, 1024) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= PRE_TOL


@pytest.mark.parametrize(
    "hw",
    [(1, 1), (8, 8), (3, 7), (255, 1), (1023, 1025), (1024, 1024), (17, 2049), (4000, 6000)],
    ids=lambda hw: f"{hw[0]}x{hw[1]}",
)
def test_preprocess_sizes_equal_meta(meta, ours, hw):
    # Upscaling (1x1 .. 1023), identity (1024), downscaling with antialias (2049, 6000),
    # odd and very unequal aspect ratios.
    image = synthetic(*hw)
    expected = meta(image)[None].numpy()
    got = ours.preprocess(image)
    assert np.abs(got - expected).max() <= PRE_TOL


def test_preprocess_is_antialiased_like_torchvision(ours):
    # A 1-pixel checkerboard shrunk 4x: plain bilinear would alias it to a pattern with
    # range ~[0, 1]; torchvision's (and ours) averages it to mid-gray.
    board = (np.indices((4096, 4096)).sum(0) % 2 * 255).astype(np.uint8)
    x = ours.preprocess(np.repeat(board[..., None], 3, axis=2))
    pixels = (
        x[0] * np.asarray([0.229, 0.224, 0.225])[:, None, None]
        + np.asarray([0.485, 0.456, 0.406])[:, None, None]
    )
    assert np.abs(pixels[:, 8:-8, 8:-8] - 0.5).max() < 0.01


POST_SIZES = [
    (512, 512),  # 2x up
    (400, 600),
    (300, 451),  # odd
    (256, 256),  # identity
    (255, 257),  # just below/above
    (128, 128),  # 2x down
    (85, 170),
    (8, 8),  # far below 256
    (1, 1),
    (1, 5),
    (3, 1024),
    (4000, 6000),
]


@pytest.mark.parametrize("hw", POST_SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
@pytest.mark.parametrize("num_masks", [1, 3])
def test_postprocess_equals_f_interpolate(ours, hw, num_masks):
    low = (np.random.default_rng(num_masks).standard_normal((num_masks, 256, 256)) * 10).astype(
        np.float32
    )
    expected = F.interpolate(torch.from_numpy(low)[None], hw, mode="bilinear", align_corners=False)
    expected = expected[0].numpy()
    got = ours.postprocess_masks(low, hw)
    assert got.shape == (num_masks, *hw) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= POST_TOL
    assert np.array_equal(ours.threshold(got), expected > 0)


def test_clamp_low_res():
    low = np.array([[[-100.0, -32.0, 0.5, 31.9, 40.0]]], np.float32)
    expected = torch.clamp(torch.from_numpy(low), -32.0, 32.0).numpy()
    assert np.array_equal(clamp_low_res(low), expected)


def _predictor_prompt_tensors(predictor, orig_hw, points, labels, box):
    """The predictor's prompt tensors (``decoder_feed``) for an image of ``orig_hw``."""
    saved = predictor._orig_hw
    predictor._orig_hw = [orig_hw]
    try:
        prompt = {"point_coords": points, "point_labels": labels, "box": box}
        feed = decoder_feed(predictor, {}, prompt)
    finally:
        predictor._orig_hw = saved
    return feed["point_coords"], feed["point_labels"]


PROMPTS = {
    "one_point": dict(points=[[256.3, 100.7]], labels=[1]),
    "points_with_negative": dict(points=[[10, 20], [300.5, 400.25], [450, 0]], labels=[1, 0, 1]),
    "box": dict(box=[12.5, 30, 440.75, 299]),
    "box_and_points": dict(box=[0, 0, 451, 300], points=[[100, 100], [200, 50]], labels=[0, 1]),
    "edges": dict(points=[[0, 0], [451, 300]], labels=[1, 1]),
}


@pytest.mark.parametrize("case", list(PROMPTS))
@pytest.mark.parametrize("orig_hw", [(300, 451), (4000, 6000), (8, 8)])
def test_prompt_tensors_equal_predictor(predictor, ours, case, orig_hw):
    prompt = PROMPTS[case]
    h, w = orig_hw
    # Scale the cases (written for 451x300) to this image.
    sx, sy = w / 451, h / 300
    points = None
    if "points" in prompt:
        points = [[x * sx, y * sy] for x, y in prompt["points"]]
    box = None
    if "box" in prompt:
        x0, y0, x1, y1 = prompt["box"]
        box = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
    labels = prompt.get("labels")
    ref_coords, ref_labels = _predictor_prompt_tensors(predictor, orig_hw, points, labels, box)
    coords, point_labels = ours.prompt_tensors(
        None if points is None else np.asarray(points),
        None if labels is None else np.asarray(labels),
        None if box is None else np.asarray(box),
        orig_hw,
    )
    assert coords.dtype == np.float32 and point_labels.dtype == np.float32
    assert coords.shape == ref_coords.shape and point_labels.shape == ref_labels.shape
    assert np.abs(coords - ref_coords).max() <= COORD_TOL
    assert np.array_equal(point_labels, ref_labels.astype(np.float32))
