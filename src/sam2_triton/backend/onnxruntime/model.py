"""A Python-based Triton backend named ``onnxruntime`` that runs ``model.onnx`` with ONNX Runtime.

Why it exists: the ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel has only the
python backend. Triton maps ``platform: "onnxruntime_onnx"`` to a backend called
``onnxruntime``; when ``<backend-directory>/onnxruntime/`` holds this ``model.py`` instead of
``libtriton_onnxruntime.so``, Triton runs it through the python backend. So the very model
repository served by the NGC image (with NVIDIA's C++ ONNX Runtime backend) is served here
unchanged. ``scripts/serve_local.py`` lays out the backend directory.

What it does, per model instance:

* reads the model config: instance kind, the ``gpu_execution_accelerator`` list and the
  ``intra_op_thread_count`` parameter, and picks TensorRT EP (FP16 and engine cache as the
  config asks) → CUDA EP → CPU EP by what the installed ``onnxruntime`` offers, logging
  its choice;
* runs a whole dynamic batch in one ONNX Runtime call (requests are concatenated along the
  batch dimension and the results split back), returning only the outputs each request
  asked for; a model Triton does not batch (``max_batch_size: 0``, as
  ``sam2_decoder_prompts``: one image's features, K prompt sets) runs each request alone;
  outputs have as many rows as the request has prompt sets. On a GPU instance with
  CUDA/TensorRT it binds inputs and outputs on the device (:class:`CudaRunner`), so
  inside the ``sam2`` ensemble the encoder's features go to the decoder without a trip
  through host memory;
* answers a bad request with an ``INVALID_ARG`` error (HTTP 400) and keeps serving:
  more points than the config's ``max_points`` or more prompt sets than its
  ``max_prompts``, prompt tensors whose counts disagree (all read from the declared shapes,
  before any value), non-finite values, unknown labels, and inputs so far out of range that
  the model's outputs come out NaN or infinite.

Only numpy and onnxruntime are imported: this file runs inside Triton's python stub.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

VALID_LABELS = (-1.0, 0.0, 1.0, 2.0, 3.0)
_TRUE = ("1", "true", "yes", "on")


def _param(config: dict, key: str, default: str = "") -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def choose_providers(config: dict, kind: str, device_id: int, log) -> list:
    """The execution providers for this instance, best first, limited to what is installed."""
    if kind != "GPU":
        return ["CPUExecutionProvider"]
    _load_cuda_libraries(log)
    available = ort.get_available_providers()
    providers: list = []
    accelerators = (
        config.get("optimization", {})
        .get("execution_accelerators", {})
        .get("gpu_execution_accelerator", [])
    )
    for acc in accelerators:
        if acc.get("name") != "tensorrt":
            continue
        if "TensorrtExecutionProvider" not in available:
            log("TensorRT requested but this onnxruntime has no TensorRT EP; using CUDA")
            continue
        params = acc.get("parameters", {})
        opts = {"device_id": device_id}
        precision = params.get("precision_mode", "FP32").upper()
        opts["trt_fp16_enable"] = precision == "FP16"
        opts["trt_int8_enable"] = precision == "INT8"
        if "max_workspace_size_bytes" in params:
            opts["trt_max_workspace_size"] = int(params["max_workspace_size_bytes"])
        for key, value in params.items():
            if key.startswith("trt_"):
                is_flag = key.endswith("_enable")
                opts[key] = value.lower() in _TRUE if is_flag else value
        if opts.get("trt_engine_cache_path"):
            Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        providers.append(("TensorrtExecutionProvider", opts))
    if "CUDAExecutionProvider" in available:
        # The config's "cuda" accelerator entry: CUDA EP options (memory, attention), as
        # NVIDIA's ONNX Runtime backend reads them.
        cuda = next((a for a in accelerators if a.get("name") == "cuda"), {})
        options = {**cuda.get("parameters", {}), "device_id": device_id}
        providers.append(("CUDAExecutionProvider", options))
    else:
        log("instance kind is GPU but this onnxruntime has no CUDA EP; running on the CPU")
    providers.append("CPUExecutionProvider")
    return providers


def _load_cuda_libraries(log) -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels before the CUDA/TensorRT EP needs them."""
    try:
        ort.preload_dlls()
    except Exception as e:  # noqa: BLE001 - older onnxruntime, or libraries on LD_LIBRARY_PATH
        log(f"onnxruntime.preload_dlls() did not run ({e}); relying on LD_LIBRARY_PATH")


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _session(path: Path, options, providers: list, log, name: str) -> "ort.InferenceSession":
    """The session on ``providers``; without TensorRT if its libraries fail to load.

    onnxruntime-gpu lists the TensorRT EP even where TensorRT itself is not installed; the
    model should then run on CUDA rather than be unavailable.
    """
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # noqa: BLE001
        rest = [p for p in providers if not (isinstance(p, tuple) and p[0].startswith("Tensorrt"))]
        if rest == providers:
            raise
        log(f"{name}: TensorRT EP failed ({_first_line(e)}); using {rest[0]}")
        return ort.InferenceSession(str(path), options, providers=rest)


class BadRequest(ValueError):
    """A request the model cannot run; the client gets its message with INVALID_ARG."""


class HostRunner:
    """Runs the session on host (numpy) arrays: the CPU path, and the fallback on a GPU."""

    description = "host arrays"

    def __init__(self, session: "ort.InferenceSession") -> None:
        self.session = session

    def array(self, tensor):
        return tensor.as_numpy()

    def concat(self, arrays: list):
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def all_finite(self, value) -> bool:
        return value.dtype.kind != "f" or bool(np.isfinite(value).all())

    def host(self, value) -> np.ndarray:
        return value

    def run(self, names: list[str], feed: dict, batch: int) -> dict:
        return dict(zip(names, self.session.run(names, feed)))

    def tensor(self, name: str, value):
        return pb_utils.Tensor(name, np.ascontiguousarray(value))


class CudaRunner(HostRunner):
    """I/O binding on the instance's GPU, so a batch crosses the host boundary at most once.

    Inputs Triton already holds on the GPU (the encoder's outputs inside the ``sam2``
    ensemble) are bound in place; host inputs are copied once. Outputs are written by
    ONNX Runtime straight into device buffers that go back to Triton through DLPack, so
    the ensemble's decoder step reads them without a round trip through host memory.
    torch provides the device buffers and the DLPack bridge.
    """

    description = "CUDA I/O binding, outputs on the GPU"

    def __init__(self, session, device_id: int, output_dims: dict[str, list[int]]) -> None:
        """``output_dims``: each output's dims after the leading (batch or prompt) dim."""
        import torch

        super().__init__(session)
        self.torch = torch
        self.device_id = device_id
        self.device = torch.device("cuda", device_id)
        self.output_dims = output_dims

    def array(self, tensor):
        if tensor.is_cpu():
            return tensor.as_numpy()
        return self.torch.from_dlpack(tensor.to_dlpack())

    def _device(self, value):
        if isinstance(value, np.ndarray):
            return self.torch.from_numpy(value).to(self.device, non_blocking=False)
        return value

    def concat(self, arrays: list):
        if all(isinstance(a, np.ndarray) for a in arrays):
            return super().concat(arrays)
        return self.torch.cat([self._device(a) for a in arrays])

    def all_finite(self, value) -> bool:
        if isinstance(value, np.ndarray):
            return super().all_finite(value)
        return bool(self.torch.isfinite(value).all())

    def host(self, value) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.cpu().numpy()

    def run(self, names: list[str], feed: dict, batch: int) -> dict:
        binding = self.session.io_binding()
        on_device = []  # keeps bound device inputs alive until the run has finished
        for name, value in feed.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                value = value.contiguous()
                on_device.append(value)
                binding.bind_input(
                    name, "cuda", self.device_id, np.float32, list(value.shape), value.data_ptr()
                )
        outputs = {}
        for name in names:
            out = self.torch.empty((batch, *self.output_dims[name]), device=self.device)
            binding.bind_output(
                name, "cuda", self.device_id, np.float32, list(out.shape), out.data_ptr()
            )
            outputs[name] = out
        if on_device:  # torch wrote them on its stream; ONNX Runtime reads on its own
            self.torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)  # returns once the device work is done
        return outputs

    def tensor(self, name: str, value):
        if isinstance(value, np.ndarray):
            return super().tensor(name, value)
        return pb_utils.Tensor.from_dlpack(name, self.torch.utils.dlpack.to_dlpack(value))


def make_runner(session, kind: str, device_id: int, config: dict, log) -> HostRunner:
    """:class:`CudaRunner` when this GPU instance runs on CUDA/TensorRT and torch is there."""
    gpu_eps = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    if kind != "GPU" or session.get_providers()[0] not in gpu_eps:
        return HostRunner(session)
    try:
        import torch

        if not torch.cuda.is_available():
            raise ImportError("torch sees no GPU")
    except ImportError as e:
        log(f"{config['name']}: no GPU-enabled torch ({e}); binding host arrays")
        return HostRunner(session)
    # Without Triton batching the config states the leading dim too (-1: the prompt sets).
    skip = 0 if int(config.get("max_batch_size", 0)) > 0 else 1
    dims = {o["name"]: [int(d) for d in o["dims"]][skip:] for o in config["output"]}
    return CudaRunner(session, device_id, dims)


class TritonPythonModel:
    """ONNX Runtime behind Triton's python backend: one session per model instance."""

    def initialize(self, args: dict) -> None:
        self.config = json.loads(args["model_config"])
        self.name = self.config["name"]
        log = pb_utils.Logger.log_info
        version_dir = Path(args["model_repository"]) / args["model_version"]
        path = version_dir / (self.config.get("default_model_filename") or "model.onnx")
        if not path.is_file():
            raise pb_utils.TritonModelException(f"{self.name}: cannot load {path}: file not found")

        kind = args.get("model_instance_kind", "CPU")
        device_id = int(args.get("model_instance_device_id", 0) or 0)
        providers = choose_providers(self.config, kind, device_id, log)
        # Without TensorRT, the CUDA EP runs the export's fused graph where there is one
        # (``cuda_model_filename``: the encoder's model.cuda.onnx); TensorRT needs model.onnx.
        fused = version_dir / _param(self.config, "cuda_model_filename", "")
        uses_trt = any(isinstance(p, tuple) and p[0].startswith("Tensorrt") for p in providers)
        if kind == "GPU" and not uses_trt and fused != version_dir and fused.is_file():
            path = fused
        options = ort.SessionOptions()
        if kind != "GPU":
            # ONNX Runtime's CPU arena keeps the largest batch's working set for good (5.8 GB
            # seen for the tiny encoder after batches of 4); without it the memory goes back
            # after each run, at no measurable cost in speed (tiny encoder, 2 cores).
            options.enable_cpu_mem_arena = False
        threads = int(_param(self.config, "intra_op_thread_count", "0") or 0)
        if kind == "GPU":
            # The GPU runs the nodes; CPU threads only the few shape nodes kept on the CPU:
            # one, not spinning after each run (a thread per core spinning, in each of the
            # server's stub processes, competes with the Python threads feeding the GPU).
            options.intra_op_num_threads = threads or 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif threads:
            options.intra_op_num_threads = threads
        try:
            self.session = _session(path, options, providers, log, self.name)
        except Exception as e:  # noqa: BLE001 - any load failure makes the model unavailable
            raise pb_utils.TritonModelException(
                f"{self.name}: cannot load {path}: {_first_line(e)}"
            ) from None
        self.runner = make_runner(self.session, kind, device_id, self.config, log)
        log(
            f"{self.name}: {path.name} on ONNX Runtime {ort.__version__} on "
            f"{', '.join(self.session.get_providers())} ({kind} instance {device_id}, "
            f"{self.runner.description})"
        )
        self.input_names = [i["name"] for i in self.config["input"]]
        self.output_names = [o["name"] for o in self.config["output"]]
        self.batched = int(self.config.get("max_batch_size", 0)) > 0
        self.max_points = int(_param(self.config, "max_points", "0") or 0)
        self.max_prompts = int(_param(self.config, "max_prompts", "0") or 0)
        # The input whose leading dim is the number of output rows: the prompt sets on a
        # decoder (its features may be one image's, broadcast), else the batch.
        rows = "point_coords" if "point_coords" in self.input_names else self.input_names[0]
        self.rows_input = rows

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for i, request in enumerate(requests):
            try:
                inputs = self._read_inputs(request)
            except BadRequest as e:
                responses[i] = self._error(str(e))
                continue
            # Requests can be concatenated only where every non-batch dim agrees, and only
            # when Triton batches this model at all.
            key = tuple(inputs[n].shape[1:] for n in self.input_names) if self.batched else i
            groups.setdefault(key, []).append((i, inputs))

        for members in groups.values():
            wanted = set()
            for i, _ in members:
                wanted.update(requests[i].requested_output_names() or self.output_names)
            names = [n for n in self.output_names if n in wanted]
            feed = {
                n: self.runner.concat([inputs[n] for _, inputs in members])
                for n in self.input_names
            }
            batch = feed[self.rows_input].shape[0]
            try:
                results = self.runner.run(names, feed, batch)
            except Exception as e:  # noqa: BLE001 - report, keep serving
                for i, _ in members:
                    responses[i] = self._error(f"ONNX Runtime failed: {e}", internal=True)
                continue
            start = 0
            for i, inputs in members:
                size = inputs[self.rows_input].shape[0]
                asked = requests[i].requested_output_names() or self.output_names
                rows = {n: results[n][start : start + size] for n in names if n in asked}
                start += size
                # Finite inputs of absurd size (3e38) overflow inside the model: say so
                # instead of answering 200 with masks that are all NaN.
                broken = [n for n, value in rows.items() if not self.runner.all_finite(value)]
                if broken:
                    responses[i] = self._error(
                        f"{self.name}: output '{broken[0]}' came out NaN or infinite; an "
                        "input value is far outside the range the model works in"
                    )
                    continue
                tensors = [self.runner.tensor(n, value) for n, value in rows.items()]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def _read_inputs(self, request) -> dict:
        tensors = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise BadRequest(f"{self.name}: missing input '{name}'")
            tensors[name] = tensor
        if "point_coords" in tensors:
            # Counts first, from the declared shapes: an oversized request is refused before
            # any of its values is read, checked or copied.
            self._check_prompt_shapes({n: tuple(t.shape()) for n, t in tensors.items()})
        inputs = {}
        for name, tensor in tensors.items():
            value = self.runner.array(tensor)
            if not self.runner.all_finite(value):
                raise BadRequest(f"{self.name}: input '{name}' contains NaN or infinite values")
            inputs[name] = value
        if (
            "point_labels" in inputs
            and not np.isin(self.runner.host(inputs["point_labels"]), VALID_LABELS).all()
        ):
            raise BadRequest(
                f"{self.name}: point_labels must be 1 (foreground), 0 (background), "
                "2/3 (box corners) or -1 (padding)"
            )
        return inputs

    def _check_prompt_shapes(self, shapes: dict[str, tuple]) -> None:
        """Points per prompt set agree and are 1..max_points; every prompt tensor has one
        row per prompt set (Triton checks this only where it batches the model), and there
        are 1..max_prompts of them. ``mask_input`` may also have one row, shared by all
        sets: the graph broadcasts it, so a prompt batch without previous masks need not
        carry K zero masks."""
        coords, labels = shapes["point_coords"], shapes["point_labels"]
        if labels != coords[:-1]:
            raise BadRequest(
                f"{self.name}: point_labels shape {list(labels)} does not match "
                f"point_coords shape {list(coords)} (expected [B, N] for [B, N, 2])"
            )
        self._check_count(coords[-2], "point", self.max_points, " (or a box as 2 points)")
        k = coords[0]
        for name, allowed in (("mask_input", (1, k)), ("has_mask_input", (k,))):
            if name in shapes and shapes[name][0] not in allowed:
                one = " (or 1, shared)" if len(allowed) > 1 else ""
                raise BadRequest(
                    f"{self.name}: {name} has {shapes[name][0]} rows but point_coords "
                    f"has {k} prompt sets (one row each{one})"
                )
        self._check_count(k, "prompt set", self.max_prompts)

    def _check_count(self, count: int, what: str, cap: int, alternative: str = "") -> None:
        """1..``cap`` of ``what`` per request (``cap`` 0: no upper bound)."""
        if count < 1:
            raise BadRequest(f"{self.name}: at least one {what}{alternative} is needed")
        if cap and count > cap:
            raise BadRequest(f"{self.name}: {count} {what}s per request, at most {cap} are allowed")

    @staticmethod
    def _error(message: str, internal: bool = False):
        code = pb_utils.TritonError.INTERNAL if internal else pb_utils.TritonError.INVALID_ARG
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))

    def finalize(self) -> None:
        self.runner = None
        self.session = None
