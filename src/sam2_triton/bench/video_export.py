"""Can SAM2.1's video networks be served from exported ONNX? The measurement behind the choice.

``sam2_video`` runs Meta's video predictor in PyTorch. The alternative would be ONNX Runtime
on exported graphs of the networks the tracker adds to the image model: the **memory
attention** (4 layers of self- and cross-attention with 2-D rotary position encoding over the
current frame and a variable number of memories and object pointers) and the **memory
encoder** (the mask downsampler and fuser). :func:`export_study` measures, on the CPU:

* whether each exporter (TorchScript, opset 17, as the image graphs; and ``dynamo=True``)
  exports the memory attention as Meta wrote it;
* the same with its rotary encoding rewritten in real arithmetic (Meta's uses complex
  tensors): parity with Meta's module at the traced memory size and at another one;
* the memory encoder's export and parity;
* the CPU time of each in PyTorch and in ONNX Runtime (median of ``repeats``, interleaved).

Both networks are the same in every SAM2.1 size (only their weights differ), so tiny with
random weights stands for all; the figures are per object and frame at 1024 px.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

#: Memory-attention inputs as Meta's tracker builds them at 1024 px: 64x64 current tokens,
#: up to 7 memory frames of 64x64 tokens (64 channels) and up to 16 object pointers, each
#: split into 4 tokens of 64 channels.
SIDE = 64
TRACED = (7, 16)  # (memory frames, object pointers) of the exported graph
OTHER = (3, 4)  # another memory size, as on the third frame of a video


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # no terminal colours
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def real_rotary(xq, xk, freqs_cis, repeat_freqs_k: bool = False):
    """Meta's ``apply_rotary_enc`` in real arithmetic; ``freqs_cis`` as ``[..., 2]``
    (cos, sin) instead of complex numbers."""
    import torch

    cos, sin = freqs_cis[..., 0], freqs_cis[..., 1]

    def rotate(x, c, s):
        pairs = x.float().reshape(*x.shape[:-1], -1, 2)
        real, imag = pairs[..., 0], pairs[..., 1]
        return torch.stack((real * c - imag * s, real * s + imag * c), -1).flatten(-2).type_as(x)

    q = rotate(xq, cos, sin)
    if xk.shape[-2] == 0:
        return q, xk
    if repeat_freqs_k:
        r = xk.shape[-2] // xq.shape[-2]
        cos, sin = cos.repeat(r, 1), sin.repeat(r, 1)
    return q, rotate(xk, cos, sin)


@contextlib.contextmanager
def rotary_in_real_arithmetic(module) -> Iterator[None]:
    """Inside: ``module``'s RoPE attention layers rotate with :func:`real_rotary`."""
    import torch
    from sam2.modeling.sam import transformer

    saved = []
    for layer in module.modules():
        if isinstance(layer, transformer.RoPEAttention):
            saved.append((layer, layer.freqs_cis))
            layer.freqs_cis = torch.view_as_real(layer.freqs_cis).contiguous()
    original = transformer.apply_rotary_enc
    transformer.apply_rotary_enc = real_rotary
    try:
        yield
    finally:
        transformer.apply_rotary_enc = original
        for layer, freqs in saved:
            layer.freqs_cis = freqs


def _memory_inputs(frames: int, pointers: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    tokens = frames * SIDE * SIDE + 4 * pointers
    return (
        torch.randn(SIDE * SIDE, 1, 256, generator=g),
        torch.randn(SIDE * SIDE, 1, 256, generator=g),
        torch.randn(tokens, 1, 64, generator=g),
        torch.randn(tokens, 1, 64, generator=g),
    )


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 1)


def export_study(repeats: int = 5, dynamo: bool = True) -> dict:
    """The measurements above, as a JSON-ready dict."""
    import onnxruntime as ort
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from sam2_triton.testing import save_random_checkpoint

    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(False)
    out: dict = {"threads": torch.get_num_threads(), "traced": TRACED, "other": OTHER}
    with tempfile.TemporaryDirectory(prefix="sam2-video-export-") as tmp:
        folder = Path(tmp)
        checkpoint = save_random_checkpoint("tiny", folder / "tiny.pt")
        model = build_sam2_video_predictor(
            "configs/sam2.1/sam2.1_hiera_t.yaml", str(checkpoint), device="cpu"
        )
        pointers_tokens = 4 * TRACED[1]

        class Attention(torch.nn.Module):
            def __init__(self, inner, pointer_tokens: int) -> None:
                super().__init__()
                self.inner, self.pointer_tokens = inner, pointer_tokens

            def forward(self, curr, curr_pos, memory, memory_pos):
                return self.inner(
                    curr=[curr],
                    curr_pos=[curr_pos],
                    memory=memory,
                    memory_pos=memory_pos,
                    num_obj_ptr_tokens=self.pointer_tokens,
                )

        attention = Attention(model.memory_attention, pointers_tokens)
        traced = _memory_inputs(*TRACED)
        names = ["curr", "curr_pos", "memory", "memory_pos"]
        axes = {"memory": {0: "tokens"}, "memory_pos": {0: "tokens"}}
        graph = folder / "memory_attention.onnx"
        exporters = {"torchscript": {"dynamo": False, "opset_version": 17}}
        if dynamo:
            exporters["dynamo"] = {"dynamo": True}
        out["memory_attention_as_meta_wrote_it"] = {}
        for name, kw in exporters.items():
            try:
                torch.onnx.export(
                    attention,
                    traced,
                    str(folder / f"{name}.onnx"),
                    input_names=names,
                    output_names=["out"],
                    dynamic_axes=axes if name == "torchscript" else None,
                    **kw,
                )
                out["memory_attention_as_meta_wrote_it"][name] = "exported"
            except Exception as e:  # noqa: BLE001 - the failure is the finding
                out["memory_attention_as_meta_wrote_it"][name] = _first_line(e)
            # A failed export can leave the module in training mode (dropout on).
            model.eval()

        reference = attention(*traced)
        with rotary_in_real_arithmetic(model.memory_attention):
            rewritten = attention(*traced)
            torch.onnx.export(
                attention,
                traced,
                str(graph),
                input_names=names,
                output_names=["out"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        feed = dict(zip(names, (t.numpy() for t in traced)))
        onnx_out = session.run(None, feed)[0]
        other = _memory_inputs(*OTHER, seed=1)
        # The other memory size keeps the traced pointer count (the graph fixed it).
        other = (*other[:2], *(_memory_inputs(OTHER[0], TRACED[1], seed=1)[2:]))
        other_reference = attention(*other)
        other_onnx = session.run(None, dict(zip(names, (t.numpy() for t in other))))[0]
        out["memory_attention_real_rotary"] = {
            "torch_rewrite_vs_meta_max_abs": float((rewritten - reference).abs().max()),
            "onnx_vs_meta_max_abs_traced_size": float(np.abs(onnx_out - reference.numpy()).max()),
            "onnx_vs_meta_max_abs_other_size": float(
                np.abs(other_onnx - other_reference.numpy()).max()
            ),
            "meta_output_max_abs": float(reference.abs().max()),
        }
        torch_ms = _median_ms(lambda: attention(*traced), repeats)
        ort_ms = _median_ms(lambda: session.run(None, feed), repeats)
        out["memory_attention_cpu_ms"] = {"pytorch": torch_ms, "onnxruntime": ort_ms}

        class Encoder(torch.nn.Module):
            def __init__(self, inner) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, pix, mask):
                result = self.inner(pix, mask, skip_mask_sigmoid=True)
                return result["vision_features"], result["vision_pos_enc"][0]

        encoder = Encoder(model.memory_encoder)
        g = torch.Generator().manual_seed(2)
        pix, mask = torch.randn(1, 256, SIDE, SIDE, generator=g), torch.rand(1, 1, 1024, 1024)
        encoder_graph = folder / "memory_encoder.onnx"
        torch.onnx.export(
            encoder,
            (pix, mask),
            str(encoder_graph),
            input_names=["pix", "mask"],
            output_names=["features", "pos"],
            opset_version=17,
            dynamo=False,
        )
        encoder_session = ort.InferenceSession(
            str(encoder_graph), providers=["CPUExecutionProvider"]
        )
        encoder_feed = {"pix": pix.numpy(), "mask": mask.numpy()}
        expected = encoder(pix, mask)[0]
        got = encoder_session.run(None, encoder_feed)[0]
        out["memory_encoder"] = {
            "onnx_vs_meta_max_abs": float(np.abs(got - expected.numpy()).max()),
            "cpu_ms": {
                "pytorch": _median_ms(lambda: encoder(pix, mask), repeats),
                "onnxruntime": _median_ms(lambda: encoder_session.run(None, encoder_feed), repeats),
            },
        }
    return out


def markdown(study: dict) -> str:
    """The study as a Markdown section."""
    meta = study["memory_attention_as_meta_wrote_it"]
    real = study["memory_attention_real_rotary"]
    ms, enc = study["memory_attention_cpu_ms"], study["memory_encoder"]
    lines = [
        "## Exporting the video networks to ONNX (CPU, tiny, per object and frame at 1024 px)",
        "",
        "- memory attention as Meta wrote it: " + "; ".join(f"{k}: {v}" for k, v in meta.items()),
        f"- with its rotary encoding in real arithmetic (ours): exported; max |ONNX − Meta| "
        f"{real['onnx_vs_meta_max_abs_traced_size']:.2g} at the traced memory size "
        f"({study['traced'][0]} frames, {study['traced'][1]} pointers), "
        f"{real['onnx_vs_meta_max_abs_other_size']:.2g} at {study['other'][0]} frames "
        f"(outputs up to {real['meta_output_max_abs']:.2g})",
        f"- memory attention CPU: PyTorch {ms['pytorch']} ms, ONNX Runtime {ms['onnxruntime']} "
        f"ms ({study['threads']} threads)",
        f"- memory encoder: exported; max |ONNX − Meta| {enc['onnx_vs_meta_max_abs']:.2g}; CPU "
        f"PyTorch {enc['cpu_ms']['pytorch']} ms, ONNX Runtime {enc['cpu_ms']['onnxruntime']} ms",
    ]
    return "\n".join(lines) + "\n"
