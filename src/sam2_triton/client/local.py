"""Run the repository's two ONNX graphs in this process with ONNX Runtime (no server).

The same :class:`~sam2_triton.client.pipeline.Sam2Pipeline` pre/post-processing runs on top,
so this backend is how the client's logic is tested against Meta's predictor without a
server, and a way to segment offline. Needs ``onnxruntime`` (the ``serve`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sam2_triton.export import ENCODER_OUTPUTS
from sam2_triton.model_config import DECODER, ENCODER, MAX_POINTS, MAX_PROMPTS
from sam2_triton.models import UserError


class OnnxRuntimeBackend:
    """``sam2_encoder`` and ``sam2_decoder`` from a model repository, on ONNX Runtime."""

    def __init__(
        self,
        repository: str | os.PathLike,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        max_points: int = MAX_POINTS,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("onnxruntime is not installed: pip install onnxruntime") from None
        repository = Path(repository)
        sessions = []
        for model in (ENCODER, DECODER):
            path = repository / model / "1" / "model.onnx"
            if not path.is_file():
                raise UserError(f"{path} is missing (export it with scripts/export_onnx.py)")
            sessions.append(ort.InferenceSession(str(path), providers=list(providers)))
        self.encoder, self.decoder = sessions
        self.max_points = max_points
        self.max_prompts = MAX_PROMPTS

    def encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """``image`` ``[1, 3, 1024, 1024]`` → the three feature maps (``ENCODER_OUTPUTS``)."""
        return dict(zip(ENCODER_OUTPUTS, self.encoder.run(list(ENCODER_OUTPUTS), {"image": image})))

    def decode(
        self,
        features: Mapping[str, np.ndarray],
        prompts: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Decoder outputs ``outputs`` for ``features`` + ``prompts`` (ONNX contract names).

        ``[1, ...]`` features with ``[K, ...]`` prompts give K rows: the graph broadcasts.
        """
        feed = {**features, **prompts}
        return dict(zip(outputs, self.decoder.run(list(outputs), feed)))

    def release(self, features: Mapping[str, np.ndarray], keep: bool) -> None:
        """Nothing to free: the arrays are ordinary memory."""
        return None

    def close(self) -> None:
        """Nothing to free."""
