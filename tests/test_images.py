"""``load_image`` reads every format a user may hand the client as upright HxWx3 uint8 RGB."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from sam2_triton.client.images import as_rgb, load_image
from sam2_triton.models import UserError


@pytest.fixture(scope="module")
def photo(photos) -> np.ndarray:
    return photos["chelsea"]  # 300 x 451, odd width


def check(rgb: np.ndarray, shape) -> None:
    assert rgb.dtype == np.uint8 and rgb.shape == (*shape, 3) and rgb.flags.c_contiguous


def test_png_rgb_round_trip(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "a.png")
    rgb = load_image(tmp_path / "a.png")
    check(rgb, photo.shape[:2])
    assert np.array_equal(rgb, photo)


def test_jpeg(tmp_path, photos):
    path = tmp_path / "a.jpg"
    Image.fromarray(photos["astronaut"]).save(path, quality=95)
    rgb = load_image(path)
    check(rgb, (512, 512))
    assert np.array_equal(rgb, np.asarray(Image.open(path).convert("RGB")))
    assert np.abs(rgb.astype(int) - photos["astronaut"]).mean() < 3  # it is the photo


def test_webp_lossless(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "a.webp", lossless=True)
    assert np.array_equal(load_image(tmp_path / "a.webp"), photo)


def test_rgba_drops_alpha_keeping_stored_colour(tmp_path, photo):
    alpha = np.zeros(photo.shape[:2], np.uint8)
    alpha[:, : photo.shape[1] // 2] = 255  # left half opaque, right half fully transparent
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(tmp_path / "a.png")
    rgb = load_image(tmp_path / "a.png")
    check(rgb, photo.shape[:2])
    assert np.array_equal(rgb, photo)  # transparent pixels keep their colour


def test_grayscale_and_gray_alpha(tmp_path, photo):
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    Image.fromarray(gray).save(tmp_path / "l.png")
    Image.fromarray(np.dstack([gray, gray // 2]), "LA").save(tmp_path / "la.png")
    for name in ("l.png", "la.png"):
        rgb = load_image(tmp_path / name)
        check(rgb, gray.shape)
        assert all(np.array_equal(rgb[..., c], gray) for c in range(3))


def test_palette_with_transparency(tmp_path, photo):
    pal = Image.fromarray(photo).quantize(colors=16)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    rgb = load_image(tmp_path / "p.png")
    check(rgb, photo.shape[:2])
    assert np.array_equal(rgb, np.asarray(pal.convert("RGB")))
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) <= 16


def test_one_bit(tmp_path, photo):
    Image.fromarray(photo).convert("1").save(tmp_path / "b.png")
    rgb = load_image(tmp_path / "b.png")
    assert set(np.unique(rgb).tolist()) <= {0, 255}


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path, photo):
    gray = np.asarray(Image.fromarray(photo).convert("L")).astype(np.uint16) * 257
    gray[0, :4] = [0, 128, 129, 65535]  # round(v * 255 / 65535): 0, 0, 1, 255
    Image.fromarray(gray).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    rgb = load_image(tmp_path / "g16.png")
    check(rgb, gray.shape)
    assert rgb[0, :4, 0].tolist() == [0, 0, 1, 255]
    expected = np.asarray(Image.fromarray(photo).convert("L"))
    assert np.array_equal(rgb[1:, :, 0], expected[1:])  # v * 257 maps back to v exactly


def test_16_bit_colour_png_keeps_all_bits(tmp_path, photo):
    rgb16 = photo.astype(np.uint16) * 257
    rgb16[0, 0] = [255, 32896, 65535]  # high byte would give 0, 128, 255; rounding 1, 128, 255
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])
    rgb = load_image(tmp_path / "c16.png")
    check(rgb, photo.shape[:2])
    assert rgb[0, 0].tolist() == [1, 128, 255]
    assert np.array_equal(rgb[1:], photo[1:])
    # and 16-bit RGBA: alpha dropped
    rgba16 = np.dstack([rgb16[..., ::-1], np.full(photo.shape[:2], 1000, np.uint16)])
    cv2.imwrite(str(tmp_path / "c16a.png"), rgba16)
    assert np.array_equal(load_image(tmp_path / "c16a.png")[1:], photo[1:])


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def quadrants(h: int = 40, w: int = 60) -> np.ndarray:
    """An image whose orientation is obvious: four flat colours, red top-left."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 255, 0)
    img[h // 2 :, : w // 2] = (0, 0, 255)
    img[h // 2 :, w // 2 :] = (255, 255, 255)
    return img


@pytest.mark.parametrize(
    "orientation,upright",
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # stored rotated: a viewer turns it 90° clockwise
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, upright):
    stored = quadrants()
    path = tmp_path / "rot.jpg"
    Image.fromarray(stored).save(path, quality=100, exif=_exif(orientation))
    decoded = np.asarray(Image.open(path).convert("RGB"))  # as stored, not rotated
    rgb = load_image(path)
    assert np.array_equal(rgb, np.ascontiguousarray(upright(decoded)))
    if orientation in (6, 8):
        assert rgb.shape == (60, 40, 3)


def _png_with_exif(png: bytes, exif: bytes) -> bytes:
    """Insert an eXIf chunk after IHDR (OpenCV cannot write one)."""
    chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + exif) & 0xFFFFFFFF)
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def test_exif_orientation_on_16_bit_colour_png(tmp_path):
    stored = quadrants()
    ok, png = cv2.imencode(".png", (stored.astype(np.uint16) * 257)[..., ::-1])
    assert ok
    path = tmp_path / "rot16.png"
    path.write_bytes(_png_with_exif(png.tobytes(), _exif(6)))
    assert Image.open(path).getexif().get(0x0112) == 6
    assert np.array_equal(load_image(path), np.rot90(stored, -1))


def test_cmyk_jpeg(tmp_path, photo):
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "cmyk.jpg")
    check(load_image(tmp_path / "cmyk.jpg"), photo.shape[:2])


def test_very_large_image(tmp_path, photos):
    big = cv2.resize(photos["coffee"], (6000, 4000), interpolation=cv2.INTER_LINEAR)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=80)
    check(load_image(tmp_path / "big.jpg"), (4000, 6000))


@pytest.mark.parametrize("size", [(8, 8), (1, 1), (1, 7)])
def test_very_small_images(tmp_path, photo, size):
    tiny = np.ascontiguousarray(photo[: size[0], : size[1]])
    Image.fromarray(tiny).save(tmp_path / "tiny.png")
    assert np.array_equal(load_image(tmp_path / "tiny.png"), tiny)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="image not found"):
        load_image(tmp_path / "nope.jpg")


def test_directory(tmp_path):
    with pytest.raises(UserError, match="is not a file"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_image(tmp_path / "empty.png")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a JPEG\n")
    with pytest.raises(UserError, match="cannot read image .*notes.jpg"):
        load_image(tmp_path / "notes.jpg")


def test_truncated_jpeg(tmp_path, photo):
    path = tmp_path / "cut.jpg"
    Image.fromarray(photo).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UserError, match="cannot read image"):
        load_image(path)


def test_float_tiff_is_refused(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(UserError, match="floating-point"):
        load_image(tmp_path / "f.tif")


def test_as_rgb_arrays(photo):
    assert as_rgb(photo) is not None and np.array_equal(as_rgb(photo), photo)
    gray = photo[..., 0]
    assert np.array_equal(as_rgb(gray)[..., 2], gray)
    assert np.array_equal(as_rgb(np.dstack([photo, gray])), photo)
    assert np.array_equal(as_rgb(Image.fromarray(photo).convert("RGBA")), photo)
    with pytest.raises(UserError, match="uint8"):
        as_rgb(photo.astype(np.float32))
    with pytest.raises(UserError, match="HxWx3"):
        as_rgb(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(UserError, match="empty"):
        as_rgb(np.zeros((0, 4, 3), np.uint8))


def test_exif_orientation_on_16_bit_grayscale_png(tmp_path):
    gray = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png", exif=_exif(6))
    rgb = load_image(tmp_path / "g16.png")
    expected = np.rot90(np.round(gray.astype(np.float64) * 255 / 65535).astype(np.uint8), -1)
    assert rgb.shape == (4, 3, 3) and np.array_equal(rgb[..., 1], expected)
