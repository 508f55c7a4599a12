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
ONNX graphs, run by ONNX Runtime (:class:`~sam2_triton.sessions.runtime.TorchOrtSession`), or
the PyTorch modules they are traced from (:mod:`sam2_triton.sessions.torch_networks`).

Batching: :meth:`ImageSessionEngine.execute` takes every request Triton's sequence batcher
put into one batch (at most one per session): new images are encoded together (up to
``max_encode_batch`` per encoder run) and the prompts of any sessions are decoded in one
decoder run against their sessions' features: on the PyTorch runtime whatever their point
counts (filled up with absent points that no token attends to,
:mod:`~sam2_triton.sessions.padded_points`), on ONNX Runtime one run per point count.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sam2_triton.client.images import decode_image
from sam2_triton.client.outputs import encode_png
from sam2_triton.client.prompts import make_prompt
from sam2_triton.client.transforms import MASK_LOGIT_CLAMP, PIXEL_MEAN, PIXEL_STD, Sam2Transforms
from sam2_triton.export import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_OUTPUTS, TENSOR_SHAPES
from sam2_triton.model_config import MAX_POINTS, SessionServing
from sam2_triton.models import IMAGE_SIZE, LOW_RES_MASK_SIZE, UserError
from sam2_triton.sessions.jpeg import JpegDecoder
from sam2_triton.sessions.padded_points import pad_points
from sam2_triton.sessions.runtime import (
    BucketedOrtSession,
    CudaGraphOrtSession,
    IdleRelease,
    StageClock,
    TorchOrtSession,
    cuda_index,
)
from sam2_triton.sessions.store import SessionStore, StoreFull, why_missing_in_words

if TYPE_CHECKING:
    import torch

    from sam2_triton.sessions.torch_networks import TorchModuleSession, TorchNetworks

log = logging.getLogger(__name__)

#: Point counts the warm-up runs the PyTorch decoder with, at each batch bucket: prompts of
#: one count (one or two clicks, a box, a box and a click).
WARM_POINT_COUNTS = (1, 2, 3)
#: The same for the mixed decoder, at each bucket of two rows or more: batches mixing point
#: counts, filled up to a power of two (up to eight points).
WARM_MIXED_POINT_COUNTS = (2, 4, 8)

#: Pixels upsampled in one run at most (float32: 1 GiB), for a batch's masks.
UPSAMPLE_ELEMENTS = 1 << 28

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
    ``max_encode_batch`` new images per encoder run; on a GPU, after ``memory_release_idle_s``
    seconds without a request the device memory a burst left in torch's cache goes back
    (:class:`~sam2_triton.sessions.runtime.IdleRelease`; 0: never). The defaults are those
    the generated config writes (:class:`~sam2_triton.model_config.SessionServing`).
    """

    max_sessions: int = SessionServing.max_sessions
    idle_timeout_s: float = float(SessionServing.idle_timeout_s)
    max_image_pixels: int = SessionServing.max_image_pixels
    max_image_bytes: int = SessionServing.max_image_bytes
    max_points: int = MAX_POINTS
    max_encode_batch: int = SessionServing.max_encode_batch
    memory_release_idle_s: float = SessionServing.memory_release_idle_s


#: The session id of :meth:`ImageSessionEngine.warm`'s request (Triton's are integers or
#: client strings; the warm-up runs before any request can arrive).
WARM_UP_SESSION = "sam2-triton warm-up"


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
        """Bytes a session holds at most: the features in float32 plus one mask's low-res
        logits (an engine's :meth:`ImageSessionEngine.session_nbytes` may be less)."""
        floats = sum(int(np.prod(TENSOR_SHAPES[n])) for n in ENCODER_OUTPUTS)
        return 4 * (floats + LOW_RES_MASK_SIZE * LOW_RES_MASK_SIZE)


def to_host(tensor: "torch.Tensor") -> "torch.Tensor":
    """A host copy of ``tensor``: from a GPU, into page-locked memory (torch's caching host
    allocator) without waiting, so that the masks of a whole batch cross at full bandwidth
    behind one synchronisation (a pageable copy of a 1920x1080 mask waits for the device and
    crosses at a fraction of the speed); a host tensor itself. Synchronise before reading."""
    import torch

    if tensor.device.type != "cuda":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


def _has_mem_pools() -> bool:
    """Whether this torch routes allocations to a pool of one's own (2.6 and later)."""
    import torch

    return hasattr(torch.cuda, "MemPool") and hasattr(torch.cuda, "use_mem_pool")


def masks_to_rle(masks: "Sequence[torch.Tensor]") -> list[np.ndarray]:
    """COCO's uncompressed run-length encoding of each bool mask of ``masks`` (each item an
    ``[H, W]`` mask or an ``[N, H, W]`` stack of masks; sizes may differ): the lengths of
    alternating runs of 0s and 1s over the pixels in column-major order (down each column,
    then the next), starting with a run of 0s (0 long when the first pixel is set), int32,
    one array per mask in order. ``pycocotools.mask.frPyObjects({"counts": list(rle),
    "size": [H, W]}, H, W)`` decodes it; :func:`sam2_triton.client.outputs.rle_to_mask`
    does too.

    Counted on the masks' device for all of them at once: the masks are joined end to end
    (one transposing copy per item), every run's first pixel is found by one ``nonzero`` (a
    pixel that differs from the one before, or a mask's first pixel), the run lengths are
    the differences of those positions, and they cross to the host in one copy into
    page-locked memory (a single synchronisation besides ``nonzero``'s however many masks,
    and 4 bytes per run)."""
    import torch

    if not masks:
        return []
    stacks = [m if m.dim() == 3 else m[None] for m in masks]
    sizes_host = [int(m.shape[1] * m.shape[2]) for m in stacks for _ in range(m.shape[0])]
    flat = torch.cat([m.transpose(1, 2).reshape(-1) for m in stacks])
    device = flat.device
    sizes = torch.tensor(sizes_host, device=device)
    offsets = torch.cumsum(sizes, 0)
    firsts = offsets - sizes  # each mask's first pixel
    change = torch.ones_like(flat)
    change[1:] = flat[1:] != flat[:-1]
    change[firsts] = True
    starts = torch.nonzero(change).flatten()
    runs = torch.diff(starts, append=offsets[-1:])  # run lengths, mask after mask
    first_run = torch.searchsorted(starts, firsts)  # each mask's first run
    first_set = flat[firsts]
    payload = torch.cat([first_run, first_set.to(first_run.dtype), runs]).to(torch.int32)
    host = to_host(payload)  # page-locked: a pageable copy of speckle's megabytes crawls
    if payload.is_cuda:
        torch.cuda.current_stream(payload.device).synchronize()
    host = host.numpy()
    n = len(sizes_host)
    bounds = [*host[:n].tolist(), len(host) - 2 * n]
    out = []
    for i in range(n):
        mask_runs = host[2 * n + bounds[i] : 2 * n + bounds[i + 1]]
        if host[n + i]:  # COCO's runs start with 0s: a run of none first
            mask_runs = np.concatenate([np.zeros(1, np.int32), mask_runs])
        out.append(np.ascontiguousarray(mask_runs, np.int32))
    return out


def mask_to_rle(mask: "torch.Tensor") -> np.ndarray:
    """The run lengths of one ``[H, W]`` bool mask (:func:`masks_to_rle`)."""
    return masks_to_rle([mask])[0]


def decoder_shapes(points: int = 1) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """The decoder graph's input and output shapes without the batch dim, for prompts of
    ``points`` points (the one free dim of its inputs besides the batch)."""
    inputs = {n: tuple(points if d == -1 else d for d in TENSOR_SHAPES[n]) for n in DECODER_INPUTS}
    return inputs, {n: TENSOR_SHAPES[n] for n in DECODER_OUTPUTS}


def _height_width(image: "np.ndarray | torch.Tensor") -> tuple[int, int]:
    """``(H, W)`` of an ``[H, W, 3]`` array or a ``[3, H, W]`` tensor."""
    if isinstance(image, np.ndarray):
        return int(image.shape[0]), int(image.shape[1])
    return int(image.shape[1]), int(image.shape[2])


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
    in-process baseline takes the same). JPEG files are decoded by torchvision
    (:class:`~sam2_triton.sessions.jpeg.JpegDecoder`; with nvJPEG on a CUDA device unless
    ``jpeg_on_gpu`` is false), other files by Pillow. On a CUDA device, batches of several
    sessions' clicks run padded to one of ``decode_buckets``
    (:class:`~sam2_triton.sessions.runtime.BucketedOrtSession`, with CUDA graphs too when
    ``cuda_graphs``; none: unpadded). After encoder runs of more than
    ``shrink_encoder_arena_above`` images, the next smaller run gives their extra working
    memory back (None: the encoder's arena keeps its peak).

    ``torch_networks``: run the networks as PyTorch modules instead
    (:class:`~sam2_triton.sessions.torch_networks.TorchNetworks`: the modules the ONNX
    graphs are traced from, on the checkpoint); ``encoder_path`` and ``decoder_path`` are
    then not read. On a CUDA device, single images and each bucket of clicks replay CUDA
    graphs that torch captures (with ``cuda_graphs``); that device must be the process's
    current one (:func:`~sam2_triton.sessions.runtime.torch_device` makes it so: measured on
    a two-GPU H200 host, an engine on GPU 1 otherwise failed its first graph capture).

    On a CUDA device, :attr:`idle_release` gives a burst's cached memory back once the engine
    has been idle for ``limits.memory_release_idle_s`` (its thread is started by the caller:
    ``engine.idle_release.start()``; :meth:`close` stops it); ``on_memory_release(before,
    after)`` gets torch's reserved bytes around each release.
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
        jpeg_on_gpu: bool = True,
        decode_buckets: Sequence[int] = (2, 4, 8, 16),
        shrink_encoder_arena_above: int | None = 1,
        on_drop: Callable[[Hashable, ImageSession, str], None] | None = None,
        torch_networks: "TorchNetworks | None" = None,
        on_memory_release: Callable[[int, int], None] | None = None,
    ) -> None:
        import torch

        self.device = device
        self.limits = limits
        self.torch_networks = torch_networks
        #: The decoder for a batch of prompts of several point counts, filled up with absent
        #: points (:mod:`~sam2_triton.sessions.padded_points`): the PyTorch networks' (None:
        #: one decoder run per point count).
        self.mixed_decoder: "TorchModuleSession | None" = None
        cuda = device.type == "cuda"
        if torch_networks is not None:
            # A graph per padded shape: single images, and each bucket of clicks.
            self.encoder, self.decoder, self.mixed_decoder = torch_networks.build(
                device,
                cuda_graphs=cuda_graphs,
                # No padding of images: the compiled encoder takes any batch of several.
                decode_buckets=[1, *decode_buckets] if cuda else (),
                release_encoder_above=shrink_encoder_arena_above,
            )
        else:
            self._onnx_networks(
                encoder_path,
                decoder_path,
                intra_op_threads,
                cuda_graphs,
                decode_buckets,
                shrink_encoder_arena_above,
            )
        self.store: SessionStore[ImageSession] = SessionStore(
            limits.max_sessions, limits.idle_timeout_s, on_drop=on_drop
        )
        self.transforms = Sam2Transforms()
        self.jpeg = JpegDecoder(device, on_gpu=jpeg_on_gpu)
        side = LOW_RES_MASK_SIZE
        self._no_mask = torch.zeros((1, 1, side, side), dtype=torch.float32, device=device)
        #: Set to a :class:`~sam2_triton.sessions.runtime.StageClock` to time each stage.
        self.clock: StageClock | None = None
        self._mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32, device=device).view(3, 1, 1)
        self._std = torch.tensor(PIXEL_STD, dtype=torch.float32, device=device).view(3, 1, 1)
        self._feature_bytes: int | None = None  # a session's features, once one was encoded
        # Sessions' tensors in a pool of their own on a GPU: a burst's temporaries then never
        # share a segment of torch's cache with a session that outlives them, so an idle
        # release can give all of those back (a session's 2-4 MiB maps would otherwise pin
        # 20 MiB segments of them). The pool is bounded as the sessions are.
        self._session_pool = torch.cuda.MemPool() if cuda and _has_mem_pools() else None
        #: Gives a burst's cached memory back when idle (GPU; its thread: ``.start()``).
        self.idle_release = IdleRelease.for_device(
            device, limits.memory_release_idle_s, on_memory_release
        )

    def session_nbytes(self) -> int:
        """Bytes a session of this engine holds at most: its features as the encoder gives
        them (the PyTorch networks in FP16 keep the maps they make in float16) plus one
        mask's low-res logits; :meth:`ImageSession.nbytes` (all float32) until an image
        was encoded (the warm-up encodes one)."""
        if self._feature_bytes is None:
            return ImageSession.nbytes()
        return self._feature_bytes + 4 * LOW_RES_MASK_SIZE * LOW_RES_MASK_SIZE

    def _onnx_networks(
        self,
        encoder_path,
        decoder_path,
        intra_op_threads: int,
        cuda_graphs: bool,
        decode_buckets: Sequence[int],
        shrink_encoder_arena_above: int | None,
    ) -> None:
        """The encoder and decoder as ONNX Runtime sessions of the exported graphs."""
        device = self.device
        # Starts come one image at a time but also in bursts (up to max_encode_batch): once
        # single images follow a burst, its working set goes back to the device.
        self.encoder = TorchOrtSession(
            encoder_path, device, intra_op_threads, shrink_arena_above=shrink_encoder_arena_above
        )
        # The decoder's time at small batches is mostly kernel launches: CUDA graphs.
        decoder = CudaGraphOrtSession if cuda_graphs and device.type == "cuda" else TorchOrtSession
        self.decoder = decoder(decoder_path, device, intra_op_threads)
        if device.type == "cuda" and decode_buckets:
            # Batches of several sessions' clicks at a few fixed sizes (see the class).
            self.decoder = BucketedOrtSession(
                decoder_path,
                device,
                self.decoder,
                decode_buckets,
                intra_op_threads,
                warm=decoder_shapes(),
                graphs=cuda_graphs,
            )

    def warm(self) -> float:
        """Start a session on a blank 1920×1080 JPEG with a click, ending it in the same
        request, so that an instance's kernels, plans and JPEG decoder are loaded before its
        first request rather than during it; seconds taken. Nothing is kept."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (1920, 1080), (128, 128, 128)).save(buffer, "JPEG")
        t0 = time.perf_counter()
        request = SessionRequest(
            WARM_UP_SESSION,
            start=True,
            end=True,
            image_bytes=buffer.getvalue(),
            points=np.array([[960.0, 540.0]], np.float32),
            labels=np.array([1], np.int32),
        )
        (answer,) = self.execute([request])
        if isinstance(answer, RequestError):
            raise UserError(f"the warm-up request failed: {answer}")
        if self.device.type == "cuda":
            import torch

            if self.torch_networks is not None:
                self._warm_torch_networks()
            torch.cuda.synchronize(self.device)
            # What the warm-up's runs left in torch's cache (a batch of two images, the
            # graphs' plain runs) goes back to the device; the graphs keep their own pool.
            torch.cuda.empty_cache()
            if self.idle_release is not None:
                self.idle_release.settle()
        return time.perf_counter() - t0

    def _warm_torch_networks(self) -> None:
        """Run the PyTorch networks on zeros of every kind of shape a request brings: a
        compiled module compiles again for a batch of several rows and for prompts of several
        points (``torch.compile`` treats sizes 1 apart), and each padded shape captures its
        CUDA graph at its first run. Here, at load, rather than in someone's request."""
        import torch

        zeros = torch.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), device=self.device)
        for batch in (2, 1):
            shapes = {n: (batch, *TENSOR_SHAPES[n]) for n in ENCODER_OUTPUTS}
            features = self.encoder.run({"image": zeros[:batch]}, shapes)
        # The decoder's graphs are per dtype of their inputs: the features as sessions keep them.
        dtypes = {n: v.dtype for n, v in features.items()}
        # Each point count its own graph: torch.compile gives two dims of equal size one symbol
        # (batch 2 and 2 points compile for batch == points only), so several rows with other
        # point counts are compiled here too. A mixed batch has two rows or more.
        for decoder, point_counts, fewest_rows in (
            (self.decoder, WARM_POINT_COUNTS, 1),
            (self.mixed_decoder, WARM_MIXED_POINT_COUNTS, 2),
        ):
            for batch in [b for b in decoder.buckets or [1] if b >= fewest_rows]:
                for points in point_counts:
                    inputs, outputs = decoder_shapes(points)
                    feed = {
                        n: torch.zeros((batch, *shape), device=self.device, dtype=dtypes.get(n))
                        for n, shape in inputs.items()
                    }
                    decoder.run(feed, {n: (batch, *shape) for n, shape in outputs.items()})

    @property
    def compile_error(self) -> str | None:
        """Why a PyTorch network runs eager although ``torch.compile`` was asked for."""
        networks = (self.encoder, self.decoder, self.mixed_decoder)
        errors = (getattr(n, "compile_error", None) for n in networks)
        return next((e for e in errors if e), None)

    def stage(self, name: str) -> AbstractContextManager:
        """A context timing stage ``name`` on :attr:`clock` (nothing while it is None)."""
        return nullcontext() if self.clock is None else self.clock.stage(name)

    # --- the batch ---------------------------------------------------------------------------

    def execute(self, requests: Sequence[SessionRequest]) -> list[SessionAnswer | RequestError]:
        """Answer one batch (at most one request per session); an error answers only its
        request. Sessions of this batch are never evicted by its own new images."""
        with self.idle_release.busy() if self.idle_release else nullcontext():
            return self._execute(requests)

    def _execute(self, requests: Sequence[SessionRequest]) -> list[SessionAnswer | RequestError]:
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
                with self.stage("prompt"):
                    decode = self._prepare(i, request, session)
            except (RequestError, UserError) as e:
                answers[i] = RequestError(str(e))
                continue
            # One decoder run for all prompts where a decoder takes absent points (the
            # PyTorch networks); ONNX Runtime's graphs: one run per point count.
            group = 0 if self.mixed_decoder is not None else decode.coords.shape[1]
            decodes.setdefault(group, []).append(decode)
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
                with self.stage("image decode"):
                    limit = self.limits.max_image_pixels
                    rgb = self.jpeg.decode(request.image_bytes, "image_bytes", limit)
                    if rgb is None:  # not a JPEG torchvision takes: Pillow's path
                        rgb = decode_image(request.image_bytes, "image_bytes", max_pixels=limit)
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
                session = ImageSession(feats, _height_width(rgb))
                try:
                    self.store.put(requests[i].session_id, session, in_use)
                except StoreFull as e:
                    answers[i] = RequestError(str(e))
                    continue
                fresh[i] = session
        return fresh

    def preprocess(self, rgb: "np.ndarray | torch.Tensor") -> "torch.Tensor":
        """``[H, W, 3]`` uint8 RGB array (or a ``[3, H, W]`` uint8 tensor on the device, as
        :class:`~sam2_triton.sessions.jpeg.JpegDecoder` gives) → ``[3, 1024, 1024]`` float32
        on the device, as Meta's ``SAM2Transforms``: ``ToTensor`` (÷255), ``Resize((1024,
        1024))`` (bilinear, antialiased), ``Normalize(mean, std)``."""
        import torch
        import torch.nn.functional as F

        if isinstance(rgb, np.ndarray):
            if not rgb.flags.writeable:  # decoded images may be read-only views
                rgb = rgb.copy()
            x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)
        else:
            x = rgb.to(self.device)
        x = x.to(torch.float32).div(255)
        if tuple(x.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(
                x[None],
                size=(IMAGE_SIZE, IMAGE_SIZE),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0]
        return (x - self._mean) / self._std

    def encode(self, images: Sequence) -> list[dict[str, "torch.Tensor"]]:
        """Feature maps (``[1, C, S, S]`` each, on the device) of each image (as
        :meth:`preprocess` takes them), from one encoder run."""
        import torch

        with self.stage("preprocess"):
            batch = torch.stack([self.preprocess(rgb) for rgb in images])
        shapes = {n: (len(images), *TENSOR_SHAPES[n]) for n in ENCODER_OUTPUTS}
        with self.stage("encoder"):
            out = self.encoder.run({"image": batch}, shapes)
        if self._feature_bytes is None:
            self._feature_bytes = sum(v[0].nbytes for v in out.values())
        if len(images) == 1 and self._session_pool is None:
            return [out]
        # Own storage per session (so evicting one frees its memory), in the sessions' pool.
        with self._session_memory():
            return [{n: v[j : j + 1].clone() for n, v in out.items()} for j in range(len(images))]

    def _session_memory(self) -> AbstractContextManager:
        """Allocations inside go to the sessions' pool (where there is one)."""
        import torch

        if self._session_pool is None:
            return nullcontext()
        return torch.cuda.use_mem_pool(self._session_pool, cuda_index(self.device))

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
        """One decoder run for prompts of any sessions (of one point count unless there is
        a :attr:`mixed_decoder`)."""
        import torch

        k = len(group)
        with self.stage("prompt"):
            feed: dict[str, torch.Tensor] = {}
            for name in ENCODER_OUTPUTS:
                parts = [d.session.features[name] for d in group]
                feed[name] = parts[0] if k == 1 else torch.cat(parts)
            decoder = self.decoder
            if len({d.coords.shape[1] for d in group}) == 1:
                coords = np.concatenate([d.coords for d in group])
                labels = np.concatenate([d.labels for d in group])
            else:  # filled up to a power of two with absent points
                decoder = self.mixed_decoder
                coords, labels = pad_points([d.coords for d in group], [d.labels for d in group])
            feed["point_coords"] = torch.from_numpy(coords)
            feed["point_labels"] = torch.from_numpy(labels)
            side = LOW_RES_MASK_SIZE
            if all(d.mask_input is None for d in group):
                feed["mask_input"] = self._no_mask.expand(k, 1, side, side)
            else:
                feed["mask_input"] = torch.cat(
                    [self._no_mask if d.mask_input is None else d.mask_input for d in group]
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
            with self.stage("decoder" if decoder is self.decoder else "mixed decoder"):
                out = decoder.run(feed, shapes)
        except Exception as e:  # noqa: BLE001 - the whole group fails, the server goes on
            for d in group:
                answers[d.index] = RequestError(f"decoder failed: {e}")
            return
        with self.stage("masks"):
            for d, answer in zip(group, self._answers(group, out)):
                answers[d.index] = answer

    def _answers(self, group: list[_Decode], out: dict[str, "torch.Tensor"]) -> list[SessionAnswer]:
        """The group's answers from the decoder's outputs (``[k, M, 256, 256]`` unclamped
        logits and ``[k, M]`` IoU): masks at each original size, thresholded at 0 after
        bilinear upsampling as the predictor does; each session remembers its best mask's
        clamped logits for the next refinement.

        All device work of the group is queued before anything crosses to the host, and only
        what a request asked for is made: a request wanting only the best mask (``mask_png``,
        ``mask_rle``) gets that mask alone upsampled. The work is done for the whole group
        at once, not row by row: the best masks picked on the device in one step, the rows
        of one original size upsampled, thresholded and copied to the host together, the run
        lengths of the whole group counted together (:func:`masks_to_rle`), the IoU copied
        in one piece (a batch of 16 clicks is otherwise mostly kernel launches here).
        """
        import torch

        multi = [d.request.multimask for d in group]
        kinds = ["multimask_" if m else "" for m in multi]
        low_res = [out[f"{kind}masks"][row] for row, kind in enumerate(kinds)]  # [M, 256, 256]
        best_logits, best = self._best_logits(out, multi)  # [k, 1, 256, 256], [k]
        clamped = best_logits.clamp(-MASK_LOGIT_CLAMP, MASK_LOGIT_CLAMP)
        with self._session_memory():
            for d, previous in zip(group, clamped.split(1)):
                d.session.previous_logits = previous.clone()  # its own 256 KiB, not the batch's
        # Rows of one original size (and mask count) are upsampled in one run: rows wanting
        # every mask ("masks") from their M masks, the others from their best mask alone.
        wanted = [d.request.outputs for d in group]
        batches: dict[tuple, list[int]] = {}
        for row, d in enumerate(group):
            if wanted[row] & {"masks", "mask_png", "mask_rle"}:
                full = "masks" in wanted[row]
                key = (d.session.orig_hw, len(low_res[row]) if full else 0)
                batches.setdefault(key, []).append(row)
        host: dict[int, "torch.Tensor"] = {}  # row -> [M or 1, H, W] uint8 on the host
        rle_items, rle_rows = [], []
        for (hw, m), same_size in batches.items():
            # At most UPSAMPLE_ELEMENTS pixels at once: 16 rows of three 64-megapixel masks
            # would otherwise need 12 GiB for one float32 upsampling.
            per_row = max(m, 1) * hw[0] * hw[1]
            step = max(1, UPSAMPLE_ELEMENTS // per_row)
            for first in range(0, len(same_size), step):
                rows = same_size[first : first + step]
                up = self._upsampled_masks(rows, m, hw, low_res, best_logits, wanted, host)
                want_rle = [j for j, row in enumerate(rows) if "mask_rle" in wanted[row]]
                if not m and len(want_rle) == len(rows):  # the whole chunk at once
                    rle_items.append(up[:, 0])
                    rle_rows += rows
                    continue
                for j in want_rle:
                    one = up[j, 0] if not m else up[j].index_select(0, best[rows[j]].view(1))[0]
                    rle_items.append(one)
                    rle_rows.append(rows[j])
        rles = dict(zip(rle_rows, masks_to_rle(rle_items)))  # the first synchronisation
        if host and self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the masks' copies
        host_iou = {
            kind: out[f"{kind}iou_predictions"].float().cpu().numpy() for kind in set(kinds)
        }
        answers = []
        for row, d in enumerate(group):
            answer = SessionAnswer(image_size=d.session.orig_hw)
            answer.mask_rle = rles.get(row)
            iou = host_iou[kinds[row]][row]
            if wanted[row] & {"masks", "mask_png"}:
                row_masks = host[row].numpy()
                if "masks" in wanted[row]:
                    answer.masks = row_masks
                if "mask_png" in wanted[row]:
                    one = row_masks[0] if len(row_masks) == 1 else row_masks[int(iou.argmax())]
                    answer.mask_png = encode_png(one * np.uint8(255))
            if "iou_predictions" in wanted[row]:
                answer.iou_predictions = iou
            if "low_res_masks" in wanted[row]:
                row_low_res = low_res[row].clamp(-MASK_LOGIT_CLAMP, MASK_LOGIT_CLAMP)
                answer.low_res_masks = row_low_res.cpu().numpy()
            answers.append(answer)
        return answers

    def _upsampled_masks(
        self,
        rows: list[int],
        m: int,
        hw: tuple[int, int],
        low_res: list["torch.Tensor"],
        best_logits: "torch.Tensor",
        wanted: list[frozenset[str]],
        host: dict[int, "torch.Tensor"],
    ) -> "torch.Tensor":
        """``[n, M, H, W]`` bool masks of ``rows`` (images of size ``hw``): their ``m``
        masks each (``low_res``, ``[M, 256, 256]`` a row), or with ``m`` 0 their best one
        (``best_logits``, ``[k, 1, 256, 256]``), upsampled in one run and thresholded at 0;
        those of the rows that asked for ``masks`` or ``mask_png`` are also copied into
        ``host`` (asynchronously: synchronise before reading)."""
        import torch

        if m:
            source = torch.stack([low_res[row] for row in rows])
        elif rows == list(range(rows[0], rows[-1] + 1)):
            source = best_logits[rows[0] : rows[-1] + 1]  # a view: no index to copy over
        else:
            source = best_logits[rows]
        up = self._upsample(source, hw) > 0
        copy = [j for j, row in enumerate(rows) if wanted[row] & {"masks", "mask_png"}]
        if len(copy) == len(rows):
            copied = to_host(up.view(torch.uint8))
            host.update((row, copied[j]) for j, row in enumerate(rows))
        else:
            for j in copy:
                host[rows[j]] = to_host(up[j].view(torch.uint8))
        return up

    @staticmethod
    def _best_logits(
        out: dict[str, "torch.Tensor"], multi: list[bool]
    ) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Each row's best mask's logits ``[k, 1, 256, 256]`` (the single mask, or the
        multimask output's highest-IoU one) and its index among the row's masks ``[k]``,
        picked on the device without a synchronisation."""
        import torch

        k = len(multi)
        if not any(multi):
            single = out["masks"]
            return single, torch.zeros(k, dtype=torch.long, device=single.device)
        masks, iou = out["multimask_masks"], out["multimask_iou_predictions"]
        best = iou.argmax(1)
        picked = masks[torch.arange(k, device=masks.device), best][:, None]
        if all(multi):
            return picked, best
        is_multi = torch.tensor(multi)
        if masks.device.type == "cuda":  # from page-locked memory: no synchronisation
            is_multi = is_multi.pin_memory()
        is_multi = is_multi.to(masks.device, non_blocking=True)
        single = out["masks"]
        return (
            torch.where(is_multi.view(k, 1, 1, 1), picked, single),
            torch.where(is_multi, best, torch.zeros_like(best)),
        )

    @staticmethod
    def _upsample(logits: "torch.Tensor", hw: tuple[int, int]) -> "torch.Tensor":
        """``[n, M, 256, 256]`` logits → ``[n, M, H, W]``, bilinear as the predictor does."""
        import torch.nn.functional as F

        return F.interpolate(logits, hw, mode="bilinear", align_corners=False)

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
        """Drop every session and stop the idle release's thread (the instance is unloading)."""
        if self.idle_release is not None:
            self.idle_release.stop()
        self.store.clear()
