"""The client's logic, independent of how tensors travel: cache, checks, pre/post-processing.

:class:`Sam2Pipeline` does what ``SAM2ImagePredictor.set_image`` + ``predict`` do, with the two
networks behind a :class:`Backend`: :class:`~sam2_triton.client.triton.TritonBackend` (a
Triton server over HTTP or gRPC, used by :class:`~sam2_triton.client.Sam2Client`) or
:class:`~sam2_triton.client.local.OnnxRuntimeBackend` (the same ONNX files in-process, for
tests and offline use). Both run exactly this pre/post-processing.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sam2_triton.client.images import as_rgb, load_image
from sam2_triton.client.prompts import Prompt, make_prompt
from sam2_triton.client.transforms import Sam2Transforms, clamp_low_res
from sam2_triton.model_config import MAX_POINTS, MAX_PROMPTS
from sam2_triton.models import LOW_RES_MASK_SIZE, UserError

#: Decoder outputs asked for: single mask (with SAM2's stability fall-back) or three masks.
SINGLE_OUTPUTS = ("masks", "iou_predictions")
MULTI_OUTPUTS = ("multimask_masks", "multimask_iou_predictions")


class SharedFeatures(Protocol):
    """Encoder outputs a backend keeps outside this process's arrays (shared memory)."""

    def numpy(self) -> dict[str, np.ndarray]:
        """Copies of the three feature maps, each ``[1, C, S, S]`` float32."""


@dataclass
class ImageEmbedding:
    """The encoder's output for one image, reusable for any number of prompts.

    ``features`` holds ``image_embeddings`` ``[1, 256, 64, 64]``, ``high_res_feats_0``
    ``[1, 32, 256, 256]`` and ``high_res_feats_1`` ``[1, 64, 128, 128]`` (float32), either as
    arrays or as a backend's shared-memory handle. ``orig_hw`` is the (H, W) of the original
    image, ``key`` the hash of its pixels (the cache key).
    """

    key: str
    orig_hw: tuple[int, int]
    features: Mapping[str, np.ndarray] | SharedFeatures
    preprocess_seconds: float = 0.0
    encode_seconds: float = 0.0

    def numpy(self) -> dict[str, np.ndarray]:
        """The three feature maps as arrays (copies when they live in shared memory)."""
        if isinstance(self.features, Mapping):
            return dict(self.features)
        return self.features.numpy()


@dataclass
class Prediction:
    """Masks for one prompt set, as ``SAM2ImagePredictor.predict`` returns them.

    ``C`` is 1 (``multimask=False``) or 3. ``masks`` ``[C, H, W]`` bool and ``logits``
    ``[C, H, W]`` float32 are in the original frame (logits upsampled *before* clamping, as
    the predictor does); ``iou_predictions`` ``[C]`` float32; ``low_res_logits``
    ``[C, 256, 256]`` float32 clamped to [-32, 32]: pass one back as ``mask_input`` to refine.
    """

    masks: np.ndarray
    logits: np.ndarray
    iou_predictions: np.ndarray
    low_res_logits: np.ndarray
    prompt: Prompt
    decode_seconds: float = 0.0
    postprocess_seconds: float = 0.0

    @property
    def best_index(self) -> int:
        """Index of the mask with the highest predicted IoU."""
        return int(np.argmax(self.iou_predictions))

    @property
    def best_mask(self) -> np.ndarray:
        """``[H, W]`` bool: the highest-IoU mask."""
        return self.masks[self.best_index]

    @property
    def areas(self) -> list[int]:
        """Pixels in each mask."""
        return [int(m.sum()) for m in self.masks]


class Backend(Protocol):
    """Runs the two networks. Shapes are the ONNX contract (``sam2_triton.export``)."""

    #: Most points one decode request may carry (box corners included).
    max_points: int
    #: Most prompt sets one decode request may carry (:meth:`Sam2Pipeline.decode_batch`).
    max_prompts: int

    def encode(self, image: np.ndarray) -> Mapping[str, np.ndarray] | SharedFeatures:
        """``image`` ``[1, 3, 1024, 1024]`` float32 (normalised) → the three feature maps."""

    def decode(
        self,
        features: Mapping[str, np.ndarray] | SharedFeatures,
        prompts: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Run the decoder on ``features`` and ``point_coords``/``point_labels``/
        ``mask_input``/``has_mask_input``; return only ``outputs``."""

    def release(
        self, features: Mapping[str, np.ndarray] | SharedFeatures, keep: bool
    ) -> Mapping[str, np.ndarray] | None:
        """Free what ``features`` holds (shared memory); with ``keep``, return array copies
        first so an evicted embedding stays usable."""

    def close(self) -> None:
        """Free everything (connections, shared memory)."""


def image_key(image: np.ndarray) -> str:
    """A hash of an image's pixels and shape: equal images share one cache entry."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((image.shape, image.dtype.str)).encode())
    h.update(memoryview(np.ascontiguousarray(image)).cast("B"))
    return h.hexdigest()


@dataclass
class CacheStats:
    """How many encode requests the cache answered (``hits``) or sent on (``misses``)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass
class Sam2Pipeline:
    """SAM2 image segmentation over a :class:`Backend`: encode once, decode many prompts.

    ``cache_size`` embeddings are kept (least recently used first out), keyed by the
    image's pixels, so encoding the same image again costs one hash. 0 disables the cache.
    """

    backend: Backend
    cache_size: int = 8
    transforms: Sam2Transforms = field(default_factory=Sam2Transforms)
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self._cache: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self._lock = threading.Lock()

    # --- encoding ----------------------------------------------------------------------------

    def encode_image(self, image: np.ndarray | str | Path) -> ImageEmbedding:
        """Encode an image (``[H, W, 3]`` uint8 RGB array, or a path for :func:`load_image`).

        Returns the cached embedding when the same pixels were encoded before.
        """
        if isinstance(image, (str, Path)):
            image = load_image(image)
        image = as_rgb(image)
        key = image_key(image)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.stats.hits += 1
                return cached
            self.stats.misses += 1
        t0 = time.perf_counter()
        tensor = self.transforms.preprocess(image)
        t1 = time.perf_counter()
        features = self.backend.encode(tensor)
        embedding = ImageEmbedding(
            key=key,
            orig_hw=(int(image.shape[0]), int(image.shape[1])),
            features=features,
            preprocess_seconds=t1 - t0,
            encode_seconds=time.perf_counter() - t1,
        )
        if self.cache_size > 0:
            evicted = []
            with self._lock:
                self._cache[key] = embedding
                while len(self._cache) > self.cache_size:
                    evicted.append(self._cache.popitem(last=False)[1])
                    self.stats.evictions += 1
            for old in evicted:
                self._release(old)
        return embedding

    def _release(self, embedding: ImageEmbedding, keep: bool = True) -> None:
        copies = self.backend.release(embedding.features, keep)
        if copies is not None:
            embedding.features = copies  # still usable by whoever holds it, as plain arrays

    def clear_cache(self, keep: bool = True) -> None:
        """Drop every cached embedding, freeing their shared memory, if any (with ``keep``,
        embeddings still held elsewhere get array copies and stay usable)."""
        with self._lock:
            entries = list(self._cache.values())
            self._cache.clear()
        for embedding in entries:
            self._release(embedding, keep)

    # --- decoding ----------------------------------------------------------------------------

    @property
    def max_points(self) -> int:
        return getattr(self.backend, "max_points", MAX_POINTS)

    def decode(
        self,
        embedding: ImageEmbedding,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask: bool = False,
    ) -> Prediction:
        """Masks for one prompt set on an encoded image.

        ``points`` ``[[x, y], ...]`` and ``box`` ``[x0, y0, x1, y1]`` are pixels of the
        original image; ``labels`` 1/0 per point (default all 1); ``mask_input`` a previous
        ``Prediction.low_res_logits[i]`` (``[256, 256]``). ``multimask=False`` gives the one
        mask ``predict(multimask_output=False)`` gives, ``True`` the three of
        ``multimask_output=True``. Invalid prompts raise :class:`UserError`.
        """
        prompt = make_prompt(embedding.orig_hw, points, labels, box, mask_input, self.max_points)
        return self.decode_prompt(embedding, prompt, multimask)

    def decode_prompt(
        self, embedding: ImageEmbedding, prompt: Prompt, multimask: bool = False
    ) -> Prediction:
        """:meth:`decode` for an already validated :class:`Prompt`."""
        return self._decode_group(embedding, [prompt], multimask)[0]

    def decode_batch(
        self,
        embedding: ImageEmbedding,
        prompts: Sequence[Prompt | Mapping[str, Any]],
        multimask: bool = False,
    ) -> list[Prediction]:
        """Masks for many prompt sets on one encoded image, in as few decoder runs as possible.

        Each item is a :class:`Prompt` or a mapping of :meth:`decode`'s keywords (``points``,
        ``labels``, ``box``, ``mask_input``). Prompt sets with the same number of points (box
        corners included) share one decoder request carrying the image's features once
        (Triton: ``sam2_decoder_prompts``), at most ``max_prompts`` sets each, as Meta's
        predictor does with batched prompts. Returns one :class:`Prediction` per item, in
        order, each what :meth:`decode` gives for that item alone; ``decode_seconds`` is the
        time of the request it came in.
        """
        made = [self._as_prompt(embedding, p, i) for i, p in enumerate(prompts)]
        groups: dict[int, list[int]] = {}
        for i, prompt in enumerate(made):
            groups.setdefault(prompt.num_points, []).append(i)
        step = max(1, getattr(self.backend, "max_prompts", MAX_PROMPTS))
        results: list[Prediction | None] = [None] * len(made)
        for indices in groups.values():
            for first in range(0, len(indices), step):
                chunk = indices[first : first + step]
                predictions = self._decode_group(embedding, [made[i] for i in chunk], multimask)
                for i, prediction in zip(chunk, predictions):
                    results[i] = prediction
        return results  # type: ignore[return-value]  # every index was filled

    def _as_prompt(self, embedding: ImageEmbedding, prompt: Any, index: int) -> Prompt:
        if isinstance(prompt, Prompt):
            return prompt
        if not isinstance(prompt, Mapping):
            raise UserError(f"prompt set {index + 1}: expected a mapping or a Prompt")
        unknown = set(prompt) - {"points", "labels", "box", "mask_input"}
        if unknown:
            raise UserError(
                f"prompt set {index + 1}: unknown key(s) {', '.join(sorted(unknown))} "
                "(use points, labels, box, mask_input)"
            )
        try:
            return make_prompt(embedding.orig_hw, max_points=self.max_points, **prompt)
        except UserError as e:
            raise UserError(f"prompt set {index + 1}: {e}") from None

    def _decode_group(
        self, embedding: ImageEmbedding, prompts: Sequence[Prompt], multimask: bool
    ) -> list[Prediction]:
        """One decoder run for prompt sets of equal point count: ``[K, ...]`` prompt tensors
        against the image's ``[1, ...]`` features."""
        rows = [self._prompt_tensors(embedding, p) for p in prompts]
        inputs = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
        if all(p.mask_input is None for p in prompts):
            # One shared zero mask (the graph broadcasts it) instead of K: 256 KiB a set less.
            inputs["mask_input"] = rows[0]["mask_input"]
        names = MULTI_OUTPUTS if multimask else SINGLE_OUTPUTS
        t0 = time.perf_counter()
        out = self.backend.decode(embedding.features, inputs, names)
        t1 = time.perf_counter()
        low_res_all = np.asarray(out[names[0]], np.float32)  # [K, C, 256, 256], unclamped
        iou_all = np.asarray(out[names[1]], np.float32)  # [K, C]
        predictions = []
        for prompt, low_res, iou in zip(prompts, low_res_all, iou_all):
            t2 = time.perf_counter()
            logits = self.transforms.postprocess_masks(low_res, embedding.orig_hw)
            predictions.append(
                Prediction(
                    masks=self.transforms.threshold(logits),
                    logits=logits,
                    iou_predictions=iou,
                    low_res_logits=clamp_low_res(low_res),
                    prompt=prompt,
                    decode_seconds=t1 - t0,
                    postprocess_seconds=time.perf_counter() - t2,
                )
            )
        return predictions

    def _prompt_tensors(self, embedding: ImageEmbedding, prompt: Prompt) -> dict[str, np.ndarray]:
        """The decoder's four prompt inputs for one prompt set, each with a leading dim of 1."""
        coords, labels = self.transforms.prompt_tensors(
            prompt.points, prompt.labels, prompt.box, embedding.orig_hw
        )
        if prompt.mask_input is None:
            mask = np.zeros((1, 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE), np.float32)
            has_mask = np.zeros((1, 1), np.float32)
        else:
            mask = prompt.mask_input
            has_mask = np.ones((1, 1), np.float32)
        return {
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": mask,
            "has_mask_input": has_mask,
        }

    def predict(
        self,
        image: np.ndarray | str | Path,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask: bool = False,
    ) -> Prediction:
        """:meth:`encode_image` (cached) then :meth:`decode`."""
        return self.decode(self.encode_image(image), points, labels, box, mask_input, multimask)

    # --- life cycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Free cached embeddings and the backend's resources."""
        self.clear_cache(keep=False)
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
