"""Image sessions: the image is sent once, its features stay on the device, clicks decode.

:class:`ImageSessionEngine` is what one ``sam2_session`` model instance runs, independent of
Triton (the backend in ``sam2_triton/backend/sam2_session/model.py`` only translates tensors),
so it is tested in-process against Meta's ``SAM2ImagePredictor`` as well as over the wire.

What a session holds (:class:`ImageSession`), per image, on the instance's device (a GPU for
``KIND_GPU`` instances: nothing of it crosses to the host between encode and decode):

* the encoder's three feature maps, ``image_embeddings`` ``[1, 256, 64, 64]``,
  ``high_res_feats_0`` ``[1, 32, 256, 256]``, ``high_res_feats_1`` ``[1, 64, 128, 128]``
  (float32: 16 MiB);
* the original size ``(H, W)``;
* the low-res logits of the last prediction's best mask (``[1, 1, 256, 256]``, clamped to
  [-32, 32] as the predictor returns them: 256 KiB), for ``use_previous_mask``.

The steps follow ``SAM2ImagePredictor`` exactly, on torch tensors of the instance's device:
``set_image`` (``ToTensor``, antialiased bilinear ``Resize`` to 1024x1024, ``Normalize``),
then ``predict`` (box corners first as points labelled 2 and 3, coordinates scaled to the
1024 frame, previous mask logits as ``mask_input``, bilinear upsampling of the unclamped
low-res logits to the original size, threshold 0). The networks are the repository's exported
ONNX graphs, run by ONNX Runtime (:class:`~sam2_triton.sessions.runtime.TorchOrtSession`).

Batching: :meth:`ImageSessionEngine.execute` takes every request Triton's sequence batcher
put into one batch (at most one per session): new images are encoded together (up to
``max_encode_batch`` per encoder run) and all prompts with the same number of points, from
any sessions, are decoded in one decoder run against their sessions' features.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sam2_triton.client.images import decode_image
from sam2_triton.client.outputs import encode_png
from sam2_triton.client.prompts import make_prompt
from sam2_triton.client.transforms import MASK_LOGIT_CLAMP, PIXEL_MEAN, PIXEL_STD, Sam2Transforms
from sam2_triton.export import DECODER_OUTPUTS, ENCODER_OUTPUTS, TENSOR_SHAPES
from sam2_triton.model_config import MAX_POINTS, SessionServing
from sam2_triton.models import IMAGE_SIZE, LOW_RES_MASK_SIZE, UserError
from sam2_triton.sessions.runtime import CudaGraphOrtSession, TorchOrtSession
from sam2_triton.sessions.store import SessionStore, StoreFull, why_missing_in_words

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: The outputs a session request may ask for (the wire contract).
OUTPUTS = ("masks", "iou_predictions", "low_res_masks", "mask_png", "mask_rle", "image_size")


class RequestError(ValueError):
    """A request this model cannot serve; its message goes to the client (HTTP 400)."""


@dataclass(frozen=True)
class SessionLimits:
    """What one instance accepts and keeps.

    ``max_sessions`` live sessions per instance (the least recently used is evicted when a new
    one arrives at a full instance); ``idle_timeout_s`` after its last request a session is
    dropped; images of more than ``max_image_pixels`` pixels or ``max_image_bytes`` bytes are
    refused; at most ``max_points`` points (a box counts as two) per prompt;
    ``max_encode_batch`` new images per encoder run. The defaults are those the generated
    config writes (:class:`~sam2_triton.model_config.SessionServing`).
    """

    max_sessions: int = SessionServing.max_sessions
    idle_timeout_s: float = float(SessionServing.idle_timeout_s)
    max_image_pixels: int = SessionServing.max_image_pixels
    max_image_bytes: int = SessionServing.max_image_bytes
    max_points: int = MAX_POINTS
    max_encode_batch: int = SessionServing.max_encode_batch


@dataclass
class SessionRequest:
    """One request of a session, as the wire contract defines it (original-image pixels).

    ``points`` ``[P, 2]`` (x, y), ``labels`` ``[P]`` (1 foreground, 0 background; default all
    1), ``box`` ``[4]`` (x0, y0, x1, y1). ``use_previous_mask`` refines with the session's last
    best mask; ``mask_input`` ``[256, 256]`` gives low-res logits instead (a client that kept
    them). ``outputs`` are the names the client asked for.
    """

    session_id: Hashable
    start: bool = False
    end: bool = False
    image_bytes: bytes | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    multimask: bool = False
    use_previous_mask: bool = False
    mask_input: np.ndarray | None = None
    outputs: frozenset[str] = frozenset(OUTPUTS)

    @property
    def has_prompt(self) -> bool:
        return self.points is not None or self.box is not None


@dataclass
class SessionAnswer:
    """What a request gets back (only the ``outputs`` it asked for are filled).

    ``masks`` ``[M, H, W]`` uint8 0/1 at the original size (M = 3 with multimask, 1 without,
    0 for a request without a prompt), ``iou_predictions`` ``[M]``, ``low_res_masks``
    ``[M, 256, 256]`` clamped logits, ``mask_png`` the highest-IoU mask as PNG bytes (0/255),
    ``mask_rle`` the same mask as run lengths (:func:`mask_to_rle`).
    """

    image_size: tuple[int, int]
    masks: np.ndarray | None = None
    iou_predictions: np.ndarray | None = None
    low_res_masks: np.ndarray | None = None
    mask_png: bytes | None = None
    mask_rle: np.ndarray | None = None


@dataclass
class ImageSession:
    """One session's state on the instance's device (see the module docstring)."""

    features: dict[str, "torch.Tensor"]
    orig_hw: tuple[int, int]
    previous_logits: "torch.Tensor | None" = None

    @staticmethod
    def nbytes() -> int:
        """Bytes a session holds at most: the features plus one mask's low-res logits."""
        floats = sum(int(np.prod(TENSOR_SHAPES[n])) for n in ENCODER_OUTPUTS)
        return 4 * (floats + LOW_RES_MASK_SIZE * LOW_RES_MASK_SIZE)


def mask_to_rle(mask: "torch.Tensor") -> np.ndarray:
    """COCO's uncompressed run-length encoding of an ``[H, W]`` bool mask: the lengths of
    alternating runs of 0s and 1s over the pixels in column-major order (down each column,
    then the next), starting with a run of 0s (0 long when the first pixel is set), int32.
    ``pycocotools.mask.frPyObjects({"counts": list(rle), "size": [H, W]}, H, W)`` decodes it;
    :func:`sam2_triton.client.outputs.rle_to_mask` does too."""
    import torch

    flat = mask.t().reshape(-1)
    change = torch.nonzero(flat[1:] != flat[:-1]).flatten() + 1
    edges = torch.cat(
        [
            torch.zeros(1, dtype=change.dtype, device=change.device),
            change,
            torch.full((1,), flat.numel(), dtype=change.dtype, device=change.device),
        ]
    )
    runs = torch.diff(edges).to(torch.int32).cpu().numpy()
    if flat.numel() and bool(flat[0]):
        runs = np.concatenate([np.zeros(1, np.int32), runs])
    return runs


def missing_session_message(session_id: Hashable, why: str | None) -> str:
    """The 400 for a prompt to a session that holds no image."""
    reason = why_missing_in_words(why, "sessions")
    return (
        f"session {session_id} has no image on this server ({reason}): start it again with "
        "the image (image_bytes with sequence_start)"
    )


@dataclass
class _Decode:
    """One request's prompt, ready for the decoder (input frame, ``[1, N, ...]``)."""

    index: int
    session: ImageSession
    coords: np.ndarray
    labels: np.ndarray
    mask_input: "torch.Tensor | None"
    request: SessionRequest = field(repr=False)


class ImageSessionEngine:
    """Sessions of one model instance: encode images once, decode prompts against them.

    ``encoder_path``/``decoder_path`` are the repository's ``sam2_encoder`` and
    ``sam2_decoder`` ONNX files; ``device`` the instance's torch device. ``cuda_graphs``: on
    a CUDA device, single decodes replay a CUDA graph (the served default; the benchmark's
    in-process baseline takes the same).
    """

    def __init__(
        self,
        encoder_path,
        decoder_path,
        device: "torch.device",
        limits: SessionLimits = SessionLimits(),
        *,
        intra_op_threads: int = 0,
        cuda_graphs: bool = True,
        on_drop: Callable[[Hashable, ImageSession, str], None] | None = None,
    ) -> None:
        import torch

        self.device = device
        self.limits = limits
        self.encoder = TorchOrtSession(encoder_path, device, intra_op_threads)
        # The decoder's time at small batches is mostly kernel launches: CUDA graphs.
        decoder = CudaGraphOrtSession if cuda_graphs and device.type == "cuda" else TorchOrtSession
        self.decoder = decoder(decoder_path, device, intra_op_threads)
        self.store: SessionStore[ImageSession] = SessionStore(
            limits.max_sessions, limits.idle_timeout_s, on_drop=on_drop
        )
        self.transforms = Sam2Transforms()
        self._mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32, device=device).view(3, 1, 1)
        self._std = torch.tensor(PIXEL_STD, dtype=torch.float32, device=device).view(3, 1, 1)

    # --- the batch ---------------------------------------------------------------------------

    def execute(self, requests: Sequence[SessionRequest]) -> list[SessionAnswer | RequestError]:
        """Answer one batch (at most one request per session); an error answers only its
        request. Sessions of this batch are never evicted by its own new images."""
        answers: list[SessionAnswer | RequestError | None] = [None] * len(requests)
        in_use = {r.session_id for r in requests}
        for key in in_use:  # a request is a use: no sweep may expire these now
            self.store.get(key)

        fresh = self._encode_new_images(requests, answers, in_use)
        decodes: dict[int, list[_Decode]] = {}
        for i, request in enumerate(requests):
            if answers[i] is not None:
                continue
            try:
                closing = request.end and request.image_bytes is None and not request.has_prompt
                if closing and not request.start:
                    answers[i] = self._closing_answer(request)
                    continue
                session = fresh.get(i) or self._session(request)
                if not request.has_prompt:
                    answers[i] = self._empty_answer(session.orig_hw, request)
                    continue
                decode = self._prepare(i, request, session)
            except (RequestError, UserError) as e:
                answers[i] = RequestError(str(e))
                continue
            decodes.setdefault(decode.coords.shape[1], []).append(decode)
        for group in decodes.values():
            self._decode(group, answers)
        for request in requests:
            if request.end:
                self.store.pop(request.session_id)
        return answers  # type: ignore[return-value]  # every entry was filled

    def _session(self, request: SessionRequest) -> ImageSession:
        if request.start:
            raise RequestError("the first request of a session must carry the image (image_bytes)")
        session = self.store.get(request.session_id)
        if session is None:
            why = self.store.why_missing(request.session_id)
            raise RequestError(missing_session_message(request.session_id, why))
        return session

    # --- encoding ----------------------------------------------------------------------------

    def _encode_new_images(
        self, requests: Sequence[SessionRequest], answers: list, in_use: set
    ) -> dict[int, ImageSession]:
        """Decode, preprocess and encode every image of the batch; store the sessions."""
        pending: list[tuple[int, np.ndarray]] = []
        for i, request in enumerate(requests):
            if request.image_bytes is None:
                continue
            try:
                if len(request.image_bytes) > self.limits.max_image_bytes:
                    raise RequestError(
                        f"image_bytes has {len(request.image_bytes)} bytes; at most "
                        f"{self.limits.max_image_bytes} are accepted"
                    )
                rgb = decode_image(
                    request.image_bytes, "image_bytes", max_pixels=self.limits.max_image_pixels
                )
                pending.append((i, rgb))
            except (RequestError, UserError) as e:
                answers[i] = RequestError(str(e))
                if request.start:  # a new sequence: whatever an older one left is stale
                    self.store.pop(request.session_id)
        fresh: dict[int, ImageSession] = {}
        step = self.limits.max_encode_batch
        for first in range(0, len(pending), step):
            chunk = pending[first : first + step]
            features = self.encode([rgb for _, rgb in chunk])
            for (i, rgb), feats in zip(chunk, features):
                session = ImageSession(feats, (int(rgb.shape[0]), int(rgb.shape[1])))
                try:
                    self.store.put(requests[i].session_id, session, in_use)
                except StoreFull as e:
                    answers[i] = RequestError(str(e))
                    continue
                fresh[i] = session
        return fresh

    def preprocess(self, rgb: np.ndarray) -> "torch.Tensor":
        """``[H, W, 3]`` uint8 RGB → ``[3, 1024, 1024]`` float32 on the device, as Meta's
        ``SAM2Transforms``: ``ToTensor`` (÷255), ``Resize((1024, 1024))`` (bilinear,
        antialiased), ``Normalize(mean, std)``."""
        import torch
        import torch.nn.functional as F

        if not rgb.flags.writeable:  # decoded images may be read-only views
            rgb = rgb.copy()
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device)
        x = x.permute(2, 0, 1).to(torch.float32).div(255)
        if tuple(x.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(
                x[None],
                size=(IMAGE_SIZE, IMAGE_SIZE),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0]
        return (x - self._mean) / self._std

    def encode(self, images: Sequence[np.ndarray]) -> list[dict[str, "torch.Tensor"]]:
        """Feature maps (``[1, C, S, S]`` each, on the device) of each ``[H, W, 3]`` image,
        from one encoder run."""
        import torch

        batch = torch.stack([self.preprocess(rgb) for rgb in images])
        shapes = {n: (len(images), *TENSOR_SHAPES[n]) for n in ENCODER_OUTPUTS}
        out = self.encoder.run({"image": batch}, shapes)
        if len(images) == 1:
            return [out]
        # Own storage per session, so evicting one frees its memory.
        return [{n: v[j : j + 1].clone() for n, v in out.items()} for j in range(len(images))]

    # --- decoding ----------------------------------------------------------------------------

    def _prepare(self, index: int, request: SessionRequest, session: ImageSession) -> _Decode:
        import torch

        prompt = make_prompt(
            session.orig_hw,
            request.points,
            request.labels,
            request.box,
            max_points=self.limits.max_points,
        )
        coords, labels = self.transforms.prompt_tensors(
            prompt.points, prompt.labels, prompt.box, session.orig_hw
        )
        mask = None
        if request.mask_input is not None:
            if request.use_previous_mask:
                raise RequestError("give either use_previous_mask or mask_input, not both")
            side = LOW_RES_MASK_SIZE
            mask = torch.from_numpy(
                np.ascontiguousarray(request.mask_input, np.float32).reshape(1, 1, side, side)
            ).to(self.device)
        if request.use_previous_mask:
            if session.previous_logits is None:
                raise RequestError(
                    "use_previous_mask: this session has no previous mask yet (decode once "
                    "without it first)"
                )
            mask = session.previous_logits
        return _Decode(index, session, coords, labels, mask, request)

    def _decode(self, group: list[_Decode], answers: list) -> None:
        """One decoder run for prompts of equal point count from any sessions."""
        import torch

        k = len(group)
        feed: dict[str, torch.Tensor] = {}
        for name in ENCODER_OUTPUTS:
            parts = [d.session.features[name] for d in group]
            feed[name] = parts[0] if k == 1 else torch.cat(parts)
        feed["point_coords"] = torch.from_numpy(np.concatenate([d.coords for d in group]))
        feed["point_labels"] = torch.from_numpy(np.concatenate([d.labels for d in group]))
        side = LOW_RES_MASK_SIZE
        zero = torch.zeros((1, 1, side, side), dtype=torch.float32, device=self.device)
        feed["mask_input"] = torch.cat(
            [zero if d.mask_input is None else d.mask_input for d in group]
        )
        feed["has_mask_input"] = torch.tensor(
            [[0.0 if d.mask_input is None else 1.0] for d in group], dtype=torch.float32
        )
        multi = {d.request.multimask for d in group}
        names = [
            n
            for n, wanted in zip(DECODER_OUTPUTS, (False in multi,) * 2 + (True in multi,) * 2)
            if wanted
        ]
        shapes = {n: (k, *TENSOR_SHAPES[n]) for n in names}
        try:
            out = self.decoder.run(feed, shapes)
        except Exception as e:  # noqa: BLE001 - the whole group fails, the server goes on
            for d in group:
                answers[d.index] = RequestError(f"decoder failed: {e}")
            return
        for row, d in enumerate(group):
            if d.request.multimask:
                low_res, iou = out["multimask_masks"][row], out["multimask_iou_predictions"][row]
            else:
                low_res, iou = out["masks"][row], out["iou_predictions"][row]
            answers[d.index] = self._answer(d, low_res, iou)

    def _answer(self, d: _Decode, low_res: "torch.Tensor", iou: "torch.Tensor") -> SessionAnswer:
        """Masks at the original size from ``low_res`` ``[M, 256, 256]`` (unclamped) and
        ``iou`` ``[M]``; remember the best mask's clamped logits for the next refinement."""
        import torch
        import torch.nn.functional as F

        wanted = d.request.outputs
        clamped = low_res.clamp(-MASK_LOGIT_CLAMP, MASK_LOGIT_CLAMP)
        best = int(torch.argmax(iou))
        d.session.previous_logits = clamped[best : best + 1][None].clone()
        answer = SessionAnswer(image_size=d.session.orig_hw)
        if wanted & {"masks", "mask_png", "mask_rle"}:
            # As the predictor: upsample the unclamped logits, then threshold at 0.
            logits = F.interpolate(
                low_res[None], d.session.orig_hw, mode="bilinear", align_corners=False
            )[0]
            on_device = logits > 0
            if "mask_rle" in wanted:  # counted on the device: only the runs cross
                answer.mask_rle = mask_to_rle(on_device[best])
            if wanted & {"masks", "mask_png"}:
                masks = on_device.to(torch.uint8).cpu().numpy()
                if "masks" in wanted:
                    answer.masks = masks
                if "mask_png" in wanted:
                    answer.mask_png = encode_png(masks[best] * np.uint8(255))
        if "iou_predictions" in wanted:
            answer.iou_predictions = iou.float().cpu().numpy()
        if "low_res_masks" in wanted:
            answer.low_res_masks = clamped.cpu().numpy()
        return answer

    def _closing_answer(self, request: SessionRequest) -> SessionAnswer:
        """A request that only ends its session: always answered, whether or not the session
        is still here (closing is idempotent)."""
        session = self.store.get(request.session_id)
        return self._empty_answer(session.orig_hw if session else (0, 0), request)

    def _empty_answer(self, orig_hw: tuple[int, int], request: SessionRequest) -> SessionAnswer:
        """A request without a prompt (the image alone): no masks, the image's size."""
        if request.use_previous_mask:
            raise RequestError("use_previous_mask needs a prompt (points or a box) to refine")
        h, w = orig_hw
        side = LOW_RES_MASK_SIZE
        return SessionAnswer(
            image_size=orig_hw,
            masks=np.zeros((0, h, w), np.uint8),
            iou_predictions=np.zeros((0,), np.float32),
            low_res_masks=np.zeros((0, side, side), np.float32),
            mask_png=b"",
            mask_rle=np.zeros((0,), np.int32),
        )

    def close(self) -> None:
        """Drop every session (the instance is unloading)."""
        self.store.clear()
