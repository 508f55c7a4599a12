"""Prompts of different point counts in one decoder run: absent points, kept out of attention.

The mask decoder's two-way transformer works on tokens: its output tokens (object score, IoU,
masks), one per prompt point (box corners included) and the padding point that
``SAM2ImagePredictor`` always appends (label -1, "not a point": a real token that takes part).
A batch of prompts needs one point count, so prompts of fewer points are filled up with
*absent* points (label :data:`ABSENT_LABEL`). An absent point's token is never a key of any
attention (the tokens' self-attention and the image-to-token cross-attention are masked), so
every other token and every image position computes exactly what it computes without it; its
own query rows are computed and dropped (no output reads them). The transformer is
permutation-equivariant over its tokens, so where the absent tokens sit does not matter.

:func:`session_prompt_decoder` with ``absent_points`` is
:func:`sam2_triton.export.prompt_decoder` with that masking:
Meta's ``MaskDecoder.predict_masks`` and ``TwoWayTransformer`` steps, written out here with a
key mask (Meta's ``Attention`` has none), on Meta's very modules and weights. It serves the
PyTorch runtime of ``sam2_session`` (the ONNX graphs keep Meta's unmasked decoder; their
runtime decodes each point count in its own run). :func:`pad_points` fills a batch's prompts
up to :func:`point_bucket` points, so that few point counts ever run (each padded shape
replays its own CUDA graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from sam2.modeling.sam2_base import SAM2Base

#: ``point_labels`` value of an absent point: a filler that no token attends to.
ABSENT_LABEL = -2.0


def point_bucket(count: int) -> int:
    """The point count a prompt of ``count`` points runs padded to: the next power of two."""
    return 1 << max(0, int(count) - 1).bit_length()


def pad_points(
    coords: Sequence[np.ndarray], labels: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One batch of prompts: ``coords`` ``[1, N_i, 2]`` and ``labels`` ``[1, N_i]`` of each
    prompt (the decoder's frame) → ``[k, P, 2]`` and ``[k, P]`` float32, each prompt filled
    up with absent points (coordinates 0, :data:`ABSENT_LABEL`) to ``P`` points,
    :func:`point_bucket` of the largest ``N_i``."""
    counts = [c.shape[1] for c in coords]
    size = point_bucket(max(counts))
    out_coords = np.zeros((len(coords), size, 2), np.float32)
    out_labels = np.full((len(coords), size), ABSENT_LABEL, np.float32)
    for row, (c, lab, n) in enumerate(zip(coords, labels, counts)):
        out_coords[row, :n] = c[0]
        out_labels[row, :n] = lab[0]
    return out_coords, out_labels


def session_prompt_decoder(model: "SAM2Base", absent_points: bool = False) -> "torch.nn.Module":
    """The ``sam2_decoder`` graph as a torch module (same inputs and outputs as
    :func:`sam2_triton.export.prompt_decoder`) on inputs of any floating dtype; with
    ``absent_points``, prompts may be filled up with absent points (see the module), which
    costs a key mask in its attention (measured on an H200 with base_plus: 1.94 against 1.69
    ms for 16 prompts of two points), so prompts of one point count run without it."""
    from sam2_triton import export

    _, prompt_decoder = export.torch_module_classes()

    class SessionPromptDecoder(prompt_decoder):
        """:func:`~sam2_triton.export.prompt_decoder` on inputs of any floating dtype
        (converted to float32 first), whose absent points attend nowhere if
        ``absent_points``."""

        def forward(self, *inputs):
            # The sessions keep their features in float16 (FP16 runs): converting them here,
            # inside the compiled module, fuses the (exact) conversion into the kernels that
            # read them, instead of a float32 copy of every feature map in the graph's buffers.
            return super().forward(*(x.float() for x in inputs))

        def _predict_masks(self, point_labels, **kwargs):
            import torch

            if not absent_points:
                return super()._predict_masks(point_labels, **kwargs)
            present = point_labels != ABSENT_LABEL  # [B, P]
            # The predictor's padding point (appended by the prompt encoder) is a token too.
            token_mask = torch.cat([present, torch.ones_like(present[:, :1])], dim=1)
            return predict_masks(self.mask_decoder, token_mask=token_mask, **kwargs)

    return SessionPromptDecoder(model).eval()


def _attention(attention, q, k, v, key_mask):
    """Meta's ``Attention.forward`` with a key mask (``[B, N_k]`` bool, True: attended)."""
    import torch.nn.functional as F

    heads = attention.num_heads
    q = attention._separate_heads(attention.q_proj(q), heads)
    k = attention._separate_heads(attention.k_proj(k), heads)
    v = attention._separate_heads(attention.v_proj(v), heads)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
    return attention.out_proj(attention._recombine_heads(out))


def _two_way_block(block, queries, keys, query_pe, key_pe, token_mask):
    """Meta's ``TwoWayAttentionBlock.forward``; tokens attend only to present tokens, the
    image only to present tokens."""
    if block.skip_first_layer_pe:
        queries = _attention(block.self_attn, queries, queries, queries, token_mask)
    else:
        q = queries + query_pe
        queries = queries + _attention(block.self_attn, q, q, queries, token_mask)
    queries = block.norm1(queries)
    q, k = queries + query_pe, keys + key_pe
    queries = block.norm2(queries + block.cross_attn_token_to_image(q=q, k=k, v=keys))
    queries = block.norm3(queries + block.mlp(queries))
    q, k = queries + query_pe, keys + key_pe
    keys = block.norm4(
        keys + _attention(block.cross_attn_image_to_token, k, q, queries, token_mask)
    )
    return queries, keys


def two_way_transformer(transformer, image_embedding, image_pe, point_embedding, token_mask):
    """Meta's ``TwoWayTransformer.forward`` with ``token_mask`` (``[B, N_tokens]`` bool):
    ``image_embedding`` and ``image_pe`` ``[B, C, h, w]``, ``point_embedding`` ``[B, N, C]``
    → the tokens ``[B, N, C]`` and the image ``[B, h*w, C]``."""
    image_embedding = image_embedding.flatten(2).permute(0, 2, 1)
    image_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries, keys = point_embedding, image_embedding
    for layer in transformer.layers:
        queries, keys = _two_way_block(layer, queries, keys, point_embedding, image_pe, token_mask)
    q, k = queries + point_embedding, keys + image_pe
    queries = queries + transformer.final_attn_token_to_image(q=q, k=k, v=keys)
    return transformer.norm_final_attn(queries), keys


def predict_masks(
    decoder,
    image_embeddings,
    image_pe,
    sparse_prompt_embeddings,
    dense_prompt_embeddings,
    repeat_image: bool,
    high_res_features,
    token_mask,
):
    """Meta's ``MaskDecoder.predict_masks`` (of ``decoder``) with the prompt tokens' mask
    ``token_mask`` (``[B, N_prompt]`` bool, True where present)."""
    import torch

    s = 1 if decoder.pred_obj_scores else 0
    weights = [decoder.iou_token.weight, decoder.mask_tokens.weight]
    if s:
        weights.insert(0, decoder.obj_score_token.weight)
    output_tokens = torch.cat(weights, dim=0)
    batch = sparse_prompt_embeddings.size(0)
    output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
    tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
    mask = torch.cat([token_mask.new_ones((batch, output_tokens.shape[1])), token_mask], dim=1)
    if repeat_image:
        src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0)
    else:
        src = image_embeddings
    src = src + dense_prompt_embeddings
    pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
    b, c, h, w = src.shape
    hs, src = two_way_transformer(decoder.transformer, src, pos_src, tokens, mask)
    iou_token_out = hs[:, s, :]
    mask_tokens_out = hs[:, s + 1 : (s + 1 + decoder.num_mask_tokens), :]
    src = src.transpose(1, 2).view(b, c, h, w)
    if not decoder.use_high_res_features:
        upscaled = decoder.output_upscaling(src)
    else:
        dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
        feat_s0, feat_s1 = high_res_features
        upscaled = act1(ln1(dc1(src) + feat_s1))
        upscaled = act2(dc2(upscaled) + feat_s0)
    hyper_in = torch.stack(
        [
            mlp(mask_tokens_out[:, i, :])
            for i, mlp in enumerate(decoder.output_hypernetworks_mlps[: decoder.num_mask_tokens])
        ],
        dim=1,
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou_pred = decoder.iou_prediction_head(iou_token_out)
    if decoder.pred_obj_scores:
        object_score_logits = decoder.pred_obj_score_head(hs[:, 0, :])
    else:
        object_score_logits = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)
    return masks, iou_pred, mask_tokens_out, object_score_logits
