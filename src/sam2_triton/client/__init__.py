"""Client library: SAM2.1 masks from a Triton server, equal to Meta's ``SAM2ImagePredictor``.

No torch: numpy, Pillow, OpenCV and tritonclient only.

* :func:`load_image` — any image file → ``[H, W, 3]`` uint8 RGB, upright.
* :class:`Sam2Transforms` — Meta's image/prompt/mask transforms in numpy.
* :class:`Sam2Client` — ``client.session(image)`` gives a :class:`Sam2Session`: the server
  keeps the image (``sam2_session``), each prompt travels alone. Or the stateless path:
  encode an image once (LRU-cached), decode many prompt sets over HTTP or gRPC, optionally
  through system shared memory. ``client.video_session()`` gives a :class:`Sam2VideoSession`:
  the server tracks objects through a video (``sam2_video``, Meta's video predictor).
* :class:`Sam2Pipeline` + :class:`OnnxRuntimeBackend` — the same logic on the ONNX files
  in-process (offline use, tests).
"""

from sam2_triton.client.client import Sam2Client
from sam2_triton.client.images import as_rgb, load_image
from sam2_triton.client.local import OnnxRuntimeBackend
from sam2_triton.client.pipeline import (
    Backend,
    ImageEmbedding,
    Prediction,
    Sam2Pipeline,
    image_key,
)
from sam2_triton.client.prompts import Prompt, make_prompt
from sam2_triton.client.session import Sam2Session, SessionPrediction
from sam2_triton.client.transforms import Sam2Transforms
from sam2_triton.client.triton import SessionLost, TritonBackend
from sam2_triton.client.video import Sam2VideoSession, VideoFrameMasks
from sam2_triton.models import UserError

__all__ = [
    "Backend",
    "ImageEmbedding",
    "OnnxRuntimeBackend",
    "Prediction",
    "Prompt",
    "Sam2Client",
    "Sam2Pipeline",
    "Sam2Session",
    "Sam2Transforms",
    "Sam2VideoSession",
    "SessionLost",
    "SessionPrediction",
    "TritonBackend",
    "UserError",
    "VideoFrameMasks",
    "as_rgb",
    "image_key",
    "load_image",
    "make_prompt",
]
