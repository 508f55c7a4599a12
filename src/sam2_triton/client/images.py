"""Read images from disk (or take arrays) as the HxWx3 uint8 RGB arrays SAM2 expects.

Conventions, the same as Meta's ``SAM2ImagePredictor.set_image`` with a numpy image:
rows first (``image[y, x]``), RGB channel order, values 0..255. Everything here is
numpy + Pillow (+ OpenCV for 16-bit colour PNGs); no torch.

Choices for formats that are not plain 8-bit RGB:

* **Alpha** (RGBA, LA, PA, palette with transparency) is dropped: the stored colour of each
  pixel is kept, transparent pixels are *not* composited onto a background. SAM2 was trained
  on opaque photos; dropping alpha keeps the pixels the user sees in an editor that ignores
  transparency and keeps prompt coordinates meaningful.
* **Grayscale** (L, 1, 16-bit) is replicated into three equal channels.
* **16-bit** images (grayscale ``I;16`` or 16-bit-per-channel colour PNGs) are scaled to 8 bit
  with rounding, ``round(v * 255 / 65535)``, so that 65535 becomes 255 (Pillow's own
  ``convert`` clips 16-bit grayscale at 255 and truncates 16-bit colour to the high byte).
* **Palette** and CMYK/YCbCr/LAB images are converted to RGB by Pillow.
* **EXIF orientation** is applied (``PIL.ImageOps.exif_transpose``): the array is upright as
  a viewer shows it, so prompt coordinates are in the displayed frame.
* Animated formats (GIF, WebP, APNG): the first frame.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam2_triton.models import UserError

#: EXIF tag of the orientation (applied by hand to images decoded outside Pillow).
_ORIENTATION_TAG = 0x0112


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read the image at ``path`` as an upright ``[H, W, 3]`` uint8 RGB array.

    JPEG, PNG (8 and 16 bit), WebP, GIF, BMP, TIFF: anything Pillow reads. See the module
    docstring for alpha, grayscale, 16-bit and EXIF handling. Raises :class:`UserError` for a
    missing, unreadable or unsupported file.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"image not found: {path}")
    if not path.is_file():
        raise UserError(f"image {path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read image {path}: {e.strerror or e}") from e
    return decode_image(data, f"image {path}")


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image's header says, read without decoding its pixels: Pillow's
    ``format`` (``"JPEG"``, ``"PNG"``, ...) and ``mode``, the stored ``(H, W)`` (before the
    EXIF ``orientation``, 1-8, is applied)."""

    format: str
    mode: str
    size_hw_stored: tuple[int, int]
    orientation: int


def read_header(data: bytes, name: str = "image", max_pixels: int | None = None) -> ImageHeader:
    """The header of an encoded image (see :class:`ImageHeader`), with the errors of
    :func:`decode_image` for an empty or unreadable file and for one of more than
    ``max_pixels`` pixels."""
    img = _header(data, name, max_pixels)
    w, h = img.size
    return ImageHeader(str(img.format), str(img.mode), (h, w), _orientation(img))


def _header(data: bytes, name: str, max_pixels: int | None):
    """``PIL.Image.open`` on the bytes (header only), refusing an empty file and one of more
    than ``max_pixels`` pixels."""
    if not data:
        raise UserError(f"cannot read {name}: the file is empty")
    img = _open(data, name)
    if max_pixels is not None and img.size[0] * img.size[1] > max_pixels:
        w, h = img.size
        raise UserError(
            f"{name} is {w}x{h} ({w * h / 1e6:.1f} MP); at most {max_pixels / 1e6:g} MP are "
            "accepted (scale it down first)"
        )
    return img


def image_size(data: bytes, name: str = "image") -> tuple[int, int]:
    """``(H, W)`` of an encoded image as :func:`decode_image` returns it (EXIF orientation
    applied), read from the file's header without decoding its pixels."""
    img = _open(data, name)
    w, h = img.size
    # Orientations 5 to 8 turn the image a quarter (or transpose it): width and height swap.
    return (w, h) if _orientation(img) in (5, 6, 7, 8) else (h, w)


def decode_image(data: bytes, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Decode an encoded image file's bytes as :func:`load_image` does (``name`` is what error
    messages call it). With ``max_pixels``, an image of more pixels is refused from its header,
    before its pixels are decoded."""
    from PIL import Image, ImageOps

    img = _header(data, name, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            rawmode = _rawmode(img)
            orientation = _orientation(img)
            if img.format == "PNG" and img.mode in ("RGB", "RGBA", "LA") and ";16" in rawmode:
                rgb = _decode_16bit_colour_png(data, name)
                return _orient(rgb, orientation)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _pil_to_rgb(img, name)
    except UserError:
        raise
    except Image.DecompressionBombError as e:
        raise UserError(f"{name} is too large to decode safely: {e}") from e
    except Exception as e:  # Pillow raises many types for corrupt data; all mean "unreadable"
        raise UserError(f"cannot read {name}: {_first_line(e)}") from e


def _open(data: bytes, name: str):
    """``PIL.Image.open`` on the bytes (header only), with one-line errors."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Above ~89 MP Pillow warns, above ~179 MP it refuses (DecompressionBombError,
            # reported below); big aerial or panorama photos in between are fine.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        # Pillow's own message names its BytesIO object, not the file.
        raise UserError(
            f"cannot read {name}: not an image file (or a format Pillow cannot read; "
            "use JPEG, PNG, WebP, BMP or TIFF)"
        ) from None
    except Image.DecompressionBombError as e:
        raise UserError(f"{name} is too large to decode safely: {e}") from e
    except Exception as e:  # noqa: BLE001 - a damaged header
        raise UserError(f"cannot read {name}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Check an in-memory image and return it as a C-contiguous ``[H, W, 3]`` uint8 RGB array.

    Accepts ``[H, W, 3]`` RGB, ``[H, W, 4]`` RGBA (alpha dropped), ``[H, W]`` or
    ``[H, W, 1]`` grayscale, as uint8; a PIL image is converted as :func:`load_image` does.
    Other dtypes raise :class:`UserError` (scale them to 0..255 uint8 first).
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return _pil_to_rgb(image, "image")
    if not isinstance(image, np.ndarray):
        raise UserError(f"image must be a numpy array or a path, not {type(image).__name__}")
    if image.dtype != np.uint8:
        raise UserError(f"image must be uint8 (0..255), not {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"image must be HxWx3 RGB (or HxW, HxWx4), got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise UserError(f"image is empty (shape {image.shape})")
    return np.ascontiguousarray(image)


def _rawmode(img) -> str:
    try:
        return str(img.tile[0][3]) if img.tile else ""
    except (IndexError, TypeError):
        return ""


def _orientation(img) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block is ignored, as exif_transpose does
        return 1


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an array, as ``ImageOps.exif_transpose`` would."""
    from PIL import Image

    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    if method is None:
        return rgb
    return np.ascontiguousarray(np.asarray(Image.fromarray(rgb).transpose(method)))


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """``round(v * 255 / 65535)`` for 0..65535 values (integer arithmetic, exact)."""
    v = np.clip(values, 0, 65535).astype(np.uint32)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _decode_16bit_colour_png(data: bytes, name: str) -> np.ndarray:
    """16-bit-per-channel RGB(A)/LA PNGs through OpenCV, which keeps all 16 bits."""
    import cv2

    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise UserError(f"cannot read {name}: OpenCV could not decode the 16-bit PNG")
    if decoded.ndim == 2:
        decoded = decoded[..., None]
    channels = decoded.shape[2]
    # gray (+ alpha) is replicated; BGR(A) is reordered to RGB, alpha dropped
    rgb = np.repeat(decoded[..., :1], 3, axis=2) if channels in (1, 2) else decoded[..., 2::-1]
    if rgb.dtype == np.uint16:
        rgb = _scale_16_to_8(rgb)
    return np.ascontiguousarray(rgb.astype(np.uint8))


def _pil_to_rgb(img, name: str) -> np.ndarray:
    if img.mode == "RGB":
        return np.ascontiguousarray(np.asarray(img))
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale ("I": 32-bit integers, taken as 16-bit values, clipped).
        gray = _scale_16_to_8(np.asarray(img).astype(np.int64))
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if img.mode == "F":
        raise UserError(
            f"{name} has floating-point pixels; save it as 8- or 16-bit RGB or grayscale"
        )
    if img.mode in ("RGBA", "RGBa", "RGBX", "LA", "La", "PA"):
        img = img.convert("RGBA") if img.mode in ("RGBa", "La", "PA") else img
        return np.ascontiguousarray(np.asarray(img.convert("RGBA"))[..., :3])
    if img.mode == "P":
        # Palette lookup; a transparent index keeps its palette colour (alpha dropped).
        return np.ascontiguousarray(np.asarray(img.convert("RGBA"))[..., :3])
    return np.ascontiguousarray(np.asarray(img.convert("RGB")))
