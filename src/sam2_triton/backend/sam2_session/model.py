"""Triton Python-based backend ``sam2_session``: send the image once, then decode prompts.

A session is a Triton sequence (``sequence_id``, ``sequence_start``, ``sequence_end`` in the
HTTP/gRPC request). Triton's sequence batcher sends every request of a sequence to the model
instance that got its start, so this instance keeps the session's image features on its device
(:mod:`sam2_triton.sessions.image`) and later requests carry only prompts. The batcher's
"oldest" strategy batches requests of different sessions; one ``execute`` call encodes their
new images together and decodes their prompts together.

This file only translates between Triton's tensors and :class:`ImageSessionEngine`; the logic
and its tests live in the package. Triton finds it as ``<backend-directory>/sam2_session/
model.py`` (``backend: "sam2_session"`` in the config): ``scripts/serve_local.py`` lays that
out for the embedded server, ``docker/Dockerfile`` for the NGC image.

Wire contract (inputs all optional; Triton adds the batch dim of 1):
``image_bytes`` UINT8 [-1], ``point_coords`` FP32 [-1, 2], ``point_labels`` INT32 [-1],
``box`` FP32 [4], ``multimask_output`` BOOL [1], ``use_previous_mask`` BOOL [1],
``mask_input`` FP32 [256, 256] (optional low-res logits instead of the previous mask) →
``masks`` UINT8 [-1, -1, -1], ``iou_predictions`` FP32 [-1], ``low_res_masks`` FP32
[-1, 256, 256], ``mask_png`` UINT8 [-1], ``mask_rle`` INT32 [-1] (the best mask as COCO
run lengths, column-major: a few hundred bytes where ``masks`` are H x W), ``image_size``
INT32 [2]. A request gets only the outputs it asks for (all when it names none).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from sam2_triton.backend.sequence import (
    answer_batch,
    input_tensors,
    parameter,
    read_inputs,
    read_points,
    read_sequence,
    start_idle_work,
)
from sam2_triton.export import CUDA_MODEL_FILENAME
from sam2_triton.sessions.image import (
    OUTPUTS,
    ImageSessionEngine,
    SessionLimits,
    SessionRequest,
)
from sam2_triton.sessions.runtime import (
    StageClock,
    bucket_sizes,
    release_message,
    torch_device,
)
from sam2_triton.sessions.torch_networks import TorchNetworks

#: Environment variable: log where the time goes every N executions (0 or unset: never).
STAGE_LOG_ENV = "SAM2_TRITON_STAGE_LOG_EVERY"


class TritonPythonModel:
    """One ``sam2_session`` instance: its sessions and its ONNX Runtime sessions."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        defaults = SessionLimits()

        def number(key: str, default: float) -> float:
            return float(parameter(config, key, str(default)))

        limits = SessionLimits(
            max_sessions=int(number("max_sessions", defaults.max_sessions)),
            idle_timeout_s=number("session_idle_timeout_s", defaults.idle_timeout_s),
            max_image_pixels=int(number("max_image_pixels", defaults.max_image_pixels)),
            max_image_bytes=int(number("max_image_bytes", defaults.max_image_bytes)),
            max_points=int(number("max_points", defaults.max_points)),
            max_encode_batch=int(number("max_encode_batch", defaults.max_encode_batch)),
            memory_release_idle_s=number("memory_release_idle_s", defaults.memory_release_idle_s),
        )
        # The networks are the repository's own exported graphs: the config names their model
        # folders (in this repository, or absolute paths).
        repository = Path(args["model_repository"]).parent
        graphs = [
            repository / parameter(config, f"{role}_model", f"sam2_{role}") / "1" / "model.onnx"
            for role in ("encoder", "decoder")
        ]
        kind = args.get("model_instance_kind", "CPU")
        device_id = int(args.get("model_instance_device_id", 0) or 0)
        # On a GPU, the encoder's graph with ONNX Runtime's fused attention, where exported.
        fused = graphs[0].with_name(CUDA_MODEL_FILENAME)
        if kind == "GPU" and fused.is_file():
            graphs[0] = fused
        log = pb_utils.Logger
        try:
            device = torch_device(kind, device_id)
            # The exported graphs, or (runtime pytorch) the modules they are traced from.
            networks = TorchNetworks.from_parameters(
                lambda key, default: parameter(config, key, default), repository
            )
            self.engine = ImageSessionEngine(
                *graphs,
                device,
                limits,
                intra_op_threads=int(parameter(config, "intra_op_thread_count", "0")),
                cuda_graphs=parameter(config, "decoder_cuda_graphs", "true").lower() == "true",
                jpeg_on_gpu=parameter(config, "jpeg_on_gpu", "true").lower() == "true",
                decode_buckets=bucket_sizes(int(config.get("max_batch_size", 1))),
                on_drop=lambda key, _s, why: log.log_verbose(f"{self.name}: session {key} {why}"),
                torch_networks=networks,
                on_memory_release=self._log_release,
            )
            warmed = ""
            if parameter(config, "warmup", "false") == "true":
                warmed = f"; warmed up in {self.engine.warm():.1f} s"
        except Exception as e:  # noqa: BLE001 - any failure makes the model unavailable
            raise pb_utils.TritonModelException(f"{self.name}: {e}") from None
        # Expired sessions are freed, and idle memory given back, even when no request comes.
        self.sweeper = start_idle_work(self.engine, device, limits.idle_timeout_s)
        self.max_elements = {
            "image_bytes": limits.max_image_bytes,
            "point_coords": 2 * limits.max_points,
            "point_labels": limits.max_points,
            "box": 4,
            "multimask_output": 1,
            "use_previous_mask": 1,
            "mask_input": 256 * 256,
        }
        # A diagnostic: where an execution's time goes, logged (see _log_stages).
        self._stage_log_every = int(os.environ.get(STAGE_LOG_ENV, "0") or 0)
        self._executions = self._requests = 0
        if self._stage_log_every > 0:
            self.engine.clock = StageClock(device)
        for role in ("encoder", "decoder", "mixed_decoder"):
            graphs_off = getattr(getattr(self.engine, role), "error", None)
            if graphs_off:
                log.log_warn(f"{self.name}: {role} without CUDA graphs: {graphs_off}")
        if self.engine.compile_error:
            log.log_warn(f"{self.name}: torch.compile failed, eager: {self.engine.compile_error}")
        encoder = "the PyTorch modules" if networks else f"{graphs[0].name} for the encoder"
        log.log_info(
            f"{self.name}: {kind} instance {device_id} on {device} "
            f"({', '.join(self.engine.decoder.providers)}; {encoder}; "
            f"JPEG files decoded by {self.engine.jpeg.where}); "
            f"at most {limits.max_sessions} "
            f"sessions of {self.engine.session_nbytes() / 2**20:.2f} MiB, idle timeout "
            f"{limits.idle_timeout_s:g} s{warmed}"
        )

    def _log_release(self, before: int, after: int) -> None:
        pb_utils.Logger.log_info(release_message(self.name, self.engine.device, before, after))

    def execute(self, requests: list) -> list:
        responses = answer_batch(
            self.name,
            requests,
            self._read,
            self.engine.execute,
            self._outputs,
            stage=self.engine.stage,
        )
        if self.engine.clock is not None:
            self._log_stages(len(requests))
        return responses

    def _log_stages(self, requests: int) -> None:
        """With :data:`STAGE_LOG_ENV` set to N: every N executions, the mean milliseconds per
        execution of each stage (the backend's reading and answering, the engine's stages;
        a synchronisation ends each) and the mean requests per execution."""
        self._executions += 1
        self._requests += requests
        if self._executions < self._stage_log_every:
            return
        clock = self.engine.clock
        stages = ", ".join(f"{k} {v:.2f}" for k, v in clock.mean_ms(self._executions).items())
        pb_utils.Logger.log_info(
            f"{self.name}: {self._requests / self._executions:.2f} requests per execution, "
            f"ms per execution: {stages}"
        )
        clock.seconds.clear()
        self._executions = self._requests = 0

    def _read(self, request) -> SessionRequest:
        tensors = input_tensors(request)
        values = read_inputs(tensors, self.max_elements)
        session_id, start, end = read_sequence(tensors, self.name)
        points, labels = read_points(values)
        image = values.get("image_bytes")
        asked = request.requested_output_names()
        return SessionRequest(
            session_id=session_id,
            start=start,
            end=end,
            image_bytes=None if image is None else image.tobytes(),
            points=points,
            labels=None if labels is None else labels.astype(np.int64),
            box=None if values.get("box") is None else values["box"].astype(np.float32),
            multimask=bool(values.get("multimask_output", [False])[0]),
            use_previous_mask=bool(values.get("use_previous_mask", [False])[0]),
            mask_input=values.get("mask_input"),
            outputs=frozenset(asked) if asked else frozenset(OUTPUTS),
        )

    def _outputs(self, answer, request: SessionRequest) -> list[tuple[str, np.ndarray]]:
        return [
            (name, value)
            for name in OUTPUTS
            if name in request.outputs and (value := self._output(answer, name)) is not None
        ]

    @staticmethod
    def _output(answer, name: str) -> np.ndarray | None:
        if name == "image_size":
            return np.asarray(answer.image_size, np.int32)
        if name == "mask_png":
            return None if answer.mask_png is None else np.frombuffer(answer.mask_png, np.uint8)
        return getattr(answer, name)

    def finalize(self) -> None:
        self.sweeper.stop()
        self.engine.close()
