"""Sessions through Triton (``sam2_session``): the start from an image file, then clicks.

What the sessions issue asks to be measured, on the served model and in process:

* ``session_start``: one request that carries a JPEG file (1920x1080 by default) and starts
  a session, ends it too (``sequence_start`` and ``sequence_end``), so every call is a new
  image: the server decodes, preprocesses and encodes it. Items/s: sessions started per s.
* ``session_decode``: clicks on sessions that are already open, one session per client
  worker; each request carries only its prompt. At concurrency 1 the latency is a click's,
  client to client; at 32 the throughput is the masks/s of 32 users clicking (their clients
  in several processes: one Python process cannot make a few thousand requests a second).
  Three answers, each a case: the IoU alone (what a click costs besides its mask's bytes),
  the IoU and the mask as run lengths (``mask_rle``), the IoU and the full H x W ``masks``.
* ``session_empty``: a request of an open session with no prompt, answered with its
  ``image_size``: no network runs, nothing crosses the device. What the served path itself
  costs (client, gRPC or HTTP, Triton's sequence batcher, the Python stub's reading and
  answering): the floor under every click, and the part of the served/in-process ratio that
  no engine change can lower.

Each result records the request's size on the wire (HTTP body, JSON part included) and the
in-process baseline: the same :class:`~sam2_triton.sessions.image.ImageSessionEngine` on the
same device and ONNX files, called directly (no Triton, no network), for the served/in-process
ratio.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sam2_triton.client.session import new_session_id
from sam2_triton.client.triton import SESSION_INPUT_TYPES
from sam2_triton.model_config import SESSION, SESSION_HEADER

if TYPE_CHECKING:
    import torch

    from sam2_triton.bench.triton import TritonTarget
    from sam2_triton.sessions.image import ImageSessionEngine, SessionLimits
    from sam2_triton.sessions.torch_networks import TorchNetworks

#: Answers of a decode: what an interactive client draws.
RLE_OUTPUTS = ("iou_predictions", "mask_rle")
FULL_OUTPUTS = ("iou_predictions", "masks")
#: A decode's answer without its mask: what a click costs besides its mask's bytes (with
#: random weights a mask is speckle, hundreds of thousands of runs, where a real object's
#: outline has a few thousand; this case bounds what such a mask adds).
IOU_OUTPUTS = ("iou_predictions",)
#: The decode cases the benchmark runs, served and in process.
DECODE_OUTPUTS = (IOU_OUTPUTS, RLE_OUTPUTS, FULL_OUTPUTS)
#: ``session_empty``: a request without a prompt, and the one output it then has.
NO_PROMPT: dict[str, np.ndarray] = {}
EMPTY_OUTPUTS = ("image_size",)


def photo_jpeg(width: int = 1920, height: int = 1080, quality: int = 90) -> bytes:
    """A JPEG file of a real photo (scikit-image's ``coffee``) resized to ``width`` x
    ``height``: what a user uploads."""
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.coffee()).resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def clicks(hw: tuple[int, int], count: int = 8) -> list[dict[str, np.ndarray]]:
    """``count`` prompts of one or two points spread over an image of ``hw``."""
    h, w = hw
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        points = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h], size=(1 + i % 2, 2))
        out.append(
            {
                "point_coords": points.astype(np.float32),
                "point_labels": np.array([1, 0][: len(points)], np.int32),
            }
        )
    return out


def _tensors(module, protocol: str, inputs: dict[str, np.ndarray]) -> list:
    tensors = []
    for name, value in inputs.items():
        value = np.ascontiguousarray(value, SESSION_INPUT_TYPES[name][1])[None]
        t = module.InferInput(name, list(value.shape), SESSION_INPUT_TYPES[name][0])
        if protocol == "http":
            t.set_data_from_numpy(value, binary_data=True)
        else:
            t.set_data_from_numpy(value)
        tensors.append(t)
    return tensors


def _outputs(module, protocol: str, names: Sequence[str]) -> list:
    if protocol == "http":
        return [module.InferRequestedOutput(n, binary_data=True) for n in names]
    return [module.InferRequestedOutput(n) for n in names]


def request_bytes(inputs: dict[str, np.ndarray], outputs: Sequence[str], session_id: int) -> int:
    """Bytes of the HTTP request body tritonclient sends for one decode (JSON part and
    binary tensors), plus the affinity header line: what crosses the wire per click."""
    import tritonclient.http as httpclient

    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        _tensors(httpclient, "http", inputs),
        outputs=_outputs(httpclient, "http", outputs),
        sequence_id=session_id,
    )
    del json_size
    return len(body) + len(f"{SESSION_HEADER}: {session_id}\r\n")


def _infer(
    target, protocol: str, client, inputs: dict, outputs: Sequence[str], session_id: int, **flags
):
    """One ``sam2_session`` request of ``session_id`` (its affinity header too)."""
    module = target.module(protocol)
    header = SESSION_HEADER if protocol == "http" else SESSION_HEADER.lower()
    return client.infer(
        SESSION,
        _tensors(module, protocol, inputs),
        outputs=_outputs(module, protocol, outputs),
        sequence_id=session_id,
        headers={header: str(session_id)},
        **flags,
    )


@dataclass
class SessionClicks:
    """A ``make_call`` factory (for :func:`~sam2_triton.bench.stats.closed_loop`): each
    worker gets its own client, opens a session on ``image`` (untimed), then each call is
    one click of ``prompts`` on it, asking for ``outputs``. Plain data, so it can be sent to
    other processes (:func:`~sam2_triton.bench.stats.closed_loop_processes`)."""

    target: "TritonTarget"
    protocol: str
    image: np.ndarray  # the file's bytes as uint8
    prompts: list[dict[str, np.ndarray]]
    outputs: tuple[str, ...]
    clients: list = field(default_factory=list, repr=False)  # this process's, for closing

    def __getstate__(self) -> dict:
        return {**self.__dict__, "clients": []}  # clients stay in the process that made them

    def __call__(self, _worker: int) -> Callable[[int], object]:
        client = self.target.client(self.protocol)
        self.clients.append(client)
        session_id = new_session_id()
        _infer(
            self.target,
            self.protocol,
            client,
            {"image_bytes": self.image},
            ("image_size",),
            session_id,
            sequence_start=True,
        )
        prompts, outputs = self.prompts, self.outputs

        def call(i: int):
            return _infer(
                self.target, self.protocol, client, prompts[i % len(prompts)], outputs, session_id
            )

        return call


class SessionCaller:
    """``make_call`` factories (for :func:`~sam2_triton.bench.stats.closed_loop`) of
    session requests to a running server, one client per worker."""

    def __init__(self, target: "TritonTarget", protocol: str, image: bytes) -> None:
        self.target = target
        self.protocol = protocol
        self.image = np.frombuffer(image, np.uint8)
        self._clients: list = []
        self._clicks: list[SessionClicks] = []

    def start(self) -> Callable[[int], Callable[[int], object]]:
        """Each call: a new session on the image (start and end in one request)."""

        def make(_worker: int):
            client = self.target.client(self.protocol)
            self._clients.append(client)

            def call(_i: int):
                return _infer(
                    self.target,
                    self.protocol,
                    client,
                    {"image_bytes": self.image},
                    ("image_size",),
                    new_session_id(),
                    sequence_start=True,
                    sequence_end=True,
                )

            return call

        return make

    def decode(self, prompts: list[dict[str, np.ndarray]], outputs: Sequence[str]) -> SessionClicks:
        """Each worker opens a session (untimed), then each call is one click on it."""
        clicks = SessionClicks(self.target, self.protocol, self.image, prompts, tuple(outputs))
        self._clicks.append(clicks)
        return clicks

    def close(self) -> None:
        """Close the clients (the sessions they opened expire on the server)."""
        for client in self._clients + [c for clicks in self._clicks for c in clicks.clients]:
            client.close()
        self._clients.clear()
        self._clicks.clear()


def instance_engine(
    device: "torch.device",
    repository=None,
    networks: "TorchNetworks | None" = None,
    limits: "SessionLimits | None" = None,
) -> "ImageSessionEngine":
    """A session engine as a ``sam2_session`` GPU instance of the default config makes it
    (``limits``, default :class:`~sam2_triton.sessions.image.SessionLimits`; the config's
    decode buckets), on ``repository``'s exported graphs as the servers choose them on
    ``device``, or on the PyTorch ``networks`` (the repository is then not read): what the
    in-process measurements of ``scripts/gpu`` load. Not warmed up. A GPU becomes the
    process's current device, as an instance's does."""
    from sam2_triton.bench.profile import graph_paths
    from sam2_triton.model_config import SessionServing
    from sam2_triton.sessions.image import ImageSessionEngine, SessionLimits
    from sam2_triton.sessions.runtime import bucket_sizes, cuda_index, torch_device

    if device.type == "cuda":
        device = torch_device("GPU", cuda_index(device))
    paths = graph_paths(repository, device) if repository is not None else {}
    return ImageSessionEngine(
        paths.get("encoder"),
        paths.get("decoder"),
        device,
        limits or SessionLimits(),
        decode_buckets=bucket_sizes(SessionServing.max_batch_size),
        torch_networks=networks,
    )


class InProcessSessions:
    """The baseline: :class:`ImageSessionEngine` called directly, on the files and device the
    server uses (the encoder's fused graph on a GPU, as the server loads it) with the
    server's default of CUDA graphs for single decodes; or ``engine``, made elsewhere."""

    def __init__(self, repository, device: str, engine: "ImageSessionEngine | None" = None) -> None:
        if engine is not None:  # an engine made elsewhere (scripts/gpu/session_runtimes.py)
            self.engine = engine
        else:
            self.engine = self._served_engine(repository, device)
        self._ids = itertools.count(1)
        self._session: int | None = None  # one open session, shared by the decode cases
        self._batch_sessions: dict[int, list[int]] = {}  # k -> k open sessions, likewise

    @staticmethod
    def _served_engine(repository, device: str) -> "ImageSessionEngine":
        """The engine as the server's ``sam2_session`` config makes it on ``device``."""
        import torch

        from sam2_triton.export import CUDA_MODEL_FILENAME
        from sam2_triton.model_config import read_config
        from sam2_triton.sessions.image import ImageSessionEngine, SessionLimits
        from sam2_triton.sessions.torch_networks import TorchNetworks

        encoder = repository / "sam2_encoder" / "1" / "model.onnx"
        if device == "cuda" and encoder.with_name(CUDA_MODEL_FILENAME).is_file():
            encoder = encoder.with_name(CUDA_MODEL_FILENAME)
        # The runtime the server's config asks for (the GPU config on a GPU).
        config = repository / "sam2_session" / "config.pbtxt"
        if device != "cuda":
            config = config.parent / "configs" / "cpu.pbtxt"
        networks = None
        if config.is_file():
            parameters = read_config(config).parameters
            networks = TorchNetworks.from_parameters(
                lambda k, d: (parameters[k].string_value if k in parameters else "") or d,
                repository,
            )
        engine = ImageSessionEngine(
            encoder,
            repository / "sam2_decoder" / "1" / "model.onnx",
            torch.device(device),
            SessionLimits(max_sessions=64),
            torch_networks=networks,
        )
        if networks is not None and device == "cuda":
            engine.warm()  # as the server's instances: compiled and graphs captured
        return engine

    def start(self, image: bytes) -> Callable[[int], Callable[[int], object]]:
        from sam2_triton.sessions.image import SessionRequest

        def make(_worker: int):
            def call(_i: int):
                key = next(self._ids)
                (answer,) = self.engine.execute(
                    [
                        SessionRequest(
                            key,
                            start=True,
                            end=True,
                            image_bytes=image,
                            outputs=frozenset({"image_size"}),
                        )
                    ]
                )
                return answer

            return call

        return make

    def decode(
        self, image: bytes, prompts: list[dict[str, np.ndarray]], outputs: Sequence[str]
    ) -> Callable[[int], Callable[[int], object]]:
        from sam2_triton.sessions.image import SessionRequest

        def make(_worker: int):
            if self._session is None:
                self._session = next(self._ids)
                self.engine.execute([SessionRequest(self._session, start=True, image_bytes=image)])
            key = self._session
            requests = [
                SessionRequest(
                    key,
                    points=p.get("point_coords"),
                    labels=p.get("point_labels"),
                    outputs=frozenset(outputs),
                )
                for p in prompts
            ]

            def call(i: int):
                (answer,) = self.engine.execute([requests[i % len(requests)]])
                if isinstance(answer, Exception):
                    raise answer
                return answer

            return call

        return make

    def decode_batch(
        self, image: bytes, prompts: list[dict[str, np.ndarray]], outputs: Sequence[str], k: int
    ) -> Callable[[int], Callable[[int], object]]:
        """Each call: one click on each of ``k`` open sessions, in one ``execute`` (as the
        sequence batcher hands an instance a batch of ``k`` sessions' requests). The sessions
        click different prompts of ``prompts`` (one and two points: two decoder runs per
        call), as the served benchmark's users do."""
        from sam2_triton.sessions.image import SessionRequest

        def make(_worker: int):
            keys = self._batch_sessions.get(k)
            if keys is None:  # opened once, shared by the cases (each start is an encode)
                keys = self._batch_sessions[k] = [next(self._ids) for _ in range(k)]
                self.engine.execute(
                    [SessionRequest(key, start=True, image_bytes=image) for key in keys]
                )
            batches = [
                [
                    SessionRequest(
                        key,
                        points=prompts[(i + j) % len(prompts)]["point_coords"],
                        labels=prompts[(i + j) % len(prompts)]["point_labels"],
                        outputs=frozenset(outputs),
                    )
                    for j, key in enumerate(keys)
                ]
                for i in range(len(prompts))
            ]

            def call(i: int):
                answers = self.engine.execute(batches[i % len(batches)])
                for answer in answers:
                    if isinstance(answer, Exception):
                        raise answer
                return answers

            return call

        return make

    def stage_profile(
        self, make: Callable[[int], Callable[[int], object]], calls: int, warm: bool = True
    ) -> dict:
        """Milliseconds per call of each stage of the engine's work (the engine's
        :class:`~sam2_triton.sessions.runtime.StageClock`, a synchronisation after each stage),
        over ``calls`` calls, after one untimed call if ``warm`` (not needed where ``make``'s
        calls were just timed)."""
        from sam2_triton.sessions.runtime import StageClock

        call = make(0)
        if warm:
            call(0)
        self.engine.clock = StageClock(self.engine.device)
        try:
            for i in range(calls):
                call(i)
            return self.engine.clock.mean_ms(calls)
        finally:
            self.engine.clock = None

    def jpeg_agreement(
        self, image: bytes, prompts: list[dict[str, np.ndarray]]
    ) -> dict[str, float] | None:
        """On a GPU, how far nvJPEG's decode of ``image`` is from libjpeg-turbo's (Pillow's
        pixels), and how far the masks of ``prompts`` on the two are: None on a CPU."""
        import torch

        from sam2_triton.sessions.image import SessionRequest
        from sam2_triton.sessions.jpeg import JpegDecoder

        engine = self.engine
        if engine.device.type != "cuda":
            return None
        gpu, cpu = JpegDecoder(engine.device, on_gpu=True), JpegDecoder(engine.device, False)
        a, b = gpu.decode(image), cpu.decode(image)
        diff = (a.to(torch.int16) - b.to(torch.int16)).abs()
        keys = []
        for decoder in (gpu, cpu):
            engine.jpeg = decoder
            keys.append(next(self._ids))
            engine.execute([SessionRequest(keys[-1], start=True, image_bytes=image)])
        engine.jpeg = gpu
        differ, pixels = 0, 0
        for p in prompts:
            masks = [
                engine.execute(
                    [
                        SessionRequest(
                            key,
                            points=p["point_coords"],
                            labels=p["point_labels"],
                            outputs=frozenset({"mask_rle", "masks"}),
                        )
                    ]
                )[0].masks[0]
                for key in keys
            ]
            differ += int((masks[0] != masks[1]).sum())
            pixels += masks[0].size
        return {
            "pixels_max_abs_diff": int(diff.max()),
            "pixels_mean_abs_diff": round(float(diff.float().mean()), 4),
            "pixels_differing": round(float((diff > 0).float().mean()), 4),
            "mask_pixels_differing": round(differ / max(pixels, 1), 6),
        }

    def close(self) -> None:
        self.engine.close()
