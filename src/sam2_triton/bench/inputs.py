"""Benchmark inputs of the contract's shapes: random, seeded, several sets to rotate through.

Timing one buffer over and over measures caches, not the model; every backend cycles
through :data:`SETS` different input sets. Values are random normal (never zeros: they
can run faster than real data), which is what a normalised image looks like to the model.
"""

from __future__ import annotations

import numpy as np

from sam2_triton.export import ENCODER_OUTPUTS, TENSOR_SHAPES
from sam2_triton.models import IMAGE_SIZE

#: Input sets each case rotates through.
SETS = 4


def _shape(name: str, batch: int, points: int = 1) -> tuple[int, ...]:
    return (batch, *(points if d == -1 else d for d in TENSOR_SHAPES[name]))


def encoder_feeds(batch: int, sets: int = SETS, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``sets`` encoder feeds ``{"image": [batch, 3, 1024, 1024] float32}``."""
    rng = np.random.default_rng(seed)
    return [
        {"image": rng.standard_normal(_shape("image", batch), dtype=np.float32)}
        for _ in range(sets)
    ]


def features(batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Random encoder outputs (the decoder's feature inputs) for ``batch`` images."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal(_shape(name, batch), dtype=np.float32) for name in ENCODER_OUTPUTS
    }


def prompts(batch: int, points: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random clicks: ``points`` foreground/background points per prompt, no mask input."""
    labels = np.where(rng.random((batch, points)) < 0.75, 1.0, 0.0).astype(np.float32)
    return {
        "point_coords": (rng.random((batch, points, 2)) * IMAGE_SIZE).astype(np.float32),
        "point_labels": labels,
        "mask_input": np.zeros(_shape("mask_input", batch), np.float32),
        "has_mask_input": np.zeros((batch, 1), np.float32),
    }


def decoder_feeds(
    batch: int, points: int = 2, sets: int = SETS, seed: int = 2
) -> list[dict[str, np.ndarray]]:
    """``sets`` full decoder feeds: ``batch`` prompts on ``batch`` feature sets."""
    rng = np.random.default_rng(seed)
    feats = features(batch, seed)
    return [{**feats, **prompts(batch, points, rng)} for _ in range(sets)]


def prompt_batch_feeds(
    prompts_per_image: int, points: int = 2, sets: int = SETS, seed: int = 3
) -> list[dict[str, np.ndarray]]:
    """``sets`` feeds of ``sam2_decoder_prompts``: one image's features ``[1, ...]`` and
    ``prompts_per_image`` prompt sets ``[K, ...]``."""
    rng = np.random.default_rng(seed)
    feats = features(1, seed)
    return [{**feats, **prompts(prompts_per_image, points, rng)} for _ in range(sets)]


def follow_up(previous_masks: np.ndarray, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The next click of an interactive session: the last low-res logits as ``mask_input``."""
    nxt = dict(feed)
    nxt["mask_input"] = np.clip(previous_masks, -32.0, 32.0).astype(np.float32)
    nxt["has_mask_input"] = np.ones((previous_masks.shape[0], 1), np.float32)
    return nxt
