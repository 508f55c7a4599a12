"""JPEG files of session starts decoded by torchvision, into a tensor on the instance's device.

Why: a session's start is a file's bytes, most often a JPEG, and Pillow's decode of a
1920x1080 photo (14 ms on the H100 machine's CPU, more than the encoder's 12 ms) was the
largest part of a start. torchvision's ``decode_jpeg`` decodes with libjpeg-turbo on the CPU
(the same pixels as Pillow, which uses the same library with the same settings: a test checks
it) and with nvJPEG on a CUDA device, where the decoded image is already where the
preprocessing runs (no 6 MB upload). nvJPEG's pixels may differ from libjpeg-turbo's by a
few levels (the JPEG standard allows either IDCT): the benchmark measures by how much, and a
model config can keep JPEGs on the CPU (``jpeg_on_gpu``).

What it declines (``decode`` returns None) goes to Pillow (:func:`~sam2_triton.client.images.
decode_image`), which also gives every error its message: files other than JPEG, JPEGs that
are not 8-bit YCbCr/RGB (grayscale, CMYK), files without the end-of-image marker (Pillow
refuses truncated files; nvJPEG might decode them), and any file torchvision fails on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sam2_triton.client.images import read_header

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: End-of-image marker; a JPEG file whose bytes do not end with it is truncated (or has
#: trailing data): Pillow decides.
_EOI = b"\xff\xd9"


class JpegDecoder:
    """Decode JPEG files to upright ``[3, H, W]`` uint8 RGB tensors on ``device``.

    ``on_gpu``: on a CUDA device, decode with nvJPEG on that device; otherwise (or on a CPU
    device) with libjpeg-turbo, the tensor then copied to the device.
    """

    def __init__(self, device: "torch.device", on_gpu: bool = True) -> None:
        self.device = device
        self.decode_device = device if (on_gpu and device.type == "cuda") else None
        try:
            from torchvision.io import decode_jpeg  # noqa: F401 - present?

            self.error: str | None = None
        except Exception as e:  # noqa: BLE001 - no torchvision: Pillow does it all
            self.error = f"torchvision.io is unavailable ({type(e).__name__}: {e})"

    @property
    def where(self) -> str:
        """Where JPEG files are decoded, in words (for the instance's log line)."""
        if self.error:
            return f"Pillow ({self.error})"
        return "nvJPEG on the GPU" if self.decode_device is not None else "libjpeg-turbo"

    def decode(
        self, data: bytes, name: str = "image", max_pixels: int | None = None
    ) -> "torch.Tensor | None":
        """The image of a JPEG file's bytes as an upright ``[3, H, W]`` uint8 RGB tensor on
        the device (EXIF orientation applied, as Pillow's ``exif_transpose``), or None for a
        file this decoder leaves to Pillow. An image over ``max_pixels`` is refused
        (:class:`~sam2_triton.models.UserError`) from its header, as Pillow's path does."""
        import torch

        header = read_header(data, name, max_pixels)
        if self.error or header.format != "JPEG" or header.mode != "RGB":
            return None
        if not data.rstrip(b"\0").endswith(_EOI):
            return None
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            if self.decode_device is not None:
                image = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.decode_device)
            else:
                image = decode_jpeg(encoded, mode=ImageReadMode.RGB).to(self.device)
        except Exception as e:  # noqa: BLE001 - Pillow gives the file its verdict
            log.debug("%s: torchvision declined the JPEG (%s); Pillow decodes it", name, e)
            return None
        h, w = header.size_hw_stored
        if tuple(image.shape) != (3, h, w):
            return None
        return orient(image, header.orientation)


def orient(image: "torch.Tensor", orientation: int) -> "torch.Tensor":
    """Apply an EXIF orientation (1-8) to a ``[C, H, W]`` tensor, as Pillow's
    ``ImageOps.exif_transpose`` does to the image."""
    import torch

    h, w = 1, 2
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return image.flip(w)
    if orientation == 3:  # ROTATE_180
        return image.flip(h, w)
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return image.flip(h)
    if orientation == 5:  # TRANSPOSE
        return image.transpose(h, w)
    if orientation == 6:  # ROTATE_270 (a quarter turn clockwise)
        return torch.rot90(image, -1, (h, w))
    if orientation == 7:  # TRANSVERSE
        return image.transpose(h, w).flip(h, w)
    if orientation == 8:  # ROTATE_90 (a quarter turn counter-clockwise)
        return torch.rot90(image, 1, (h, w))
    return image
