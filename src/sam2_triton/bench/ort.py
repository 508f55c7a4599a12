"""In-process ONNX Runtime: the baseline every served figure is compared with.

One session per ONNX file and device. On CUDA it runs either the plain way
(``session.run`` with numpy arrays: host-to-device and back on every call, what the
Triton backend does) or with I/O binding (inputs uploaded once, outputs left on the GPU:
the model's own time).
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sam2_triton.bench.inputs import follow_up

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def import_onnxruntime(device: str):
    """``onnxruntime``, with the CUDA libraries loaded first when ``device == "cuda"``.

    The CUDA 13 builds of onnxruntime-gpu find cuDNN/cuBLAS through the nvidia-* wheels:
    importing torch (which loads them) or ``onnxruntime.preload_dlls()`` does that.
    """
    if device == "cuda":
        with contextlib.suppress(ImportError):
            import torch  # noqa: F401 - loads libcudart, cuBLAS and cuDNN of its wheels
    import onnxruntime as ort

    if device == "cuda":
        if CUDA_PROVIDER not in ort.get_available_providers():
            raise RuntimeError(
                f"onnxruntime {ort.__version__} has no CUDA EP (install onnxruntime-gpu)"
            )
        # Older onnxruntime has no preload_dlls; torch may have loaded the libraries already.
        with contextlib.suppress(Exception):
            ort.preload_dlls()
    return ort


def cuda_provider_options(device_id: int = 0) -> dict[str, str]:
    """CUDA EP options used for every session (recorded in the results)."""
    return {
        "device_id": str(device_id),
        # Allocate what is asked: the measured device memory is then close to the need.
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": "1",
    }


def count_memcpy(optimized_model: str | os.PathLike) -> dict:
    """Memcpy nodes ONNX Runtime inserted into a saved optimized graph, and their consumers."""
    import onnx

    model = onnx.load(str(optimized_model), load_external_data=False)
    copies = [n for n in model.graph.node if n.op_type.startswith("Memcpy")]
    consumers = []
    for copy in copies:
        for node in model.graph.node:
            if copy.output[0] in node.input:
                consumers.append(f"{copy.op_type} → {node.op_type} {node.name}")
    return {
        "memcpy_nodes": len(copies),
        "from_host": sum(n.op_type == "MemcpyFromHost" for n in copies),
        "to_host": sum(n.op_type == "MemcpyToHost" for n in copies),
        "nodes_after_optimization": len(model.graph.node),
        "memcpy_consumers": consumers[:40],
    }


def device_memory_used_mb() -> float | None:
    """Memory in use on CUDA device 0 (all processes), or None without a CUDA torch."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20
    except Exception:  # noqa: BLE001 - no usable CUDA
        return None


@dataclass
class OrtSession:
    """An ONNX Runtime session on one file and device, plus what was learnt creating it."""

    path: Path
    device: str
    session: object
    provider_options: dict = field(default_factory=dict)
    graph: dict = field(default_factory=dict)
    memory_before_mb: float | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        *,
        count_copies: bool = False,
        intra_op_threads: int = 0,
    ) -> "OrtSession":
        """Create the session; with ``count_copies``, save the optimized graph and count
        the Memcpy nodes the CUDA EP added (see :func:`count_memcpy`)."""
        ort = import_onnxruntime(device)
        path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        memory_before = device_memory_used_mb() if device == "cuda" else None
        tmp = None
        if count_copies:
            tmp = tempfile.TemporaryDirectory(prefix="sam2-bench-")
            options.optimized_model_filepath = str(Path(tmp.name) / "optimized.onnx")
        if device == "cuda":
            provider_options = cuda_provider_options()
            providers = [(CUDA_PROVIDER, provider_options), CPU_PROVIDER]
        else:
            provider_options = {}
            providers = [CPU_PROVIDER]
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
            graph = {"file": str(path), "providers": session.get_providers()}
            if tmp is not None:
                graph.update(count_memcpy(options.optimized_model_filepath))
        finally:
            if tmp is not None:
                tmp.cleanup()
        if device == "cuda" and session.get_providers()[0] != CUDA_PROVIDER:
            raise RuntimeError(f"the CUDA EP did not load for {path}")
        return cls(path, device, session, provider_options, graph, memory_before)

    def memory_mb(self) -> float | None:
        """Device memory this session holds now (its arena keeps its peak), in MiB."""
        if self.device != "cuda" or self.memory_before_mb is None:
            return None
        now = device_memory_used_mb()
        return None if now is None else round(now - self.memory_before_mb, 1)

    def close(self) -> None:
        self.session = None
        gc.collect()

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    # -- callers: ``make(worker)`` returns ``call(i)`` for stats.closed_loop ---------------

    def caller(
        self, feeds: list[dict[str, np.ndarray]], io_binding: bool, outputs: list[str] | None = None
    ) -> Callable[[int], Callable[[int], object]]:
        """A closed-loop call factory running this session on ``feeds`` in rotation."""
        names = outputs or self.output_names
        if not io_binding:

            def make_plain(_worker: int):
                def call(i: int):
                    return self.session.run(names, feeds[i % len(feeds)])

                return call

            return make_plain
        device_feeds = [self._upload(feed) for feed in feeds]

        def make_bound(_worker: int):
            bindings = []
            for values in device_feeds:
                binding = self.session.io_binding()
                for name, value in values.items():
                    binding.bind_ortvalue_input(name, value)
                for name in names:
                    binding.bind_output(name, self.device if self.device == "cuda" else "cpu")
                bindings.append(binding)

            def call(i: int):
                self.session.run_with_iobinding(bindings[i % len(bindings)])

            return call

        return make_bound

    def _upload(self, feed: dict[str, np.ndarray]) -> dict:
        import onnxruntime as ort

        where = "cuda" if self.device == "cuda" else "cpu"
        return {k: ort.OrtValue.ortvalue_from_numpy(v, where, 0) for k, v in feed.items()}


def interactive_caller(
    encoder: OrtSession,
    decoder: OrtSession,
    images: list[dict[str, np.ndarray]],
    clicks: list[dict[str, np.ndarray]],
    io_binding: bool,
) -> Callable[[int], Callable[[int], object]]:
    """One interactive session per call: encode one image, then ``len(clicks)`` decodes,
    each click after the first feeding back the previous low-res mask."""
    feature_names = encoder.output_names

    if not io_binding:

        def make_plain(_worker: int):
            def call(i: int):
                feats = dict(zip(feature_names, encoder.session.run(None, images[i % len(images)])))
                masks = None
                for click in clicks:
                    feed = {**feats, **click}
                    if masks is not None:
                        feed = follow_up(masks, feed)
                    masks, _ = decoder.session.run(["masks", "iou_predictions"], feed)
                return masks

            return call

        return make_plain

    import onnxruntime as ort

    device_images = [encoder._upload(f) for f in images]
    device_clicks = [decoder._upload(c) for c in clicks]
    ones = ort.OrtValue.ortvalue_from_numpy(
        np.ones((images[0]["image"].shape[0], 1), np.float32), "cuda", 0
    )

    def make_bound(_worker: int):
        enc = encoder.session.io_binding()
        for name in feature_names:
            enc.bind_output(name, "cuda")

        def call(i: int):
            enc.bind_ortvalue_input("image", device_images[i % len(device_images)]["image"])
            encoder.session.run_with_iobinding(enc)
            feats = dict(zip(feature_names, enc.get_outputs()))
            previous = None
            for click in device_clicks:
                dec = decoder.session.io_binding()
                for name, value in {**feats, **click}.items():
                    dec.bind_ortvalue_input(name, value)
                if previous is not None:
                    dec.bind_ortvalue_input("mask_input", previous)
                    dec.bind_ortvalue_input("has_mask_input", ones)
                dec.bind_output("masks", "cuda")
                dec.bind_output("iou_predictions", "cuda")
                decoder.session.run_with_iobinding(dec)
                previous = dec.get_outputs()[0]
            return previous

        return call

    return make_bound
