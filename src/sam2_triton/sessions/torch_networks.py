"""The session networks run by PyTorch: the very modules the ONNX graphs are traced from.

:class:`TorchModuleSession` runs one of them with the interface of
:class:`~sam2_triton.sessions.runtime.TorchOrtSession` (``run(feed, output_shapes)`` → float32
tensors on the device), so :class:`~sam2_triton.sessions.image.ImageSessionEngine` runs either.
:class:`TorchNetworks` says which weights and how (precision, ``torch.compile``).

Why a second runtime beside ONNX Runtime: everything of a click then stays on torch's one CUDA
stream (ONNX Runtime runs on its own stream, so every run waits for torch's work first: a host
synchronisation per network run), the whole network can replay as one CUDA graph that torch
captures (compiled by ``torch.compile`` first, or eager), and both networks share one copy of
the weights in the instance's process. It needs the checkpoint (``sam2_video/1/model.pt``,
which the export writes for ``sam2_video``) and Meta's ``sam2`` package, as ``sam2_video``
does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from sam2_triton.model_config import SESSION_COMPILE_MODES, SESSION_WEIGHTS
from sam2_triton.models import UserError
from sam2_triton.sessions.padded_points import session_prompt_decoder
from sam2_triton.sessions.runtime import AfterLargeRuns, cuda_index, padded_rows

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Precisions of the PyTorch networks: ``fp16`` is CUDA autocast to float16 (what the FP16
#: ONNX graphs compute in); on a CPU both run in float32.
PRECISIONS = ("fp16", "fp32")


def cast_autocast_weights(module: "torch.nn.Module", dtype: "torch.dtype") -> int:
    """Store the weights and biases of ``module``'s linear and convolution layers in
    ``dtype``, the dtype autocast casts them to at every call; returns how many tensors
    changed.

    Autocast runs these layers in ``dtype`` on weights it casts anew at every run (inside a
    CUDA graph too): measured on an H200 with base_plus, those casts were 7.5% of the
    compiled encoder's device time and 21% of the decoder's. A weight already in ``dtype``
    is not cast again, and the layer's answer is the same bit for bit. Everything autocast
    keeps in float32 (layer norms, embeddings, parameters added directly) stays float32.
    """
    from torch import nn

    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    layers += (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    changed = 0
    for layer in module.modules():
        if isinstance(layer, layers):
            for value in list(layer.parameters(recurse=False)):
                if value.dtype != dtype:
                    value.data = value.data.to(dtype)
                    changed += 1
    return changed


class TorchModuleSession:
    """``module`` run on ``device`` like an ONNX Runtime session of its exported graph.

    ``input_names`` are the module's positional inputs, ``output_names`` its outputs, in
    order. ``run(feed, output_shapes)`` returns the outputs named in ``output_shapes`` as new
    float32 tensors (the shapes are those of the batch given; they are only used for names).

    ``buckets``: a batch of ``k`` rows runs padded up to the smallest bucket ≥ ``k`` (the last
    row repeated; rows do not interact, so the real rows' answers are unchanged, and the
    padding is cut off), so that few shapes ever run; a larger batch runs as it is.
    ``cuda_graphs`` (CUDA only): each padded shape replays a CUDA graph captured at its first
    run (two plain runs first, so that compilation and library plans happen outside the
    capture; a graph's first :data:`CHECKED_REPLAYS` replays are compared with plain runs, and
    a difference or a refused capture turns graphs off for good, :attr:`error` saying why);
    at most ``max_graphs`` shapes get one (later shapes run without), all in one memory pool
    (their runs never overlap, and their outputs are copied out after each replay; ``pool``
    shares it with another network's graphs, see :func:`graph_pool`), and only batches of
    ``graph_batches`` rows (None: any). Their input buffers are shared: one per input, shape
    of a row and dtype, with the rows of the largest bucket, each graph taking its leading
    rows; ``buffers`` (a dict) shares them with another network of the same inputs whose
    runs never overlap with these (the two session decoders).
    ``compile_mode``: ``torch.compile``'s mode, or ``none``; a compilation that fails runs
    the module eager from then on (:attr:`compile_error`).

    ``float32_outputs``: False returns each output in the dtype the network made it in
    (under FP16 autocast often float16: the encoder's features, kept so by the sessions and
    the decoder's graph buffers at half the memory, and converted back exactly by the
    decoder itself, :func:`~sam2_triton.sessions.padded_points.session_prompt_decoder`).

    ``name`` (``encoder``, ``decoder``) names it in the log and in :attr:`error`.

    ``release_above``: after runs of more rows than that, the next run of at most that many
    gives the memory torch's caching allocator holds unused back to the device
    (``torch.cuda.empty_cache``), as ONNX Runtime's arena shrinkage does for
    :class:`~sam2_triton.sessions.runtime.TorchOrtSession` (a burst of eight images would
    otherwise keep its working memory in every instance for good). A graph's pool is kept.
    """

    #: Replays of each graph compared with a plain run: the first is often the warm-up's, on
    #: the very inputs it was captured with; the second is a request's.
    CHECKED_REPLAYS = 2

    def __init__(
        self,
        module: "torch.nn.Module",
        input_names: Sequence[str],
        output_names: Sequence[str],
        device: "torch.device",
        *,
        precision: str = "fp32",
        compile_mode: str = "none",
        buckets: Sequence[int] = (),
        cuda_graphs: bool = False,
        graph_batches: Collection[int] | None = None,
        max_graphs: int = 32,
        release_above: int | None = None,
        pool: object | None = None,
        buffers: dict | None = None,
        float32_outputs: bool = True,
        name: str = "network",
    ) -> None:
        import torch

        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if compile_mode not in SESSION_COMPILE_MODES:
            raise UserError(
                f"torch_compile must be one of {SESSION_COMPILE_MODES}, not {compile_mode!r}"
            )
        self.module = module
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.device = device
        cuda = device.type == "cuda"
        self.precision = precision if cuda else "fp32"
        self.compile_mode = compile_mode
        self._compiled = None
        if compile_mode != "none":
            options = {} if compile_mode == "default" else {"mode": compile_mode}
            self._compiled = torch.compile(module, **options)
        self.compile_error: str | None = None
        self.buckets = sorted({int(b) for b in buckets if int(b) >= 1})
        self.max_graphs = max_graphs if cuda and cuda_graphs else 0
        self.graph_batches = None if graph_batches is None else frozenset(graph_batches)
        self._after_large_runs = AfterLargeRuns(release_above if cuda else None)
        self.error: str | None = None
        self._graphs: dict[tuple, _Graph] = {}
        self._buffers: dict[tuple, "torch.Tensor"] = {} if buffers is None else buffers
        self._pool = pool
        self.float32_outputs = float32_outputs
        self.name = name

    @property
    def providers(self) -> list[str]:
        how = "eager" if self._compiled is None else f"torch.compile {self.compile_mode}"
        graphs = ", CUDA graphs" if self.max_graphs and self.error is None else ""
        return [f"PyTorch {self.device.type} {self.precision} {how}{graphs}"]

    def _autocast(self):
        import torch

        if self.precision == "fp16":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _forward(self, inputs: Sequence["torch.Tensor"]) -> tuple["torch.Tensor", ...]:
        import torch

        with torch.no_grad(), self._autocast():
            if self._compiled is not None:
                try:
                    return tuple(self._compiled(*inputs))
                except Exception as e:  # noqa: BLE001 - the compiler's failure, not the input's
                    capturing = (
                        self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
                    )
                    if isinstance(e, torch.OutOfMemoryError) or capturing:
                        raise  # the run's failure, not the compiler's
                    self._compiled = None
                    self.compile_error = f"{type(e).__name__}: {str(e).strip()[:500]}"
                    log.warning("torch.compile failed, running eager: %s", e, exc_info=True)
            return tuple(self.module(*inputs))

    def run(
        self,
        feed: Mapping[str, "torch.Tensor"],
        output_shapes: Mapping[str, Sequence[int]],
    ) -> dict[str, "torch.Tensor"]:
        """Run on ``feed`` (every input as ``[k, ...]``, the contract's shapes, on this
        device) and return the outputs named in ``output_shapes`` as new ``[k, ...]``
        tensors, float32 unless ``float32_outputs`` is off (only the names of
        ``output_shapes`` are read). The module gets each floating input in its own dtype
        (the sessions' float16 features stay float16 in the graphs' buffers: half the
        memory; the session decoder converts them itself, exactly), any other as float32."""
        import torch

        values = [feed[n] for n in self.input_names]
        k = values[0].shape[0]
        bucket = next((b for b in self.buckets if b >= k), k)
        if self._after_large_runs.release_now(bucket):
            torch.cuda.empty_cache()
        graphs = self.max_graphs and self.error is None
        if graphs and self.graph_batches is not None and bucket not in self.graph_batches:
            graphs = False
        graphed = self._replay(values, bucket) if graphs else None
        if graphed is None:
            inputs = [padded_rows(_as_input(x, self.device), bucket).contiguous() for x in values]
            outputs = self._forward(inputs)
        else:
            outputs = graphed
        result = {}
        for name in output_shapes:
            value = outputs[self.output_names.index(name)][:k]
            if self.float32_outputs and value.dtype != torch.float32:
                value = value.float()  # a new tensor
            elif graphed is not None or bucket != k:
                # A graph's outputs are overwritten by its next replay; a padded batch's
                # rows would keep the whole batch's storage alive.
                value = value.clone()
            result[name] = value
        return result

    def _replay(
        self, values: list["torch.Tensor"], bucket: int
    ) -> tuple["torch.Tensor", ...] | None:
        """The outputs of the graph of ``values`` padded to ``bucket`` rows, replayed
        (captured on first use); None where there is no graph for it. Each value is copied
        once, straight into the graph's input buffer of its dtype (its last row repeated into
        the padding rows). The outputs are the graph's own buffers."""
        key = tuple((bucket, *x.shape[1:], _input_dtype(x)) for x in values)
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= self.max_graphs:
                return None
            static_inputs = [self._buffer(i, shape[:-1], shape[-1]) for i, shape in enumerate(key)]
            _fill(static_inputs, values)
            try:
                graph = self._graphs[key] = self._capture(static_inputs)
            except Exception as e:  # noqa: BLE001 - capture refused: no graphs from now on
                first_line = str(e).strip().splitlines()[0]
                self._graphs_off(f"a CUDA graph capture of the {self.name} failed: {first_line}")
                return None
        _fill(graph.inputs, values)
        graph.cuda_graph.replay()
        if graph.checked < self.CHECKED_REPLAYS:  # against a plain run on the same inputs
            expected = self._forward(graph.inputs)  # (a replay leaves its inputs as they are)
            worst = max(difference(a, b) for a, b in zip(graph.outputs, expected))
            if not worst <= 1e-3:
                shape = "x".join(map(str, key[0]))
                self._graphs_off(
                    f"the CUDA graph of the {self.name} for {shape} inputs answered differently "
                    f"from a plain run (by {worst:g})"
                )
                return None
            graph.checked += 1
        return graph.outputs

    def _graphs_off(self, why: str) -> None:
        self.error = why
        log.warning("%s; the %s runs without CUDA graphs from now on", why, self.name)
        self._graphs.clear()
        self._buffers = {}  # (a shared dict stays with the other network)

    def _buffer(self, index: int, shape: tuple[int, ...], dtype: "torch.dtype") -> "torch.Tensor":
        """The static buffer of input ``index`` for ``shape`` and ``dtype``: the leading rows
        of one buffer per input, shape of a row and dtype, as many rows as the largest bucket
        that has graphs (or ``shape``'s), shared by every graph (the decoder's features, 8
        MiB a row in float16, are held once for all buckets and point counts; replays never
        overlap and each copies its inputs in first)."""
        import torch

        rows = shape[0]
        key = (index, tuple(shape[1:]), dtype)
        shared = self._buffers.get(key)
        if shared is None or shared.shape[0] < rows:
            graphed = [b for b in self.buckets if not self.graph_batches or b in self.graph_batches]
            largest = max([rows, *graphed])
            shared = torch.empty((largest, *shape[1:]), dtype=dtype, device=self.device)
            self._buffers[key] = shared  # graphs captured on a smaller one keep theirs
        return shared[:rows]

    def _capture(self, static_inputs: list["torch.Tensor"]) -> "_Graph":
        """A graph of the module on ``static_inputs`` (filled: the warm-up runs use them)."""
        import torch

        side = warm_up_stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # compilation, autotuning, library plans: not in the capture
                self._forward(static_inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph, pool=self._pool):
            static_outputs = self._forward(static_inputs)
        if self._pool is None:
            self._pool = cuda_graph.pool()
        return _Graph(cuda_graph, static_inputs, static_outputs)


_WARM_UP_STREAMS: dict = {}


def warm_up_stream(device: "torch.device") -> "torch.cuda.Stream":
    """The one side stream of ``device`` that every graph's warm-up runs on, for the whole
    process. cuBLAS keeps a workspace for each stream it ever ran on (32 MiB on a Hopper GPU,
    allocated through torch's cache and never given back): a new stream per capture held 640
    MiB of them in an instance with 20 decoder graphs (measured on an H200)."""
    import torch

    index = cuda_index(device)
    stream = _WARM_UP_STREAMS.get(index)
    if stream is None:
        stream = _WARM_UP_STREAMS[index] = torch.cuda.Stream(index)
    return stream


def reserve_cublas_workspaces(device: "torch.device") -> None:
    """Make cuBLAS allocate its workspace (32 MiB on a Hopper GPU, one per stream, kept for
    the process's life) now, for the two streams the networks run on: the current one and
    :func:`warm_up_stream`. Allocated lazily, in the middle of a network's first run, a
    workspace lands in a segment of that run's activations, and torch's cache can never give
    that segment back: 126 MiB were held so for 34 MiB of workspace (measured on an H200).
    One product per stream: the workspace is per stream, whatever the dtype (after a float16
    product, a float32 one and a cuBLASLt linear with bias allocated nothing more; measured,
    ``scripts/gpu/context_memory.py``)."""
    import torch

    current, side = torch.cuda.current_stream(device), warm_up_stream(device)
    side.wait_stream(current)
    for stream in (current, side):
        with torch.cuda.stream(stream):
            ones = torch.ones((8, 8), device=device, dtype=torch.float16)
            ones @ ones
    current.wait_stream(side)


def difference(a: "torch.Tensor", b: "torch.Tensor") -> float:
    """The largest absolute difference of ``a`` and ``b``, where equal values (infinities
    too) and NaNs in both places count as no difference; NaN where only one of them has a
    NaN. (Random or extreme weights can make a network answer NaN or infinity itself: the
    same answer from a graph and a plain run is no reason to turn graphs off.)"""
    import torch

    a, b = a.float(), b.float()
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    return float(torch.where(same, 0.0, (a - b).abs()).max()) if a.numel() else 0.0


def _input_dtype(value: "torch.Tensor") -> "torch.dtype":
    """The dtype a network gets ``value`` in: its own if floating, else float32."""
    import torch

    return value.dtype if value.is_floating_point() else torch.float32


def _as_input(value: "torch.Tensor", device: "torch.device") -> "torch.Tensor":
    """``value`` on ``device`` in :func:`_input_dtype`."""
    return value.to(device, _input_dtype(value))


def _fill(buffers: Sequence["torch.Tensor"], values: Sequence["torch.Tensor"]) -> None:
    """Copy each value (``[k, ...]``) into the leading rows of its buffer (``[bucket, ...]``)
    and its last row into the rest (the padding: rows do not interact)."""
    for buffer, value in zip(buffers, values):
        k = value.shape[0]
        buffer[:k].copy_(value)
        if buffer.shape[0] > k:
            buffer[k:].copy_(value[-1:].expand(buffer.shape[0] - k, *value.shape[1:]))


def graph_pool() -> object:
    """A CUDA graph memory pool for several networks' graphs (``pool`` of
    :class:`TorchModuleSession`): an image's encoder graph and the decoder's never replay at
    once (one CUDA stream, one execution at a time) and their outputs are copied out after
    each replay, so their working memory can be the same."""
    import torch

    return torch.cuda.graph_pool_handle()


@dataclass
class _Graph:
    """One captured shape: the graph, its input buffers, its output buffers; ``checked``: how
    many of its replays agreed with a plain run."""

    cuda_graph: "torch.cuda.CUDAGraph"
    inputs: list["torch.Tensor"]
    outputs: tuple["torch.Tensor", ...]
    checked: int = 0


def shape_only_position_encoding(channels: int) -> "torch.nn.Module":
    """A stand-in for the FPN neck's ``PositionEmbeddingSine`` where nothing reads the
    encodings: ``x`` [B, C, H, W] → zeros [B, ``channels``, H, W], a broadcast view of one
    element. The image predictor drops the neck's encodings (only the video tracker's memory
    attention reads them) but takes the feature maps' sizes from their shapes. Meta's module
    keeps the encodings of a 1024x1024 input's four levels cached on the GPU from the moment
    the model is built: 85 MiB in float32."""
    from torch import nn

    class ShapeOnlyPositionEncoding(nn.Module):
        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            batch, _, height, width = x.shape
            return x.new_zeros(()).expand(batch, channels, height, width)

    return ShapeOnlyPositionEncoding()


class SessionNetworks(NamedTuple):
    """What :meth:`TorchNetworks.build` makes: the encoder, the decoder, and the decoder for
    batches mixing point counts (prompts filled up with absent points; the same weights)."""

    encoder: TorchModuleSession
    decoder: TorchModuleSession
    mixed_decoder: TorchModuleSession


@dataclass(frozen=True)
class TorchNetworks:
    """The session networks as PyTorch modules: SAM2.1 of ``model_size`` with the weights of
    ``checkpoint`` (Meta's format), in ``precision`` (see :data:`PRECISIONS`), through
    ``torch.compile`` in ``compile_mode`` (see :data:`SESSION_COMPILE_MODES`)."""

    model_size: str
    checkpoint: Path
    precision: str = "fp16"
    compile_mode: str = "none"

    @classmethod
    def from_parameters(
        cls, parameter: Callable[[str, str], str], repository: Path
    ) -> "TorchNetworks | None":
        """The networks a ``sam2_session`` config asks for (``parameter(key, default)``
        reads its parameters; ``weights`` is relative to ``repository``), or None where its
        runtime is ONNX Runtime."""
        if parameter("runtime", "onnxruntime") != "pytorch":
            return None
        return cls(
            parameter("sam2_model_size", "base_plus"),
            Path(repository) / parameter("weights", SESSION_WEIGHTS),
            parameter("precision", "fp16"),
            parameter("torch_compile", "none"),
        )

    def build(
        self,
        device: "torch.device",
        *,
        cuda_graphs: bool = True,
        encode_buckets: Sequence[int] = (),
        decode_buckets: Sequence[int] = (),
        release_encoder_above: int | None = 1,
    ) -> SessionNetworks:
        """The encoder and the decoders (:func:`~sam2_triton.export.image_encoder` and
        :func:`~sam2_triton.sessions.padded_points.session_prompt_decoder`, without and with
        absent points, of one model on ``device``), batches padded to ``encode_buckets`` /
        ``decode_buckets``. With ``cuda_graphs`` on a CUDA device: the encoder replays a
        graph for single images (a batch of images is launch overhead shared; its graph
        would keep the batch's working memory for good), the decoders for every bucket."""
        from sam2_triton import export
        from sam2_triton.models import get_model_size

        if not Path(self.checkpoint).is_file():
            raise UserError(
                f"{self.checkpoint} is missing (scripts/export_onnx.py copies the checkpoint "
                "there for sam2_video)"
            )
        model = export.load_sam2(get_model_size(self.model_size), self.checkpoint)
        # The video tracker's memory modules never run for an image: not moved to the device,
        # and their own position-encoding cache (built on the GPU with the model) freed.
        model.memory_attention = model.memory_encoder = None
        # Nor does the FPN neck's position encoding, which feeds only the memory attention.
        neck = model.image_encoder.neck
        neck.position_encoding = shape_only_position_encoding(neck.d_model)
        cuda = device.type == "cuda"
        if cuda and self.precision == "fp16":
            import torch

            # On the host, before the move: the float32 copies never reach the GPU (whose
            # cache would keep the holes they leave between the float16 ones).
            cast_autocast_weights(model, torch.float16)
        model = model.to(device)
        if cuda:
            reserve_cublas_workspaces(device)
        encoder_module = export.image_encoder(model)
        decoder_module = session_prompt_decoder(model)
        # Prompts of several point counts in one run (absent points attend nowhere).
        mixed_module = session_prompt_decoder(model, absent_points=True)
        # Meta's own position encodings, computed in the run as the predictor does: the
        # precomputed constants and the patched repeat_interleave are tricks for the ONNX
        # tracer (a CUDA graph replays the computation anyway), so they are not kept.
        encoder_module.precompute = decoder_module.precompute = mixed_module.precompute = False
        encoder_module.pos_embed = decoder_module.dense_pe = mixed_module.dense_pe = None
        common = {
            "precision": self.precision,
            "compile_mode": self.compile_mode,
            "cuda_graphs": cuda_graphs,
            "pool": graph_pool() if cuda and cuda_graphs else None,
        }
        encoder = TorchModuleSession(
            encoder_module,
            ["image"],
            export.ENCODER_OUTPUTS,
            device,
            buckets=encode_buckets,
            graph_batches=(1,),
            release_above=release_encoder_above,
            float32_outputs=False,
            name="encoder",
            **common,
        )
        shared_buffers: dict = {}  # one run at a time: the decoders' inputs in the same buffers
        decoders = [
            TorchModuleSession(
                module,
                export.DECODER_INPUTS,
                export.DECODER_OUTPUTS,
                device,
                buckets=decode_buckets,
                buffers=shared_buffers,
                name=name,
                **common,
            )
            for module, name in ((decoder_module, "decoder"), (mixed_module, "mixed decoder"))
        ]
        return SessionNetworks(encoder, *decoders)
