"""PyTorch eager baselines: the very modules the ONNX graphs are traced from, and Meta's
``SAM2ImagePredictor`` for the end-to-end interactive path.

Inputs are uploaded to the device before timing (like ONNX Runtime with I/O binding) and
each call ends with ``torch.cuda.synchronize()``, so the host clock measures the device
work. FP16 means ``torch.autocast(dtype=torch.float16)`` on CUDA, as Meta's demo runs
SAM2 (bfloat16 there); autocast keeps LayerNorm and softmax in FP32.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import numpy as np


def load_model(model_size: str, checkpoint: str | os.PathLike, device: str):
    """Meta's SAM2.1 of ``model_size`` with ``checkpoint`` on ``device`` (eval)."""
    import torch

    from sam2_triton.export import load_sam2
    from sam2_triton.models import get_model_size

    model = load_sam2(get_model_size(model_size), checkpoint)
    torch.set_grad_enabled(False)
    return model.to(device).eval()


def _precision_context(device: str, precision: str):
    import torch

    if precision == "fp16":
        if device != "cuda":
            raise ValueError("FP16 autocast baselines need a CUDA device")
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _to_device(feed: dict[str, np.ndarray], device: str) -> dict:
    import torch

    return {k: torch.from_numpy(v).to(device) for k, v in feed.items()}


def module_caller(
    module, feeds: list[dict[str, np.ndarray]], names: tuple[str, ...], device: str, precision: str
) -> Callable[[int], Callable[[int], object]]:
    """Closed-loop factory calling ``module(*feed[name] for name in names)`` in rotation."""
    import torch

    device_feeds = [_to_device(f, device) for f in feeds]

    def make(_worker: int):
        def call(i: int):
            feed = device_feeds[i % len(device_feeds)]
            with torch.inference_mode(), _precision_context(device, precision):
                out = module(*(feed[n] for n in names))
            _sync(device)
            return out

        return call

    return make


def interactive_caller(
    encoder,
    decoder,
    images: list[dict[str, np.ndarray]],
    clicks: list[dict[str, np.ndarray]],
    names: tuple[str, ...],
    device: str,
    precision: str,
) -> Callable[[int], Callable[[int], object]]:
    """One session per call: the encoder module, then ``len(clicks)`` decoder calls."""
    import torch

    device_images = [_to_device(f, device) for f in images]
    device_clicks = [_to_device(c, device) for c in clicks]

    def make(_worker: int):
        def call(i: int):
            with torch.inference_mode(), _precision_context(device, precision):
                feats = encoder(device_images[i % len(device_images)]["image"])
                feed = dict(
                    zip(("image_embeddings", "high_res_feats_0", "high_res_feats_1"), feats)
                )
                masks = None
                for click in device_clicks:
                    step = {**feed, **click}
                    if masks is not None:
                        step["mask_input"] = masks.float().clamp(-32, 32)
                        step["has_mask_input"] = torch.ones_like(step["has_mask_input"])
                    masks = decoder(*(step[n] for n in names))[0]
            _sync(device)
            return masks

        return call

    return make


def predictor_caller(
    model,
    photos: list[np.ndarray],
    clicks: list[dict[str, np.ndarray]],
    device: str,
    precision: str,
) -> Callable[[int], Callable[[int], object]]:
    """Meta's ``SAM2ImagePredictor`` end to end: ``set_image`` on an RGB photo, then one
    ``predict`` per click (point prompts in the photo's pixels, the previous low-res
    logits fed back), masks upsampled to the photo's size as the predictor does."""
    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model)

    def make(_worker: int):
        def call(i: int):
            photo = photos[i % len(photos)]
            h, w = photo.shape[:2]
            with torch.inference_mode(), _precision_context(device, precision):
                predictor.set_image(photo)
                logits = None
                for click in clicks:
                    coords = click["point_coords"][0] * np.array([w, h]) / 1024.0
                    _, _, logits = predictor.predict(
                        point_coords=coords,
                        point_labels=click["point_labels"][0],
                        mask_input=None if logits is None else logits,
                        multimask_output=False,
                    )
            _sync(device)
            return logits

        return call

    return make


def peak_memory_mb(device: str) -> float | None:
    """Peak memory torch's allocator handed out since the last reset, in MiB."""
    if device != "cuda":
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
