"""Export SAM2.1's image encoder and its prompt encoder + mask decoder to ONNX.

The two graphs are the public contract of the served models (names users ``curl``):

``sam2_encoder``
    ``image`` FP32 ``[B, 3, 1024, 1024]``, normalised as Meta's ``SAM2Transforms`` does
    (RGB in [0, 1], resized to 1024x1024, ImageNet mean/std) →
    ``image_embeddings`` ``[B, 256, 64, 64]`` (``no_mem_embed`` already added, as
    ``SAM2ImagePredictor.set_image`` does), ``high_res_feats_0`` ``[B, 32, 256, 256]``,
    ``high_res_feats_1`` ``[B, 64, 128, 128]``.

``sam2_decoder``
    the three encoder outputs, ``point_coords`` FP32 ``[B, N, 2]`` (x, y in the 1024x1024
    input frame), ``point_labels`` FP32 ``[B, N]`` (1 foreground, 0 background, 2/3 box
    corners, -1 padding), ``mask_input`` FP32 ``[B, 1, 256, 256]`` (low-res logits of an
    earlier prediction) and ``has_mask_input`` FP32 ``[B, 1]`` (1 to use ``mask_input``) →
    ``masks`` ``[B, 1, 256, 256]`` and ``iou_predictions`` ``[B, 1]``: the single mask that
    ``predict(multimask_output=False)`` gives, with SAM2's dynamic fall-back to the most
    confident multimask output when the single mask is unstable; and
    ``multimask_masks`` ``[B, 3, 256, 256]`` with ``multimask_iou_predictions`` ``[B, 3]``:
    what ``predict(multimask_output=True)`` gives. All four come from one run of the mask
    decoder; a Triton client asks only for the outputs it wants, so the other pair costs
    no bandwidth.

Mask logits are returned unclamped (the predictor upsamples unclamped logits); the
predictor clamps the low-res logits it hands back for reuse to [-32, 32], and so does
the client before it sends them back as ``mask_input``.

After tracing, :func:`sam2_triton.optimize.fold_static_shapes` folds the arithmetic on
static sizes that the tracer records (the image is always 1024x1024; only the batch and
the point count vary), so ONNX Runtime's CUDA EP runs the graphs without host copies.
With ``precision="fp16"`` the weights and the compute are FP16 while the inputs and
outputs stay FP32: the same contract for both precisions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sam2_triton.checksums import check_sha256
from sam2_triton.files import atomic_path
from sam2_triton.models import (
    EMBED_DIM,
    EMBED_SIZE,
    HIGH_RES_FEATS,
    IMAGE_SIZE,
    LOW_RES_MASK_SIZE,
    ModelSize,
    UserError,
)

if TYPE_CHECKING:  # torch is only needed to export, never to serve or call
    import torch
    from sam2.modeling.sam2_base import SAM2Base

log = logging.getLogger(__name__)

#: ONNX opset of both graphs. 17 is what the legacy TorchScript exporter handles best
#: (LayerNormalization is native from 17) and what ONNX Runtime ≥ 1.14 and TensorRT ≥ 8.6
#: (every NGC Triton image since 23.xx) support.
OPSET = 17

ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings", "high_res_feats_0", "high_res_feats_1")
DECODER_INPUTS = (
    "image_embeddings",
    "high_res_feats_0",
    "high_res_feats_1",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "multimask_masks", "multimask_iou_predictions")
#: The ``sam2`` ensemble's first step: the image and the prompts in, the image out.
PROMPT_CHECK_INPUTS = ("image", "point_coords", "point_labels", "mask_input", "has_mask_input")
PROMPT_CHECK_OUTPUTS = ("checked_image",)

#: Beside an encoder's ``model.onnx`` (standard ONNX operators: what TensorRT takes), the same
#: graph with ONNX Runtime's fused attention (contrib operators), for ONNX Runtime's CUDA EP.
CUDA_MODEL_FILENAME = "model.cuda.onnx"

#: Precisions :func:`export_encoder` and :func:`export_decoder` write. ``fp16`` is meant
#: for GPUs; inputs and outputs stay FP32 either way.
PRECISIONS = ("fp32", "fp16")

#: Shapes without the batch dimension; ``-1`` is a dimension the caller chooses.
TENSOR_SHAPES: dict[str, tuple[int, ...]] = {
    "image": (3, IMAGE_SIZE, IMAGE_SIZE),
    "checked_image": (3, IMAGE_SIZE, IMAGE_SIZE),
    "image_embeddings": (EMBED_DIM, EMBED_SIZE, EMBED_SIZE),
    "high_res_feats_0": (HIGH_RES_FEATS[0][0], HIGH_RES_FEATS[0][1], HIGH_RES_FEATS[0][1]),
    "high_res_feats_1": (HIGH_RES_FEATS[1][0], HIGH_RES_FEATS[1][1], HIGH_RES_FEATS[1][1]),
    "point_coords": (-1, 2),
    "point_labels": (-1,),
    "mask_input": (1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE),
    "has_mask_input": (1,),
    "masks": (1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE),
    "iou_predictions": (1,),
    "multimask_masks": (3, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE),
    "multimask_iou_predictions": (3,),
}


def load_sam2(
    size: ModelSize, checkpoint: str | os.PathLike, sha256: str | None = None
) -> "SAM2Base":
    """Build SAM2.1 of ``size`` from Meta's config and load ``checkpoint`` into it (eval, CPU).

    The checkpoint must have the SHA-256 ``sha256`` if given, else the one ``SHA256SUMS``
    beside it records (the downloader writes it), if any; it is read with
    ``torch.load(weights_only=True)`` (no pickled code runs) and must hold exactly the
    parameters of that size's config. Otherwise :class:`UserError`.
    """
    check_sha256(checkpoint, sha256)  # first: it needs no torch
    import torch
    from sam2.build_sam import build_sam2

    state_dict = read_checkpoint(checkpoint)
    model = build_sam2(size.config, ckpt_path=None, device="cpu", mode="eval")
    check_state_dict(model.state_dict(), state_dict, size, checkpoint)
    model.load_state_dict(state_dict)
    model.eval()
    torch.set_grad_enabled(False)
    return model


def read_checkpoint(checkpoint: str | os.PathLike) -> dict[str, "torch.Tensor"]:
    """The ``"model"`` state dict of a Meta-format checkpoint, or :class:`UserError`.

    Loaded with ``weights_only=True``: a file that needs arbitrary unpickling is refused,
    never executed.
    """
    import warnings

    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about odd pickle protocols
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    except Exception as e:  # noqa: BLE001 - torch raises many kinds on a damaged file
        # torch's own message suggests weights_only=False, which would run the file's code.
        raise UserError(
            f"checkpoint {path} is not a PyTorch checkpoint (corrupt, truncated or another "
            f"format: {type(e).__name__})"
        ) from e
    if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
        raise UserError(f"checkpoint {path} is not in Meta's SAM2 format ({{'model': state_dict}})")
    return loaded["model"]


def check_state_dict(
    expected: dict[str, "torch.Tensor"],
    found: dict[str, "torch.Tensor"],
    size: ModelSize,
    checkpoint: str | os.PathLike,
) -> None:
    """Raise :class:`UserError` unless ``found`` has exactly ``expected``'s keys and shapes."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k].shape != found[k].shape)
    if not (missing or unexpected or wrong):
        return
    detail = []
    if wrong:
        k = wrong[0]
        detail.append(
            f"{len(wrong)} tensors of another shape (e.g. {k}: "
            f"{tuple(found[k].shape)} instead of {tuple(expected[k].shape)})"
        )
    if missing:
        detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    raise UserError(
        f"checkpoint {checkpoint} is not a SAM2.1 {size.name} checkpoint: " + "; ".join(detail)
    )


def torch_module_classes() -> tuple[type, type]:
    """The classes of :func:`image_encoder` and :func:`prompt_decoder`: they subclass
    ``nn.Module``, so they are defined here, lazily (importing this module needs no torch)."""
    import torch
    from torch import nn

    class ImageEncoder(nn.Module):
        """``image`` [B,3,1024,1024] → the three feature maps the predictor caches.

        The same computation as ``SAM2ImagePredictor.set_image`` after its transforms:
        ``forward_image`` (Hiera + FPN + the decoder's ``conv_s0``/``conv_s1``), then
        ``no_mem_embed`` added to the lowest-resolution map.
        """

        def __init__(self, model: "SAM2Base") -> None:
            super().__init__()
            self.model = model
            sizes = [(s, s) for _, s in HIGH_RES_FEATS] + [(EMBED_SIZE, EMBED_SIZE)]
            self.feat_sizes = sizes
            # Hiera's position embedding (a bicubic resize of a 7x7 table plus a tiled
            # window table) depends only on the token grid, fixed by the 1024x1024 input.
            # Computed once here, it is a constant of the graph instead of a Resize, two
            # Ifs and a Tile re-evaluated (partly on the host) at every run.
            trunk = model.image_encoder.trunk
            grid = IMAGE_SIZE // trunk.patch_embed.proj.stride[0]
            with torch.no_grad():
                pos_embed = trunk._get_pos_embed((grid, grid)).detach().clone()
            self.register_buffer("pos_embed", pos_embed, persistent=False)

        #: False traces Meta's own position-embedding code (the unoptimised graph).
        precompute = True

        def forward(self, image: torch.Tensor):
            pos_embed = self.pos_embed if self.precompute else None
            with _fixed_pos_embed(self.model.image_encoder.trunk, pos_embed):
                backbone_out = self.model.forward_image(image)
            _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
            if self.model.directly_add_no_mem_embed:
                vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
            batch = image.shape[0]
            # (HW, B, C) sequences back to (B, C, H, W) maps.
            feats = [
                feat.permute(1, 2, 0).reshape(batch, -1, h, w)
                for feat, (h, w) in zip(vision_feats, self.feat_sizes)
            ]
            return feats[2], feats[0], feats[1]

    class PromptDecoder(nn.Module):
        """Prompt encoder + mask decoder for one prompt set per image in the batch.

        Follows ``SAM2ImagePredictor._predict``: points (box corners first, labelled 2 and 3)
        go to the prompt encoder with ``boxes=None``, so it appends one padding point; the
        mask embedding is used where ``has_mask_input`` is 1, ``no_mask_embed`` elsewhere.
        """

        def __init__(self, model: "SAM2Base") -> None:
            super().__init__()
            self.prompt_encoder = model.sam_prompt_encoder
            self.mask_decoder = model.sam_mask_decoder
            # The dense positional encoding of the 64x64 embedding grid is a constant:
            # computed here in FP32, it stays exact in an FP16 graph too.
            with torch.no_grad():
                dense_pe = self.prompt_encoder.get_dense_pe().detach().clone()
            self.register_buffer("dense_pe", dense_pe, persistent=False)

        #: False traces ``get_dense_pe()`` in the graph (the unoptimised graph).
        precompute = True

        def forward(
            self,
            image_embeddings: torch.Tensor,
            high_res_feats_0: torch.Tensor,
            high_res_feats_1: torch.Tensor,
            point_coords: torch.Tensor,
            point_labels: torch.Tensor,
            mask_input: torch.Tensor,
            has_mask_input: torch.Tensor,
        ):
            pe = self.prompt_encoder
            sparse = pe._embed_points(point_coords, point_labels, pad=True)
            no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(image_embeddings)
            # `where`, not a weighted sum, so garbage in an unused mask_input cannot leak in.
            use_mask = (has_mask_input > 0.5).reshape(-1, 1, 1, 1)
            dense = torch.where(use_mask, pe._embed_masks(mask_input), no_mask)
            with _broadcast_single_repeat(self.precompute):
                masks, iou, _, _ = self._predict_masks(
                    point_labels,
                    image_embeddings=image_embeddings,
                    image_pe=self.dense_pe if self.precompute else pe.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    repeat_image=False,
                    high_res_features=[high_res_feats_0, high_res_feats_1],
                )
            if self.mask_decoder.dynamic_multimask_via_stability:
                single_masks, single_iou = self.mask_decoder._dynamic_multimask_via_stability(
                    masks, iou
                )
            else:
                single_masks, single_iou = masks[:, 0:1], iou[:, 0:1]
            return single_masks, single_iou, masks[:, 1:], iou[:, 1:]

        def _predict_masks(self, point_labels: torch.Tensor, **kwargs):
            """Meta's ``MaskDecoder.predict_masks`` (``point_labels``: the prompt's, for a
            subclass that reads them; see :mod:`sam2_triton.sessions.padded_points`)."""
            return self.mask_decoder.predict_masks(**kwargs)

    return ImageEncoder, PromptDecoder


@contextlib.contextmanager
def _fixed_pos_embed(trunk, pos_embed: "torch.Tensor | None") -> Iterator[None]:
    """Let Hiera ``trunk`` use the precomputed ``pos_embed`` for the 1024x1024 grid."""
    if pos_embed is None:
        yield
        return
    expected = tuple(pos_embed.shape[1:3])

    def get_pos_embed(hw):
        if tuple(int(v) for v in hw) != expected:  # not the contract's input size
            return type(trunk)._get_pos_embed(trunk, hw)
        return pos_embed

    trunk._get_pos_embed = get_pos_embed
    try:
        yield
    finally:
        del trunk._get_pos_embed


@contextlib.contextmanager
def _broadcast_single_repeat(active: bool) -> Iterator[None]:
    """Trace ``torch.repeat_interleave(x, n, dim=0)`` of a batch-1 ``x`` as ``expand``.

    The mask decoder repeats the (batch-1) positional encoding once per prompt set. The
    legacy exporter writes ``repeat_interleave`` as OneHot → Reshape → Tile, whose repeat
    counts are computed on the GPU and read by the host: ONNX Runtime copies them back on
    every run. For one source row the result equals ``expand``, a pure broadcast.
    """
    if not active:
        yield
        return
    import torch

    original = torch.repeat_interleave

    def repeat_interleave(input, repeats=None, dim=None, **kwargs):  # noqa: A002 - torch's name
        if (
            dim == 0
            and not kwargs
            and isinstance(input, torch.Tensor)
            and input.dim() > 0
            and input.shape[0] == 1
            and not (isinstance(repeats, torch.Tensor) and repeats.numel() > 1)
        ):
            # ``repeats`` is passed through as traced (the prompt count), never as an int.
            return input.expand(repeats, *([-1] * (input.dim() - 1)))
        return original(input, repeats, dim=dim, **kwargs)

    torch.repeat_interleave = repeat_interleave
    try:
        yield
    finally:
        torch.repeat_interleave = original


def image_encoder(model: "SAM2Base") -> "torch.nn.Module":
    """The ``sam2_encoder`` graph as a torch module."""
    return torch_module_classes()[0](model).eval()


def prompt_decoder(model: "SAM2Base") -> "torch.nn.Module":
    """The ``sam2_decoder`` graph as a torch module."""
    return torch_module_classes()[1](model).eval()


def example_decoder_inputs(batch: int = 1, num_points: int = 2) -> tuple["torch.Tensor", ...]:
    """Random decoder inputs of the contract's shapes, for tracing and tests."""
    import torch

    g = torch.Generator().manual_seed(0)
    shapes = {name: TENSOR_SHAPES[name] for name in DECODER_INPUTS}
    out = []
    for name in DECODER_INPUTS:
        shape = tuple(num_points if d == -1 else d for d in shapes[name])
        out.append(torch.randn((batch, *shape), generator=g))
    out[3] = torch.rand((batch, num_points, 2), generator=g) * IMAGE_SIZE
    out[4] = torch.ones((batch, num_points))
    out[6] = torch.zeros((batch, 1))
    return tuple(out)


def write_video_weights(checkpoint: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy the checkpoint to ``path`` (``sam2_video/1/model.pt``: ``sam2_video`` runs Meta's
    video predictor in PyTorch on these weights) atomically, and record its SHA-256 in a
    ``SHA256SUMS`` beside it, which the model checks when it loads."""
    from sam2_triton.checksums import file_sha256, record_sha256

    path = Path(path)
    with atomic_path(path) as tmp:
        shutil.copyfile(checkpoint, tmp)
    record_sha256(path, file_sha256(path))
    return path


def copy_graph(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Copy an exported graph to another model's version folder, atomically.

    ``sam2_decoder_prompts`` serves the very graph of ``sam2_decoder`` under another config;
    a copy (not a link) keeps each model folder whole wherever the repository is mounted.
    """
    destination = Path(destination)
    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)
    return destination


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def _export(
    module,
    args,
    path: Path,
    inputs,
    outputs,
    dynamic_axes,
    precision: str = "fp32",
    optimize: bool = True,
    fused_path: Path | None = None,
) -> None:
    """Trace ``module`` once and write the graph to ``path``; with ``fused_path``, also the
    same graph with ONNX Runtime's fused attention there."""
    import onnx
    import torch

    from sam2_triton import optimize as passes

    module.precompute = optimize

    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The legacy exporter warns about every traced shape comparison in Meta's code.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        traced = onnx.load(str(tmp))
        if optimize:
            traced = passes.fold_static_shapes(traced)
        if fused_path is not None:
            fused = passes.fuse_attention(onnx.ModelProto.FromString(traced.SerializeToString()))
            with atomic_path(fused_path) as fused_tmp:
                _finish(fused, fused_tmp, precision)
        _finish(traced, tmp, precision)


def _finish(model, path: Path, precision: str) -> None:
    """The last passes (FP16, the contract's shapes), then save and check."""
    import onnx

    from sam2_triton import optimize as passes

    if precision == "fp16":
        model = passes.to_fp16(model)
    model = passes.pads_as_concats(model)
    passes.constants_on_the_right(model)
    _declare_shapes(model)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def _declare_shapes(model) -> None:
    """Write the contract's shapes onto the graph's inputs and outputs.

    The legacy exporter leaves most output dims unknown. Known dims let Triton's config
    check, ONNX Runtime's planner and TensorRT's builder rely on them; the batch and point
    dims stay symbolic.
    """
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for dim, want in zip(dims, _contract_dims(value.name)):
            dim.Clear()
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = want


def _contract_dims(name: str) -> tuple:
    """A tensor's dims as the graphs declare them: symbolic batch and point counts."""
    return ("batch", *("num_points" if d == -1 else d for d in TENSOR_SHAPES[name]))


def export_prompt_check(path: str | os.PathLike) -> Path:
    """Write the ``sam2_prompt_check`` graph (the ``sam2`` ensemble's first step) atomically.

    The graph only passes the image on (``Identity``); the prompts are inputs so that the
    backend serving it checks them, as it checks the decoder's (counts from the declared
    shapes, finite values, labels), and refuses a bad request before the ensemble's encoder
    step, which reads this graph's output, ever starts. It holds no weights, so it needs no
    checkpoint.
    """
    import onnx
    from onnx import TensorProto, helper

    def value(name: str):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(_contract_dims(name)))

    (image,), (checked,) = ENCODER_INPUTS, PROMPT_CHECK_OUTPUTS
    graph = helper.make_graph(
        [helper.make_node("Identity", [image], [checked])],
        "sam2_prompt_check",
        [value(n) for n in PROMPT_CHECK_INPUTS],
        [value(n) for n in PROMPT_CHECK_OUTPUTS],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sam2_triton"
    )
    model.ir_version = 8  # what the ONNX Runtime of every supported Triton image reads
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def export_encoder(
    model: "SAM2Base",
    path: str | os.PathLike,
    precision: str = "fp32",
    *,
    optimize: bool = True,
    fuse_attention: bool = False,
) -> Path:
    """Write the ``sam2_encoder`` ONNX graph (dynamic batch) to ``path`` atomically.

    ``precision`` is ``"fp32"`` or ``"fp16"`` (FP16 weights and compute, FP32 I/O).
    ``optimize=False`` writes the graph as traced, without the constant position embedding
    and the shape folding (the graph before those passes, for comparisons).
    ``fuse_attention=True`` also writes :data:`CUDA_MODEL_FILENAME` beside ``path``: the same
    graph with attention rewritten to ONNX Runtime's ``MultiHeadAttention``
    (:func:`sam2_triton.optimize.fuse_attention`), faster on ONNX Runtime's CUDA EP. ``path``
    itself keeps standard ONNX operators only, which TensorRT's parser takes whole.
    """
    import torch

    _check_precision(precision)
    path = Path(path)
    example = torch.randn(1, *TENSOR_SHAPES["image"])
    axes = {name: {0: "batch"} for name in ENCODER_INPUTS + ENCODER_OUTPUTS}
    module = image_encoder(model)
    _export(
        module,
        (example,),
        path,
        ENCODER_INPUTS,
        ENCODER_OUTPUTS,
        axes,
        precision,
        optimize,
        path.with_name(CUDA_MODEL_FILENAME) if fuse_attention else None,
    )
    return path


def export_decoder(
    model: "SAM2Base",
    path: str | os.PathLike,
    precision: str = "fp32",
    *,
    optimize: bool = True,
) -> Path:
    """Write the ``sam2_decoder`` ONNX graph (dynamic batch and point count) atomically.

    ``precision`` is ``"fp32"`` or ``"fp16"`` (FP16 weights and compute, FP32 I/O).
    ``optimize=False`` writes the graph as traced (see :func:`export_encoder`). The decoder
    is not attention-fused: its attention maps are small (a few tokens × 4096), and ONNX
    Runtime's fused decoder graph lost FP16 accuracy (mask IoU 0.86 against FP32).
    """
    _check_precision(precision)
    path = Path(path)
    axes = {name: {0: "batch"} for name in DECODER_INPUTS + DECODER_OUTPUTS}
    axes["point_coords"] = {0: "batch", 1: "num_points"}
    axes["point_labels"] = {0: "batch", 1: "num_points"}
    example = example_decoder_inputs(batch=1, num_points=2)
    module = prompt_decoder(model)
    _export(
        module,
        example,
        path,
        DECODER_INPUTS,
        DECODER_OUTPUTS,
        axes,
        precision,
        optimize,
    )
    return path
