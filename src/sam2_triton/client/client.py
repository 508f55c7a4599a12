"""``Sam2Client``: SAM2.1 segmentation from a Triton server, as Meta's predictor does it.

>>> from sam2_triton.client import Sam2Client, load_image
>>> with Sam2Client("localhost:8000") as client:          # doctest: +SKIP
...     with client.session("photo.jpg") as session:      # the server keeps the image
...         pred = session.predict(points=[[500, 375]])   # then only prompts travel
>>> with Sam2Client("localhost:8000") as client:          # doctest: +SKIP
...     with client.video_session() as video:              # the server tracks a video
...         video.add_frames(frame_paths)
...         video.add_prompt(0, object_id=1, points=[[500, 375]])
...         masks = [frame.masks for frame in video.propagate()]
>>> with Sam2Client("localhost:8000") as client:          # doctest: +SKIP
...     client.wait_until_ready(timeout=60)
...     embedding = client.encode_image(load_image("photo.jpg"))
...     pred = client.decode(embedding, points=[[500, 375]], labels=[1])
...     pred.masks.shape                                     # (1, H, W) bool
...     refined = client.decode(embedding, points=[[500, 375], [300, 200]], labels=[1, 0],
...                             mask_input=pred.low_res_logits[0])
...     many = client.decode_batch(embedding, [{"points": [[x, 100]]} for x in range(0, 500, 50)])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sam2_triton.client.pipeline import Sam2Pipeline
from sam2_triton.client.session import Sam2Session
from sam2_triton.client.transforms import Sam2Transforms
from sam2_triton.client.triton import TritonBackend
from sam2_triton.client.video import Sam2VideoSession
from sam2_triton.model_config import DECODER, DECODER_PROMPTS, ENCODER, SESSION, VIDEO


class Sam2Client(Sam2Pipeline):
    """A :class:`Sam2Pipeline` whose networks run on the Triton server at ``url``.

    ``url`` is ``HOST:PORT`` of the HTTP (``protocol="http"``, port 8000 by default) or gRPC
    (``"grpc"``, 8001) endpoint. ``shared_memory=True`` keeps the image and the embeddings in
    system shared memory registered with the server (client and server on one host): decode
    requests then carry only the prompts. :meth:`decode_batch` sends the prompt sets of one
    image together to ``prompt_batch_model`` (``sam2_decoder_prompts``), the image's features
    once per request. ``cache_size`` embeddings are kept (LRU, keyed by
    the image's pixels). Once the server has answered, a request that fails because the
    server restarts or is briefly unreachable is retried ``retries`` times with exponential
    backoff (0.5 s doubling, at most 4 s apart; all calls are idempotent). Use as a context
    manager, or call :meth:`close`, to free the
    connection and unregister the shared memory. Errors a user can fix are
    :class:`~sam2_triton.models.UserError`.
    """

    def __init__(
        self,
        url: str = "localhost:8000",
        protocol: str = "http",
        *,
        shared_memory: bool = False,
        cache_size: int = 8,
        timeout_s: float = 120.0,
        encoder_model: str = ENCODER,
        decoder_model: str = DECODER,
        prompt_batch_model: str = DECODER_PROMPTS,
        verbose: bool = False,
        retries: int = 5,
    ) -> None:
        backend = TritonBackend(
            url,
            protocol,
            shared_memory=shared_memory,
            timeout_s=timeout_s,
            retries=retries,
            encoder_model=encoder_model,
            decoder_model=decoder_model,
            prompt_batch_model=prompt_batch_model,
            verbose=verbose,
        )
        super().__init__(backend=backend, cache_size=cache_size, transforms=Sam2Transforms())
        self.triton: TritonBackend = backend

    @property
    def url(self) -> str:
        return self.triton.url

    @property
    def protocol(self) -> str:
        return self.triton.protocol

    def session(self, image: Any, *, model: str = SESSION) -> Sam2Session:
        """A server-side session on ``image`` (a path, the file's bytes or an RGB array): the
        image travels once, each :meth:`Sam2Session.predict` sends only its prompt."""
        return Sam2Session(self.triton, image, model=model, max_points=self.max_points)

    def video_session(self, *, model: str = VIDEO, frames_per_request: int = 8) -> Sam2VideoSession:
        """A video tracked on the server (``sam2_video``): add its frames, prompt objects on
        any frame, propagate (:class:`~sam2_triton.client.video.Sam2VideoSession`)."""
        return Sam2VideoSession(self.triton, model=model, frames_per_request=frames_per_request)

    def check_ready(self, models: Sequence[str] | None = None) -> None:
        """Raise :class:`UserError` unless the server and ``models`` (default
        ``sam2_encoder``/``sam2_decoder``) are ready (the message names the model that is
        not, with the server's reason)."""
        self.triton.check_ready(models)

    def wait_until_ready(self, timeout: float = 60.0, models: Sequence[str] | None = None) -> float:
        """Wait up to ``timeout`` seconds for the server and ``models``; seconds waited."""
        return self.triton.wait_until_ready(timeout, models=models)
