"""The transport: ``sam2_encoder`` and ``sam2_decoder`` on a Triton server, via tritonclient.

HTTP (binary tensor extension) or gRPC. With ``shared_memory=True`` (client and server on
one host) the image and the encoder's 16 MiB of feature maps stay in POSIX shared memory
regions registered with the server: encode requests write their outputs there and decode
requests point the decoder's inputs at them, so only prompts and masks cross the socket.

Every failure a user can act on (server down, model not loaded, request rejected) becomes a
one-line :class:`UserError`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from sam2_triton.export import ENCODER_OUTPUTS, TENSOR_SHAPES
from sam2_triton.model_config import (
    DECODER,
    DECODER_PROMPTS,
    ENCODER,
    MAX_POINTS,
    MAX_PROMPTS,
    SESSION_HEADER,
)
from sam2_triton.models import UserError

T = TypeVar("T")

PROTOCOLS = ("http", "grpc")
_NAMES = {"http": "HTTP", "grpc": "gRPC"}
_URL = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")
_counter = itertools.count()


#: Wire data types of sam2_session's and sam2_video's inputs (Triton's name, numpy's).
SESSION_INPUT_TYPES: dict[str, tuple[str, type]] = {
    "image_bytes": ("UINT8", np.uint8),
    "point_coords": ("FP32", np.float32),
    "point_labels": ("INT32", np.int32),
    "box": ("FP32", np.float32),
    "multimask_output": ("BOOL", np.bool_),
    "use_previous_mask": ("BOOL", np.bool_),
    "mask_input": ("FP32", np.float32),
    "frames": ("BYTES", np.object_),
    "frame_index": ("INT32", np.int32),
    "object_id": ("INT32", np.int32),
    "mask": ("BOOL", np.bool_),
    "clear_old_points": ("BOOL", np.bool_),
    "remove_object": ("BOOL", np.bool_),
    "propagate": ("BOOL", np.bool_),
    "start_frame": ("INT32", np.int32),
    "max_frames": ("INT32", np.int32),
    "reverse": ("BOOL", np.bool_),
}


def parse_url(url: str) -> str:
    """Check a ``HOST:PORT`` address (no scheme) and return it; :class:`UserError` if malformed."""
    url = url.strip()
    m = _URL.match(url)
    if not m or not 0 < int(m.group(2)) < 65536:
        hint = " (without http:// or grpc://)" if "://" in url else ""
        raise UserError(f"server address must be HOST:PORT{hint}, got {url!r}")
    return url


def _message(e: BaseException) -> str:
    """One line describing a tritonclient / socket error."""
    text = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
    text = (text or type(e).__name__).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _byte_size(shape: Sequence[int]) -> int:
    return int(np.prod(shape)) * 4


def _batched(name: str) -> tuple[int, ...]:
    return (1, *TENSOR_SHAPES[name])


class SharedRegion:
    """One system shared memory region, created here and registered with the server."""

    def __init__(self, backend: TritonBackend, purpose: str, byte_size: int) -> None:
        import tritonclient.utils.shared_memory as shm

        # Unique on the server even for clients in other PID namespaces sharing /dev/shm.
        self.name = f"sam2_{os.getpid()}_{uuid.uuid4().hex[:8]}_{next(_counter)}_{purpose}"
        self.key = f"/{self.name}"
        self.byte_size = byte_size
        self._backend = backend
        self.handle = shm.create_shared_memory_region(self.name, self.key, byte_size)
        try:
            backend._call(
                f"registering shared memory {self.name}",
                backend.client.register_system_shared_memory,
                self.name,
                self.key,
                byte_size,
            )
        except UserError as e:
            shm.destroy_shared_memory_region(self.handle)
            self.handle = None
            raise UserError(
                f"{e} (shared memory needs the client and the server on one host, sharing "
                "/dev/shm)"
            ) from None

    def destroy(self) -> None:
        """Unregister from the server (best effort) and free the region."""
        import tritonclient.utils.shared_memory as shm

        if self.handle is None:
            return
        # The server may be gone already; the region is ours to free anyway.
        with contextlib.suppress(Exception):
            self._backend.client.unregister_system_shared_memory(self.name)
        shm.destroy_shared_memory_region(self.handle)
        self.handle = None


class SharedFeatures:
    """The three encoder outputs of one image inside a registered shared memory region."""

    def __init__(self, backend: TritonBackend) -> None:
        self.layout: dict[str, tuple[int, tuple[int, ...]]] = {}
        offset = 0
        for name in ENCODER_OUTPUTS:
            shape = _batched(name)
            self.layout[name] = (offset, shape)
            offset += _byte_size(shape)
        self.region = SharedRegion(backend, "features", offset)

    def numpy(self) -> dict[str, np.ndarray]:
        """Copies of the feature maps (``[1, C, S, S]`` float32)."""
        import tritonclient.utils.shared_memory as shm

        if self.region.handle is None:
            raise UserError("this embedding's shared memory was freed (the client was closed)")
        return {
            name: np.array(shm.get_contents_as_numpy(self.region.handle, np.float32, shape, off))
            for name, (off, shape) in self.layout.items()
        }


class _Transient(Exception):
    """A failure that may pass: the server restarting, unreachable for a moment, or full."""


class _RegionsLost(Exception):
    """The server does not know this client's shared-memory regions (it restarted)."""


class SessionLost(UserError):
    """The server holds no image for this session (expired, evicted, never started there,
    or the server restarted): start it again with the image."""


#: How the server says it has no such session: Triton's sequence batcher for a sequence it
#: does not know, sam2_session for one whose image it dropped, sam2_video for a video.
_SESSION_LOST = (
    "must specify the START flag",
    "has no image on this server",
    "has no frames on this server",
)


class TritonBackend:
    """``sam2_encoder`` + ``sam2_decoder`` on the Triton server at ``url`` (``HOST:PORT``).

    A decode of K > 1 prompt sets against one image goes to ``prompt_batch_model``
    (``sam2_decoder_prompts``: the features once, K prompt rows); one prompt set goes to
    ``sam2_decoder``, whose dynamic batcher merges it with other clients' requests.
    Nothing is contacted until the first call. ``timeout_s`` bounds each request.
    """

    def __init__(
        self,
        url: str = "localhost:8000",
        protocol: str = "http",
        *,
        shared_memory: bool = False,
        timeout_s: float = 120.0,
        encoder_model: str = ENCODER,
        decoder_model: str = DECODER,
        prompt_batch_model: str = DECODER_PROMPTS,
        verbose: bool = False,
        retries: int = 5,
        retry_backoff_s: float = 0.5,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise UserError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        self.url = parse_url(url)
        self.protocol = protocol
        self.shared_memory = shared_memory
        self.timeout_s = timeout_s
        self.encoder_model = encoder_model
        self.decoder_model = decoder_model
        self.prompt_batch_model = prompt_batch_model
        self.max_points = MAX_POINTS
        self.max_prompts = MAX_PROMPTS
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self._reached = False  # retries only once this client has talked to the server
        self._lock = threading.RLock()  # the shared-memory bookkeeping below
        self._features: list[SharedFeatures] = []
        self._image_region: SharedRegion | None = None
        self._verbose = verbose
        # tritonclient's HTTP client runs on gevent, whose loop belongs to the thread that
        # made it: each thread gets its own (see `client`). gRPC's client is thread-safe.
        self._local = threading.local()
        self._clients: list = []
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
        self.module = module
        self._closed = False

    @property
    def client(self):
        """This thread's tritonclient ``InferenceServerClient`` (made on first use)."""
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc" and self._clients:
                client = self._clients[0]
            else:
                with self._lock:
                    if self.protocol == "grpc" and self._clients:
                        client = self._clients[0]
                    elif self.protocol == "http":
                        client = self.module.InferenceServerClient(
                            self.url,
                            verbose=self._verbose,
                            connection_timeout=min(self.timeout_s, 10.0),
                            network_timeout=self.timeout_s,
                        )
                    else:
                        client = self.module.InferenceServerClient(self.url, verbose=self._verbose)
                    if client not in self._clients:
                        self._clients.append(client)
            self._local.client = client
        return client

    # --- errors ------------------------------------------------------------------------------

    def _call(
        self,
        action: str,
        fn: Callable[..., T],
        *args: Any,
        retry: bool = True,
        **kwargs: Any,
    ) -> T:
        """``fn(*args, **kwargs)``; tritonclient and socket errors become one-line UserErrors.

        Inference without side effects is idempotent, so once the server has been reached, a
        transient failure (server restarting, unreachable, queue full) is retried up to
        ``retries`` times with exponential backoff from ``retry_backoff_s`` (capped at 4 s)
        before the error is raised. A server that was never reached fails at once: that is a
        wrong address, not a restart. Timeouts are not retried: the server may still be
        working on the request. ``retry=False`` for a call that changes state on the server
        (a video request: repeating it would append its frames twice).
        """
        delay, start = self.retry_backoff_s, time.monotonic()
        reregistered = False
        for attempt in range(self.retries + 1):
            try:
                result = self._call_once(action, fn, *args, **kwargs)
                self._reached = True
                return result
            except _RegionsLost as e:
                # The server restarted and forgot our regions; their contents (the image,
                # the features) are still ours: register them again and repeat the call.
                if reregistered:
                    raise UserError(str(e)) from None
                self._register_again()
                reregistered = True
            except _Transient as e:
                if not self._reached or not retry or attempt == self.retries:
                    gave_up = (
                        f" (gave up after {attempt} retries in {time.monotonic() - start:.1f} s)"
                        if attempt
                        else ""
                    )
                    raise UserError(f"{e}{gave_up}") from None
                time.sleep(delay)
                delay = min(2 * delay, 4.0)
        raise AssertionError("unreachable")

    def _call_once(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from tritonclient.utils import InferenceServerException

        if self._closed:
            raise UserError("the client is closed")
        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.timeout_s)
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as e:
            status = str(e.status() or "")
            if self.shared_memory and "Unable to find shared memory region" in _message(e):
                raise _RegionsLost(f"{action} failed on {self.url}: {_message(e)}") from None
            if any(text in _message(e) for text in _SESSION_LOST):
                raise SessionLost(f"{action} failed on {self.url}: {_message(e)}") from None
            if "DEADLINE_EXCEEDED" in status:
                raise UserError(self._timed_out(action)) from None
            if "UNAVAILABLE" in status:
                raise _Transient(self._unreachable(_message(e))) from None
            if "exceeds maximum queue size" in _message(e):
                raise _Transient(f"{action} refused by {self.url}: {_message(e)}") from None
            raise UserError(f"{action} failed on {self.url}: {_message(e)}") from None
        except TimeoutError:
            raise UserError(self._timed_out(action)) from None
        except OSError as e:
            raise _Transient(self._unreachable(_message(e))) from None
        except Exception as e:
            # geventhttpclient's timeouts and protocol errors have no common base class.
            module = type(e).__module__ or ""
            name = type(e).__name__
            if module.startswith("gevent") and "Timeout" in name:
                raise UserError(self._timed_out(action)) from None
            if name == "HTTPParseError":
                # Whatever answered does not speak HTTP/1.1: usually Triton's gRPC port.
                raise _Transient(
                    f"cannot talk HTTP to {self.url}: the answer is not HTTP (is this Triton's "
                    "gRPC port? use its HTTP port, usually 8000, or protocol grpc)"
                ) from None
            if name == "JSONDecodeError":
                # An HTTP server that is not Triton's API, e.g. its metrics port, which
                # answers every path with an empty 200.
                raise UserError(
                    f"{self.url} answered the {action} request with something that is not "
                    f"Triton's JSON ({_message(e)}): is this Triton's HTTP port? (the "
                    "metrics port, usually 8002, answers every path with an empty page)"
                ) from None
            if module.startswith(("gevent", "geventhttpclient", "http.client")):
                raise _Transient(self._unreachable(_message(e))) from None
            raise

    def _timed_out(self, action: str) -> str:
        return (
            f"{action} on {self.url} timed out after {self.timeout_s:g} s "
            "(raise timeout_s, or --timeout)"
        )

    def _unreachable(self, reason: str) -> str:
        return (
            f"cannot reach the Triton server at {self.url} over {_NAMES[self.protocol]}: "
            f"{reason} (is it running? is this its {_NAMES[self.protocol]} port?)"
        )

    # --- readiness ---------------------------------------------------------------------------

    def check_ready(self, models: Sequence[str] | None = None) -> None:
        """:class:`UserError` unless the server and ``models`` (default: the encoder and the
        decoder) are ready; reads ``max_points`` from the last one's config."""
        models = list(models or (self.encoder_model, self.decoder_model))
        if not self._call("server readiness check", self.client.is_server_live):
            raise UserError(f"the Triton server at {self.url} is not live")
        for model in models:
            if not self._call(f"readiness check of {model}", self.client.is_model_ready, model):
                raise UserError(f"model {model} is not ready on {self.url}: {self._why(model)}")
        self._read_max_points(models[-1])

    def _why(self, model: str) -> str:
        """The repository index's state and reason for ``model``."""
        try:
            if self.protocol == "grpc":
                index = self._call("index", self.client.get_model_repository_index, as_json=True)
                index = index.get("models", [])
            else:
                index = self._call("index", self.client.get_model_repository_index)
        except UserError:
            return "unknown state"
        for entry in index:
            if entry.get("name") == model:
                state = entry.get("state") or "not loaded"
                reason = entry.get("reason") or ""
                return f"{state}{': ' + reason.splitlines()[0] if reason else ''}"
        return "no such model in the server's repository"

    def _read_max_points(self, model: str) -> None:
        kw = {"as_json": True} if self.protocol == "grpc" else {}
        config = self._call("config", self.client.get_model_config, model, **kw)
        config = config.get("config", config)
        value = config.get("parameters", {}).get("max_points", {})
        value = value.get("string_value", value.get("stringValue"))
        if value and str(value).isdigit():
            self.max_points = int(value)

    def wait_until_ready(
        self,
        timeout: float = 60.0,
        interval: float = 0.5,
        models: Sequence[str] | None = None,
    ) -> float:
        """Poll until :meth:`check_ready` passes; seconds waited, or UserError."""
        start = time.monotonic()
        while True:
            try:
                self.check_ready(models)
                return time.monotonic() - start
            except UserError as e:
                if time.monotonic() - start + interval > timeout:
                    raise UserError(f"{e} (waited {timeout:g} s)") from None
            time.sleep(interval)

    # --- inference ---------------------------------------------------------------------------

    def _input(self, name: str, value: np.ndarray):
        t = self.module.InferInput(name, list(value.shape), "FP32")
        value = np.ascontiguousarray(value, np.float32)
        if self.protocol == "http":
            t.set_data_from_numpy(value, binary_data=True)
        else:
            t.set_data_from_numpy(value)
        return t

    def _output(self, name: str):
        if self.protocol == "http":
            return self.module.InferRequestedOutput(name, binary_data=True)
        return self.module.InferRequestedOutput(name)

    def encode(self, image: np.ndarray) -> dict[str, np.ndarray] | SharedFeatures:
        """``image`` ``[1, 3, 1024, 1024]`` float32 → the three feature maps (or their region)."""
        if not self.shared_memory:
            result = self._call(
                f"inference of {self.encoder_model}",
                self.client.infer,
                self.encoder_model,
                [self._input("image", image)],
                outputs=[self._output(n) for n in ENCODER_OUTPUTS],
            )
            return {n: result.as_numpy(n) for n in ENCODER_OUTPUTS}

        import tritonclient.utils.shared_memory as shm

        with self._lock:
            if self._image_region is None:
                self._image_region = SharedRegion(self, "image", _byte_size(_batched("image")))
            image_region = self._image_region
            features = SharedFeatures(self)
            try:
                shm.set_shared_memory_region(
                    image_region.handle, [np.ascontiguousarray(image, np.float32)]
                )
                inp = self.module.InferInput("image", list(image.shape), "FP32")
                inp.set_shared_memory(image_region.name, image_region.byte_size)
                outputs = []
                for name, (offset, shape) in features.layout.items():
                    out = self._output(name)
                    out.set_shared_memory(features.region.name, _byte_size(shape), offset)
                    outputs.append(out)
                self._call(
                    f"inference of {self.encoder_model}",
                    self.client.infer,
                    self.encoder_model,
                    [inp],
                    outputs=outputs,
                )
            except BaseException:
                features.region.destroy()
                raise
            self._features.append(features)
        return features

    def decode(
        self,
        features: Mapping[str, np.ndarray] | SharedFeatures,
        prompts: Mapping[str, np.ndarray],
        outputs: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Decoder ``outputs`` for ``features`` (one image) + ``prompts`` (``[K, ...]``); only
        ``outputs`` are sent back."""
        k = len(prompts["point_coords"])
        model = self.decoder_model if k == 1 else self.prompt_batch_model
        inputs = []
        if isinstance(features, SharedFeatures):
            if features.region.handle is None:
                raise UserError("this embedding's shared memory was freed (the client was closed)")
            for name, (offset, shape) in features.layout.items():
                t = self.module.InferInput(name, list(shape), "FP32")
                t.set_shared_memory(features.region.name, _byte_size(shape), offset)
                inputs.append(t)
        else:
            inputs += [self._input(name, features[name]) for name in ENCODER_OUTPUTS]
        inputs += [self._input(name, value) for name, value in prompts.items()]
        result = self._call(
            f"inference of {model}",
            self.client.infer,
            model,
            inputs,
            outputs=[self._output(n) for n in outputs],
        )
        return {n: result.as_numpy(n) for n in outputs}

    # --- sessions ----------------------------------------------------------------------------

    def infer_session(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        session_id: int,
        start: bool = False,
        end: bool = False,
        retry: bool = True,
    ) -> dict[str, np.ndarray]:
        """One request of session ``session_id`` to a stateful ``model`` (``sam2_session``,
        ``sam2_video``); ``retry=False`` for a request that must not be repeated.

        ``inputs`` map contract names to arrays without Triton's batch dim (their data types
        are the contract's); the request carries the session's affinity header. Raises
        :class:`SessionLost` when the server has no image for the session.
        """
        tensors = []
        for name, value in inputs.items():
            value = np.ascontiguousarray(value, SESSION_INPUT_TYPES[name][1])[None]
            t = self.module.InferInput(name, list(value.shape), SESSION_INPUT_TYPES[name][0])
            if self.protocol == "http":
                t.set_data_from_numpy(value, binary_data=True)
            else:
                t.set_data_from_numpy(value)
            tensors.append(t)
        header = SESSION_HEADER if self.protocol == "http" else SESSION_HEADER.lower()
        result = self._call(
            f"request of session {session_id} to {model}",
            self.client.infer,
            model,
            tensors,
            outputs=[self._output(n) for n in outputs],
            sequence_id=session_id,
            sequence_start=start,
            sequence_end=end,
            headers={header: str(session_id)},
            retry=retry,
        )
        return {n: result.as_numpy(n)[0] for n in outputs}

    # --- clean-up ----------------------------------------------------------------------------

    def release(
        self, features: Mapping[str, np.ndarray] | SharedFeatures, keep: bool
    ) -> dict[str, np.ndarray] | None:
        """Free an evicted embedding's shared memory; with ``keep``, return array copies."""
        if not isinstance(features, SharedFeatures):
            return None
        with self._lock:
            copies = features.numpy() if keep and features.region.handle is not None else None
            features.region.destroy()
            if features in self._features:
                self._features.remove(features)
        return copies

    def _register_again(self) -> None:
        """Register every live region again (after a server restart)."""
        with self._lock:
            regions = [f.region for f in self._features]
            if self._image_region is not None:
                regions.append(self._image_region)
            for region in regions:
                if region.handle is not None:
                    with contextlib.suppress(Exception):  # a stale registration is harmless
                        self.client.unregister_system_shared_memory(region.name)
                    self._call_once(
                        f"registering shared memory {region.name} again",
                        self.client.register_system_shared_memory,
                        region.name,
                        region.key,
                        region.byte_size,
                    )

    def shared_memory_regions(self) -> list[str]:
        """Names of the regions this client has registered now."""
        regions = [f.region for f in self._features]
        if self._image_region is not None:
            regions.append(self._image_region)
        return [r.name for r in regions if r.handle is not None]

    def close(self) -> None:
        """Unregister and free all shared memory, close the connection. Idempotent."""
        if self._closed:
            return
        with self._lock:
            for features in self._features:
                features.region.destroy()
            self._features.clear()
            if self._image_region is not None:
                self._image_region.destroy()
                self._image_region = None
            self._closed = True
            for client in self._clients:
                with contextlib.suppress(Exception):  # a dead connection must not mask errors
                    client.close()
            self._clients.clear()
