"""Clients of a running Triton (embedded ``serve_local.py`` or Docker compose).

Everything goes through ``tritonclient`` over HTTP or gRPC, as a user's client would,
optionally with the tensors in system shared memory (same host only). Each concurrent
worker owns its client (and its shared-memory regions), so workers never serialise on
one connection.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sam2_triton.export import ENCODER_OUTPUTS, TENSOR_SHAPES
from sam2_triton.model_config import DECODER, ENCODER

#: Outputs a decode request asks for: the single best mask, as most clients do.
DECODE_OUTPUTS = ("masks", "iou_predictions")

_NUMPY_TO_TRITON = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16"}


@dataclass
class TritonTarget:
    """Where and how to reach the server."""

    http_url: str | None = None
    grpc_url: str | None = None
    timeout_s: float = 120.0

    def url_or_none(self, protocol: str) -> str | None:
        return self.http_url if protocol == "http" else self.grpc_url

    def url(self, protocol: str) -> str:
        url = self.http_url if protocol == "http" else self.grpc_url
        if not url:
            raise ValueError(f"no {protocol} URL given")
        return url

    def module(self, protocol: str):
        if protocol == "http":
            import tritonclient.http as module
        elif protocol == "grpc":
            import tritonclient.grpc as module
        else:
            raise ValueError(f"unknown protocol {protocol!r}")
        return module

    def client(self, protocol: str):
        """A new client of ``protocol`` (one per worker)."""
        module = self.module(protocol)
        if protocol == "http":
            return module.InferenceServerClient(
                self.url(protocol),
                connection_timeout=self.timeout_s,
                network_timeout=self.timeout_s,
            )
        return module.InferenceServerClient(self.url(protocol))

    def model_info(self, model: str) -> dict:
        """Input datatypes and instance kind of ``model`` (from its config over HTTP/gRPC)."""
        protocol = "http" if self.http_url else "grpc"
        client = self.client(protocol)
        try:
            if protocol == "http":
                config = client.get_model_config(model)
            else:
                config = client.get_model_config(model, as_json=True)["config"]
        finally:
            client.close()
        kinds = [g.get("kind", "KIND_GPU") for g in config.get("instance_group", [])]
        return {
            "inputs": {i["name"]: i["data_type"].replace("TYPE_", "") for i in config["input"]},
            "max_batch_size": int(config.get("max_batch_size", 0)),
            "device": "cpu" if kinds and all(k == "KIND_CPU" for k in kinds) else "cuda",
        }


#: Triton's per-model statistics (``/v2/models/<m>/stats``): where a request's time goes
#: on the server. ``queue`` waits for an instance, ``compute_input`` copies inputs into the
#: backend (for the python backend: into the stub's shared memory), ``compute_infer`` is
#: model.py (ONNX Runtime and its device copies), ``compute_output`` hands outputs back.
SERVER_PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
#: With ``success``, the whole server-side time of the successful requests.
_TIMED = ("success", *SERVER_PHASES)


def server_statistics(target: "TritonTarget", models: list[str], settle_s: float = 2.0) -> dict:
    """Cumulative requests, rows (``inference_count``: a request of batch 4 counts 4),
    batch executions and nanoseconds per phase, per model, once they have settled.

    Triton counts a request's success and phase times when it releases the request, just
    after the response has gone out, so a snapshot taken as the last response arrives can
    miss it: read until two reads 20 ms apart agree (at most ``settle_s`` seconds).
    """
    protocol = "http" if target.http_url else "grpc"
    client = target.client(protocol)
    try:
        deadline = time.monotonic() + settle_s
        current = _read_statistics(client, protocol, models)
        while time.monotonic() < deadline:
            time.sleep(0.02)
            previous, current = current, _read_statistics(client, protocol, models)
            if current == previous:
                break
        return current
    finally:
        client.close()


def _read_statistics(client, protocol: str, models: list[str]) -> dict:
    out = {}
    for model in models:
        stats = client.get_inference_statistics(model, **_as_json(protocol))
        entry = stats["model_stats"][0]
        inference = entry["inference_stats"]
        out[model] = {
            "requests": int(inference.get("success", {}).get("count", 0)),
            "rows": int(entry.get("inference_count", 0)),
            "executions": int(entry.get("execution_count", 0)),
            **{phase: int(inference.get(phase, {}).get("ns", 0)) for phase in _TIMED},
        }
    return out


def _as_json(protocol: str) -> dict:
    return {"as_json": True} if protocol == "grpc" else {}


def server_breakdown(before: dict, after: dict) -> dict:
    """Per model between two :func:`server_statistics`: requests, executions, the mean batch
    an execution ran (rows per execution: requests merged by the dynamic batcher, times
    their own batch), and the mean milliseconds per request of each phase."""
    out = {}
    for model, end in after.items():
        start = before.get(model, {})
        requests = end["requests"] - start.get("requests", 0)
        rows = end["rows"] - start.get("rows", 0)
        executions = end["executions"] - start.get("executions", 0)
        if requests <= 0:
            continue
        row = {
            "requests": requests,
            "executions": executions,
            "mean_batch": round(rows / max(executions, 1), 2),
        }
        for phase in _TIMED:
            row[f"{phase}_ms"] = round((end[phase] - start.get(phase, 0)) / requests / 1e6, 3)
        out[model] = row
    return out


@dataclass
class _Region:
    name: str
    handle: object
    size: int


@dataclass
class _Shm:
    """System shared-memory regions of one worker, unregistered and freed by ``close``."""

    client: object
    regions: list[_Region] = field(default_factory=list)

    def create(self, size: int) -> _Region:
        import tritonclient.utils.shared_memory as shm

        name = f"sam2bench_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        handle = shm.create_shared_memory_region(name, f"/{name}", size)
        self.client.register_system_shared_memory(name, f"/{name}", size)
        region = _Region(name, handle, size)
        self.regions.append(region)
        return region

    def close(self) -> None:
        import tritonclient.utils.shared_memory as shm

        for region in self.regions:
            # A server already gone cannot unregister; our side is freed all the same.
            with contextlib.suppress(Exception):
                self.client.unregister_system_shared_memory(region.name)
            shm.destroy_shared_memory_region(region.handle)
        self.regions.clear()


def _output_shapes(names, batch: int) -> tuple[dict[str, tuple], dict[str, int]]:
    """Shapes and FP32 byte sizes of the outputs ``names`` for ``batch`` (the contract's)."""
    shapes = {n: (batch, *TENSOR_SHAPES[n]) for n in names}
    return shapes, {n: int(np.prod(shape)) * 4 for n, shape in shapes.items()}


class TritonCaller:
    """Closed-loop call factories for one server, protocol and transport.

    ``shm`` is ``"none"`` (tensors in the request body) or ``"system"`` (system shared
    memory). ``wire_dtype`` is ``np.float32`` or ``np.float16``: what the tensors travel
    as (FP16 only where the model's config declares FP16 inputs). Call :meth:`close` to
    free the workers' clients and regions.
    """

    def __init__(
        self, target: TritonTarget, protocol: str, shm: str = "none", wire_dtype=np.float32
    ) -> None:
        if shm not in ("none", "system"):
            raise ValueError(f"shm must be 'none' or 'system', not {shm!r}")
        self.target = target
        self.protocol = protocol
        self.shm = shm
        self.wire_dtype = np.dtype(wire_dtype)
        self.module = target.module(protocol)
        self._cleanups: list[Callable[[], None]] = []

    def close(self) -> None:
        while self._cleanups:
            self._cleanups.pop()()

    # -- building requests ------------------------------------------------------------

    def _client(self):
        client = self.target.client(self.protocol)
        self._cleanups.append(client.close)
        if self.shm == "system":
            regions = _Shm(client)
            self._cleanups.append(regions.close)  # runs before client.close (LIFO)
            return client, regions
        return client, None

    def _input(self, name: str, value: np.ndarray, region=None, offset: int = 0):
        value = value.astype(self.wire_dtype, copy=False)
        tensor = self.module.InferInput(name, list(value.shape), _NUMPY_TO_TRITON[value.dtype])
        if region is None:
            tensor.set_data_from_numpy(value)
        else:
            import tritonclient.utils.shared_memory as shm

            shm.set_shared_memory_region(region.handle, [np.ascontiguousarray(value)], offset)
            tensor.set_shared_memory(region.name, value.nbytes, offset)
        return tensor

    def _inputs(self, feed: dict[str, np.ndarray], regions: _Shm | None) -> list:
        if regions is None:
            return [self._input(n, v) for n, v in feed.items()]
        total = sum(v.astype(self.wire_dtype, copy=False).nbytes for v in feed.values())
        region = regions.create(total)
        tensors, offset = [], 0
        for name, value in feed.items():
            tensors.append(self._input(name, value, region, offset))
            offset += value.size * self.wire_dtype.itemsize
        return tensors

    def _outputs(self, names, sizes: dict[str, int], regions: _Shm | None):
        """Requested outputs; with shared memory, each bound into one fresh region."""
        if regions is None:
            return [self.module.InferRequestedOutput(n) for n in names], None
        region = regions.create(sum(sizes[n] for n in names))
        outputs, offset, layout = [], 0, {}
        for name in names:
            out = self.module.InferRequestedOutput(name)
            out.set_shared_memory(region.name, sizes[name], offset)
            layout[name] = (offset, sizes[name])
            outputs.append(out)
            offset += sizes[name]
        return outputs, (region, layout)

    def _read(self, result, names, shm_layout, shapes: dict[str, tuple]):
        """Bring the outputs into numpy, as a client would use them."""
        if shm_layout is None:
            return {n: result.as_numpy(n) for n in names}
        import tritonclient.utils.shared_memory as shm

        region, layout = shm_layout
        return {
            n: shm.get_contents_as_numpy(region.handle, np.float32, shapes[n], layout[n][0])
            for n in names
        }

    # -- public call factories ----------------------------------------------------------

    def encoder(self, feeds: list[dict[str, np.ndarray]], model: str = ENCODER):
        """Closed-loop factory: one ``sam2_encoder`` request per call, feeds in rotation."""
        batch = feeds[0]["image"].shape[0]
        return self._factory(model, feeds, ENCODER_OUTPUTS, *_output_shapes(ENCODER_OUTPUTS, batch))

    def decoder(self, feeds: list[dict[str, np.ndarray]], model: str = DECODER):
        """Closed-loop factory: one ``sam2_decoder`` request per call, feeds in rotation."""
        batch = feeds[0]["point_coords"].shape[0]
        return self._factory(model, feeds, DECODE_OUTPUTS, *_output_shapes(DECODE_OUTPUTS, batch))

    def _factory(self, model, feeds, output_names, shapes, sizes):
        def make(_worker: int):
            client, regions = self._client()
            requests = []
            for feed in feeds:
                outputs, layout = self._outputs(output_names, sizes, regions)
                requests.append((self._inputs(feed, regions), outputs, layout))

            def call(i: int):
                inputs, outputs, layout = requests[i % len(requests)]
                result = client.infer(model, inputs, outputs=outputs)
                return self._read(result, output_names, layout, shapes)

            return call

        return make

    def interactive(
        self,
        images: list[dict[str, np.ndarray]],
        clicks: list[dict[str, np.ndarray]],
    ):
        """One interactive session per call: an encode request, then one decode request
        per click with the features (and, after the first click, the previous low-res
        mask) sent back. With shared memory the encoder writes the features into a region
        the decode requests read, so they never pass through the client."""
        batch = images[0]["image"].shape[0]
        feat_shapes, feat_sizes = _output_shapes(ENCODER_OUTPUTS, batch)
        mask_shapes, mask_sizes = _output_shapes(DECODE_OUTPUTS, batch)

        def make(_worker: int):
            client, regions = self._client()
            encodes = []
            for image in images:
                outputs, layout = self._outputs(ENCODER_OUTPUTS, feat_sizes, regions)
                encodes.append((self._inputs(image, regions), outputs, layout))
            if regions is None:
                return self._plain_session(client, encodes, clicks, feat_shapes, mask_shapes)
            return self._shm_session(
                client, regions, encodes, clicks, batch, mask_sizes, mask_shapes
            )

        return make

    def _plain_session(self, client, encodes, clicks, feat_shapes, mask_shapes):
        from sam2_triton.bench.inputs import follow_up

        def call(i: int):
            inputs, outputs, _ = encodes[i % len(encodes)]
            result = client.infer(ENCODER, inputs, outputs=outputs)
            feats = self._read(result, ENCODER_OUTPUTS, None, feat_shapes)
            masks = None
            for click in clicks:
                feed = {**feats, **click}
                if masks is not None:
                    feed = follow_up(masks, feed)
                requested, _ = self._outputs(DECODE_OUTPUTS, {}, None)
                result = client.infer(DECODER, self._inputs(feed, None), outputs=requested)
                masks = self._read(result, DECODE_OUTPUTS, None, mask_shapes)["masks"]
            return masks

        return call

    def _shm_session(self, client, regions, encodes, clicks, batch, mask_sizes, mask_shapes):
        from sam2_triton.bench.inputs import follow_up

        # The features each encode writes; decode requests read them from the same place.
        feat_inputs = []
        for _, _, (region, layout) in encodes:
            tensors = []
            for name in ENCODER_OUTPUTS:
                offset, size = layout[name]
                tensor = self.module.InferInput(name, [batch, *TENSOR_SHAPES[name]], "FP32")
                tensor.set_shared_memory(region.name, size, offset)
                tensors.append(tensor)
            feat_inputs.append(tensors)
        mask_out, mask_layout = self._outputs(DECODE_OUTPUTS, mask_sizes, regions)
        prompt_names = [n for n in clicks[0] if n not in ENCODER_OUTPUTS]
        prompt_bytes = sum(clicks[0][n].size * self.wire_dtype.itemsize for n in prompt_names)
        prompt_region = regions.create(prompt_bytes)

        def call(i: int):
            k = i % len(encodes)
            inputs, outputs, _ = encodes[k]
            client.infer(ENCODER, inputs, outputs=outputs)
            masks = None
            for click in clicks:
                feed = dict(click) if masks is None else follow_up(masks, dict(click))
                prompt, offset = [], 0
                for name in prompt_names:
                    prompt.append(self._input(name, feed[name], prompt_region, offset))
                    offset += feed[name].size * self.wire_dtype.itemsize
                client.infer(DECODER, feat_inputs[k] + prompt, outputs=mask_out)
                masks = self._read(None, DECODE_OUTPUTS, mask_layout, mask_shapes)["masks"]
            return masks

        return call
