"""Triton Python-based backend ``sam2_video``: SAM2.1 video object tracking, one video per
sequence.

A video is a Triton sequence (``sequence_id``, ``sequence_start``, ``sequence_end``). Triton's
sequence batcher sends every request of a sequence to the model instance that got its start,
so that instance keeps the video: its frames (host) and Meta's tracking state, the memory bank
and object pointers (device). The tracking is Meta's ``SAM2VideoPredictor`` itself, in
PyTorch (:mod:`sam2_triton.sessions.video`); this file only translates between Triton's
tensors and :class:`VideoSessionEngine`. Triton finds it as ``<backend-directory>/sam2_video/
model.py`` (``backend: "sam2_video"``): ``scripts/serve_local.py`` lays that out for the
embedded server, ``docker/Dockerfile`` for the NGC image.

Wire contract (every input optional; Triton adds the batch dim of 1). One request may carry,
applied in this order:

* ``frames`` BYTES [-1]: encoded image files (JPEG, PNG, ...), the next frames of the video
  in order. The first request of a video (``sequence_start``) must carry at least one; all
  frames of a video have the first one's size.
* ``remove_object`` BOOL [1] with ``object_id`` INT32 [1]: remove that object.
* a prompt for ``object_id`` on frame ``frame_index`` INT32 [1] (a frame already sent):
  ``point_coords`` FP32 [-1, 2] (x, y pixels of the frame) with ``point_labels`` INT32 [-1]
  (1 foreground, 0 background; default all 1) and/or ``box`` FP32 [4] (x0, y0, x1, y1), and
  ``clear_old_points`` BOOL [1] (default true), as Meta's ``add_new_points_or_box``; or
  ``mask`` BOOL [h, w], as ``add_new_mask``. A new ``object_id`` starts a new object.
* or ``propagate`` BOOL [1]: track every object, as Meta's ``propagate_in_video``, from
  ``start_frame`` INT32 [1] (default: the earliest prompted frame), backwards with
  ``reverse`` BOOL [1], over at most ``max_frames`` INT32 [1] frames and never past the
  frames sent so far. Each response carries at most ``max_frames_per_response`` frames (fewer
  when their masks would pass ``max_response_bytes``): continue with ``start_frame`` after the
  last frame returned (before it, with ``reverse``) until the video's end.

Outputs (a request gets the ones it asks for, all when it names none): ``frame_indices``
INT32 [F] (the prompted frame, or the tracked frames), ``object_ids`` INT32 [O] (every object
of the video), ``masks`` UINT8 [F, O, H, W] (0/1 at the frame's original size),
``object_scores`` FP32 [F, O] (occlusion logits, > 0 visible), ``frame_count`` INT32 [1],
``video_size`` INT32 [2] (H, W). Requests the model refuses get an invalid-argument error
(HTTP 400) with the reason; the video is unchanged by them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Meta's propagate_in_video draws a progress bar for every call: not for a server's log
# (tqdm reads this when it is first imported).
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from sam2_triton.backend.sequence import (  # noqa: E402
    answer_batch,
    input_tensors,
    parameter,
    read_inputs,
    read_points,
    read_sequence,
    start_idle_work,
)
from sam2_triton.models import UserError, get_model_size  # noqa: E402
from sam2_triton.sessions.runtime import release_message, torch_device  # noqa: E402
from sam2_triton.sessions.video import (  # noqa: E402
    VIDEO_OUTPUTS,
    VideoLimits,
    VideoRequest,
    VideoSessionEngine,
    bound_summary,
    build_video_predictor,
    hole_filling_available,
)

_FLAGS = ("clear_old_points", "remove_object", "propagate", "reverse")
_NUMBERS = ("frame_index", "object_id", "start_frame", "max_frames")


class TritonPythonModel:
    """One ``sam2_video`` instance: its videos and its copy of Meta's video predictor."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]

        def number(key: str, default: int) -> int:
            return int(parameter(config, key, str(default)))

        defaults = VideoLimits()
        limits = VideoLimits(
            max_videos=number("max_videos", defaults.max_videos),
            idle_timeout_s=float(
                parameter(config, "video_idle_timeout_s", str(defaults.idle_timeout_s))
            ),
            max_frames=number("max_frames", defaults.max_frames),
            max_objects=number("max_objects", defaults.max_objects),
            max_frame_pixels=number("max_frame_pixels", defaults.max_frame_pixels),
            max_frame_bytes=number("max_frame_bytes", defaults.max_frame_bytes),
            max_frames_per_request=number(
                "max_frames_per_request", defaults.max_frames_per_request
            ),
            max_frames_per_response=number(
                "max_frames_per_response", defaults.max_frames_per_response
            ),
            max_response_bytes=number("max_response_bytes", defaults.max_response_bytes),
            max_points=number("max_points", defaults.max_points),
            max_mask_prompts=number("max_mask_prompts", defaults.max_mask_prompts),
            decode_threads=number("decode_threads", defaults.decode_threads),
            feature_batch=number("feature_batch", defaults.feature_batch),
            batch_objects=parameter(config, "batch_objects", "true") == "true",
            memory_release_idle_s=float(
                parameter(config, "memory_release_idle_s", str(defaults.memory_release_idle_s))
            ),
        )
        weights = (
            Path(args["model_repository"])
            / args["model_version"]
            / parameter(config, "weights", "model.pt")
        )
        kind = args.get("model_instance_kind", "CPU")
        device_id = int(args.get("model_instance_device_id", 0) or 0)
        log = pb_utils.Logger
        try:
            if not weights.is_file():
                raise UserError(
                    f"{weights} is missing (scripts/export_onnx.py copies the checkpoint there)"
                )
            device = torch_device(kind, device_id)
            size = get_model_size(parameter(config, "sam2_model_size", "base_plus"))
            precision = parameter(config, "precision", "float32")
            predictor = build_video_predictor(
                size,
                weights,
                device,
                image_size=number("image_size", 0),
                # (vos_optimized: a config of an earlier release, Meta's compile)
                torch_compile=parameter(
                    config,
                    "torch_compile",
                    "max-autotune" if parameter(config, "vos_optimized", "") == "true" else "none",
                ),
                precision=precision,
            )
            self.engine = VideoSessionEngine(
                predictor,
                device,
                limits,
                precision=precision,
                on_drop=lambda key, _v, why: log.log_verbose(f"{self.name}: video {key} {why}"),
                on_memory_release=self._log_release,
            )
            warmed = ""
            if parameter(config, "warmup", "false") == "true":
                warmed = f"; warmed up in {self.engine.warm():.1f} s"
            if self.engine.compile_error:
                log.log_warn(
                    f"{self.name}: torch.compile failed, tracking runs eager: "
                    f"{self.engine.compile_error}"
                )
        except Exception as e:  # noqa: BLE001 - any failure makes the model unavailable
            raise pb_utils.TritonModelException(f"{self.name}: {e}") from None
        # Expired videos are freed, and idle memory given back, even when no request comes.
        self.sweeper = start_idle_work(self.engine, device, limits.idle_timeout_s)
        self.max_elements = {
            "frames": limits.max_frames_per_request,
            "point_coords": 2 * limits.max_points,
            "point_labels": limits.max_points,
            "box": 4,
            "mask": limits.max_frame_pixels,
            **{name: 1 for name in _FLAGS + _NUMBERS},
        }
        holes = "" if hole_filling_available() else "; no hole filling (sam2._C is missing)"
        log.log_info(
            f"{self.name}: {kind} instance {device_id} on {device}, SAM2.1 {size.name} at "
            f"{self.engine.image_size} px, {self.engine.precision}, "
            f"{'compiled' if self.engine.compiled else 'eager'}{holes}; "
            f"{bound_summary(self.engine)}; idle timeout {limits.idle_timeout_s:g} s{warmed}"
        )

    def _log_release(self, before: int, after: int) -> None:
        pb_utils.Logger.log_info(release_message(self.name, self.engine.device, before, after))

    def execute(self, requests: list) -> list:
        return answer_batch(self.name, requests, self._read, self.engine.execute, self._outputs)

    def _read(self, request) -> VideoRequest:
        tensors = input_tensors(request)
        values = read_inputs(tensors, self.max_elements)
        session_id, start, end = read_sequence(tensors, self.name)
        points, labels = read_points(values)
        flags = {name: bool(values[name][0]) for name in _FLAGS if name in values}
        numbers = {name: int(values[name][0]) for name in _NUMBERS if name in values}
        asked = request.requested_output_names()
        return VideoRequest(
            session_id=session_id,
            start=start,
            end=end,
            frames=[bytes(f) for f in values.get("frames", ())],
            points=points,
            labels=None if labels is None else labels.astype(np.int32),
            box=None if values.get("box") is None else values["box"].astype(np.float32),
            mask=values.get("mask"),
            **flags,
            **numbers,
            outputs=frozenset(asked) if asked else frozenset(VIDEO_OUTPUTS),
        )

    def _outputs(self, answer, request: VideoRequest) -> list[tuple[str, np.ndarray]]:
        return [(n, self._output(answer, n)) for n in VIDEO_OUTPUTS if n in request.outputs]

    @staticmethod
    def _output(answer, name: str) -> np.ndarray:
        if name == "frame_count":
            return np.asarray([answer.frame_count], np.int32)
        if name == "video_size":
            return np.asarray(answer.video_size, np.int32)
        return getattr(answer, name)

    def finalize(self) -> None:
        self.sweeper.stop()
        self.engine.close()
