"""What the sequence-batched Python-based backends (``sam2_session``, ``sam2_video``) share.

Reading the config's parameters, and a request: its inputs, each checked against a limit from
its declared shape before any array is made of it; the sequence batcher's control inputs
(which session, whether the request starts or ends it); points with their labels. Answering a
batch: the engine's answer or error for each request, a one-line ``INVALID_ARG`` (HTTP 400)
for a request the model cannot serve and ``INTERNAL`` for a failure of its own. Imported inside
Triton's stub only.

Tensors cross between the stub and numpy through DLPack (torch). Why not the stub's
``Tensor.as_numpy()`` and ``Tensor(name, array)``: a stub built against numpy 1.x (the
embedded tritonserver's, from nvidia-pytriton) misreads numpy 2's type descriptors. On the
GPU machine (numpy 2.5) it scrambled 1-byte inputs (``image_bytes``)
and crashed the stub on 1-byte outputs. DLPack hands the buffer over with its type and shape
and no numpy in between. Only string (BYTES) tensors still go through ``as_numpy``: DLPack has
no type for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np

from sam2_triton.sessions.image import RequestError
from sam2_triton.sessions.runtime import make_current
from sam2_triton.sessions.store import Sweeper

#: The control inputs the sequence batcher fills in (see model_config's sequence configs).
START, END, CORRID = "START", "END", "CORRID"


def parameter(config: dict, key: str, default: str) -> str:
    """A ``parameters`` entry of the model's config (as ``initialize`` gets it), or
    ``default`` where the config leaves it out or empty."""
    return config.get("parameters", {}).get(key, {}).get("string_value", "") or default


def to_numpy(tensor) -> np.ndarray:
    """A request tensor (``pb_utils.Tensor``) as a numpy array."""
    import torch

    try:
        return torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).numpy()
    except Exception:  # noqa: BLE001 - BYTES (the stub raises its own type), or a type torch lacks
        return tensor.as_numpy()


def from_numpy(name: str, value: np.ndarray):
    """An output tensor (``pb_utils.Tensor``) of ``value``."""
    import torch
    import triton_python_backend_utils as pb_utils

    array = np.ascontiguousarray(value)
    if array.size == 0 or array.dtype == np.object_:  # DLPack: no strings, and an empty
        return pb_utils.Tensor(name, array)  # tensor counts as non-contiguous
    if not array.flags.writeable:
        array = array.copy()
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(torch.from_numpy(array)))


def input_tensors(request) -> dict[str, object]:
    """A request's input tensors (``pb_utils.Tensor``) by name, the sequence batcher's
    controls among them: one pass over the request (the stub's ``get_input_tensor_by_name``
    lists every input again at each call)."""
    return {tensor.name(): tensor for tensor in request.inputs()}


def read_inputs(tensors: dict[str, object], max_elements: dict[str, int]) -> dict[str, np.ndarray]:
    """The inputs named in ``max_elements`` that a request carries (``tensors``, as
    :func:`input_tensors` gives them), without Triton's batch dim; each refused
    (:class:`RequestError`) from its declared shape when it holds more values than its
    limit, before any array is made of it."""
    values = {}
    for name, limit in max_elements.items():
        tensor = tensors.get(name)
        if tensor is None:
            continue
        count = math.prod(int(d) for d in tensor.shape())
        if count > limit:
            raise RequestError(f"{name} has {count} values; at most {limit} are accepted")
        values[name] = to_numpy(tensor)[0]
    return values


def read_sequence(tensors: dict[str, object], model: str) -> tuple[int, bool, bool]:
    """``(sequence id, starts, ends)`` of a request (``tensors``, as :func:`input_tensors`
    gives them), from the sequence batcher's controls."""
    if tensors.get(CORRID) is None:
        raise RequestError(f"{model} needs a sequence_id (one per session)")

    def first(name: str):
        return to_numpy(tensors[name]).reshape(-1)[0] if tensors.get(name) is not None else 0

    return int(first(CORRID)), bool(first(START)), bool(first(END))


def read_points(values: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``point_coords`` ``[P, 2]`` and ``point_labels`` ``[P]`` (None where absent or empty),
    checked to belong together."""
    points, labels = values.get("point_coords"), values.get("point_labels")
    if labels is not None and points is None:
        raise RequestError("point_labels given without point_coords")
    if labels is not None and len(labels) != len(points):
        raise RequestError(
            f"{len(labels)} point_labels for {len(points)} point_coords: one label per point"
        )
    if points is None or not len(points):
        return None, None
    return points.astype(np.float32), None if labels is None or not len(labels) else labels


def error_response(message: str, internal: bool = False):
    """A response carrying an error: ``INVALID_ARG`` (HTTP 400) or ``INTERNAL`` (500)."""
    import triton_python_backend_utils as pb_utils

    code = pb_utils.TritonError.INTERNAL if internal else pb_utils.TritonError.INVALID_ARG
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def answer_batch(
    model: str,
    requests: Sequence,
    read: Callable,
    execute: Callable[[list], list],
    outputs: Callable[[object, object], list[tuple[str, np.ndarray]]],
    stage: Callable[[str], AbstractContextManager] | None = None,
) -> list:
    """One response per request: ``read(request)`` each (a :class:`RequestError` answers only
    its request), ``execute`` the requests read, and each answer's ``outputs(answer, read
    request)`` as output tensors. An exception of ``execute`` answers every request of the
    batch with a 500; the model keeps serving. ``stage(name)``, if given, times the reading
    (``"backend read"``) and the answering (``"backend respond"``)."""

    stage = stage or (lambda _name: nullcontext())
    responses: list = [None] * len(requests)
    parsed = []
    with stage("backend read"):
        for i, request in enumerate(requests):
            try:
                parsed.append((i, read(request)))
            except RequestError as e:
                responses[i] = error_response(str(e))
    try:
        answers = execute([r for _, r in parsed])
    except Exception as e:  # noqa: BLE001 - report, keep serving
        answers = [e] * len(parsed)
    with stage("backend respond"):
        _respond(model, parsed, answers, outputs, responses)
    return responses


def _respond(model: str, parsed: list, answers: list, outputs: Callable, responses: list) -> None:
    import triton_python_backend_utils as pb_utils

    for (i, read_request), answer in zip(parsed, answers):
        if isinstance(answer, RequestError):
            responses[i] = error_response(str(answer))
        elif isinstance(answer, Exception):
            responses[i] = error_response(f"{model} failed: {answer}", internal=True)
        else:
            tensors = [from_numpy(n, value[None]) for n, value in outputs(answer, read_request)]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)


def start_idle_work(engine, device, idle_timeout_s: float) -> Sweeper:
    """Start what an instance's ``engine`` (a session or video engine) does with no request,
    each on a daemon thread whose current device is the instance's ``device``: the sweeper,
    which drops expired sessions or videos every min(30 s, a quarter of ``idle_timeout_s``)
    (their device memory freed), and the engine's idle release, if it has one. Returns the
    sweeper, for ``finalize`` to stop (the engine's ``close`` stops the release)."""
    sweeper = Sweeper(
        engine.store, min(30.0, idle_timeout_s / 4), setup=lambda: make_current(device)
    ).start()
    if engine.idle_release is not None:
        engine.idle_release.start()
    return sweeper
