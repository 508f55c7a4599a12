"""What the client writes: 8-bit mask PNGs, overlays, low-res logits; atomically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam2_triton.client import outputs
from sam2_triton.client.images import load_image
from sam2_triton.models import UserError


def test_mask_png_is_8_bit_0_255_at_mask_size(tmp_path):
    mask = np.zeros((7, 11), bool)
    mask[2:5, 3:9] = True
    path = outputs.save_mask_png(tmp_path / "sub" / "m.png", mask)
    img = Image.open(path)
    assert img.mode == "L" and img.size == (11, 7)
    assert np.array_equal(np.asarray(img), mask.astype(np.uint8) * 255)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.png"]  # no partial left


def test_atomic_write_replaces_and_reports_errors(tmp_path):
    target = tmp_path / "m.png"
    target.write_bytes(b"old")
    outputs.save_mask_png(target, np.ones((2, 2), bool))
    assert np.asarray(Image.open(target)).min() == 255
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write .*file/m.png"):
        outputs.save_mask_png(tmp_path / "file" / "m.png", np.ones((2, 2), bool))


def test_low_res_round_trip_and_errors(tmp_path):
    low = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    outputs.save_low_res(tmp_path / "l.npy", low)
    back = outputs.load_low_res(tmp_path / "l.npy")
    assert back.shape == (1, 256, 256) and np.array_equal(back[0], low)
    with pytest.raises(UserError, match="not found"):
        outputs.load_low_res(tmp_path / "missing.npy")
    (tmp_path / "bad.npy").write_text("nope")
    with pytest.raises(UserError, match="cannot read mask input"):
        outputs.load_low_res(tmp_path / "bad.npy")


def test_overlay_draws_mask_points_and_box(tmp_path, photos):
    image = photos["chelsea"]
    mask = np.zeros(image.shape[:2], bool)
    mask[100:200, 150:300] = True
    points = np.array([[50.0, 50.0], [400.0, 250.0]])
    path = outputs.save_overlay(
        tmp_path / "v.png", image, mask, points, np.array([1, 0]), np.array([20, 20, 430, 280])
    )
    out = load_image(path)
    assert out.shape == image.shape
    assert not np.array_equal(out[150, 200], image[150, 200])  # tinted inside the mask
    assert np.array_equal(out[5, 5], image[5, 5])  # untouched outside
    assert tuple(out[50, 50]) == outputs.FOREGROUND_COLOUR
    assert tuple(out[250, 400]) == outputs.BACKGROUND_COLOUR
    assert tuple(out[150, 20]) == outputs.BOX_COLOUR
    jpeg = outputs.save_overlay(tmp_path / "v.jpg", image, None)
    assert Image.open(jpeg).format == "JPEG"


def test_indexed_path():
    assert outputs.indexed_path("a/mask.png", None).as_posix() == "a/mask.png"
    assert outputs.indexed_path("a/mask.png", 3).as_posix() == "a/mask_3.png"
