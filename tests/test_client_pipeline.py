"""The whole client pipeline, without a server, equals Meta's ``SAM2ImagePredictor``.

``Sam2Pipeline`` over ``OnnxRuntimeBackend`` runs the repository's ONNX files in-process with
exactly the pre/post-processing ``Sam2Client`` runs over Triton: image loading aside, an
image goes in as pixels and prompts in original-image pixels, masks come out at the
original size. The reference is Meta's predictor on the same (seeded random-init) weights.

Random-init logits are small (|logit| < 0.5), so logits are compared directly; binary masks
are compared where the reference is confident (|logit| > ``MARGIN``).

The helpers here (``PROMPT_CASES``, ``Reference``, ``assert_matches``) are shared with
``test_client_e2e.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import assert_real_logits

from sam2_triton.client import OnnxRuntimeBackend, Prediction, Sam2Pipeline, UserError, image_key

LOGIT_TOL = 1e-3  # low-res and full-size logits, IoU predictions
MARGIN = 1e-2  # |reference logit| above which a pixel's side of 0 is "confident"
MAX_MASK_MISMATCH = 0.01  # fraction of confident pixels whose mask value may differ


@dataclass(frozen=True)
class PromptCase:
    """A prompt written in fractions of the image's width/height, so it fits any photo."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None

    def pixels(self, hw) -> dict:
        """``points``/``labels``/``box`` keyword arguments in original-image pixels."""
        h, w = hw
        kw = {}
        if self.points:
            kw["points"] = [[x * w, y * h] for x, y in self.points]
            kw["labels"] = list(self.labels)
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            kw["box"] = [x0 * w, y0 * h, x1 * w, y1 * h]
        return kw


PROMPT_CASES = {
    "one_point": PromptCase(((0.5, 0.45),), (1,)),
    "points_with_negative": PromptCase(((0.3, 0.4), (0.6, 0.5), (0.8, 0.2)), (1, 1, 0)),
    "box": PromptCase(box=(0.2, 0.1, 0.8, 0.9)),
    "box_and_point": PromptCase(((0.4, 0.5),), (0,), (0.1, 0.2, 0.7, 0.95)),
}


@dataclass
class Reference:
    """What Meta's predictor returns for one prompt (``return_logits=True``)."""

    logits: np.ndarray  # [C, H, W], unclamped, original frame
    iou: np.ndarray  # [C]
    low_res: np.ndarray  # [C, 256, 256], clamped

    @classmethod
    def predict(cls, predictor, multimask: bool, mask_input=None, **prompt) -> Reference:
        kw = {}
        if "points" in prompt:
            kw["point_coords"] = np.asarray(prompt["points"], np.float32)
            kw["point_labels"] = np.asarray(prompt["labels"])
        if "box" in prompt:
            kw["box"] = np.asarray(prompt["box"], np.float32)
        logits, iou, low_res = predictor.predict(
            **kw, mask_input=mask_input, multimask_output=multimask, return_logits=True
        )
        return cls(logits, iou, low_res)


def assert_matches(pred: Prediction, ref: Reference) -> dict:
    """Assert the client's prediction equals the predictor's; return the measured diffs."""
    assert_real_logits(ref.low_res, "Meta's low-res logits")  # not a constant fill
    assert pred.masks.shape == ref.logits.shape and pred.masks.dtype == bool
    assert pred.low_res_logits.shape == ref.low_res.shape
    diffs = {
        "low_res": float(np.abs(pred.low_res_logits - ref.low_res).max()),
        "logits": float(np.abs(pred.logits - ref.logits).max()),
        "iou": float(np.abs(pred.iou_predictions - ref.iou).max()),
    }
    confident = np.abs(ref.logits) > MARGIN
    differ = (pred.masks != (ref.logits > 0)) & confident
    diffs["mask_mismatch"] = float(differ.sum() / max(confident.sum(), 1))
    assert diffs["low_res"] <= LOGIT_TOL, diffs
    assert diffs["logits"] <= LOGIT_TOL, diffs
    assert diffs["iou"] <= LOGIT_TOL, diffs
    assert diffs["mask_mismatch"] <= MAX_MASK_MISMATCH, diffs
    return diffs


class PredictorStates:
    """Meta's predictor, each image encoded once and each reference prediction made once.

    Encoding with torch is the slowest step of these tests; the states and predictions are
    shared by every client test module in the session (see :func:`predictor_states`).
    """

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.states: dict[str, tuple] = {}
        self.predictions: dict[tuple, Reference] = {}

    def use(self, name: str, image: np.ndarray):
        """The predictor with ``image`` (called ``name``) set."""
        if name not in self.states:
            self.predictor.set_image(image)
            p = self.predictor
            self.states[name] = (dict(p._features), list(p._orig_hw))
        self.predictor._features, self.predictor._orig_hw = self.states[name]
        self.predictor._is_image_set = True
        self.predictor._is_batch = False
        return self.predictor

    def predict(
        self, name: str, image: np.ndarray, multimask: bool, mask_input=None, **prompt
    ) -> Reference:
        """:meth:`Reference.predict` on ``image``, memoised."""
        mask_key = None if mask_input is None else image_key(np.asarray(mask_input, np.float32))
        key = (name, multimask, mask_key, json.dumps(prompt, sort_keys=True))
        if key not in self.predictions:
            predictor = self.use(name, image)
            self.predictions[key] = Reference.predict(predictor, multimask, mask_input, **prompt)
        return self.predictions[key]


_STATES: dict[int, PredictorStates] = {}


def predictor_states(predictor) -> PredictorStates:
    """One :class:`PredictorStates` per predictor, shared by the client test modules."""
    return _STATES.setdefault(id(predictor), PredictorStates(predictor))


@pytest.fixture(scope="module")
def reference(predictor):
    return predictor_states(predictor)


@pytest.fixture(scope="module")
def pipeline(tiny_repository):
    with Sam2Pipeline(OnnxRuntimeBackend(tiny_repository)) as p:
        yield p


@pytest.mark.parametrize("multimask", [False, True], ids=["single", "multimask"])
@pytest.mark.parametrize("case", list(PROMPT_CASES))
@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
def test_pipeline_equals_predictor(pipeline, reference, photos, photo, case, multimask):
    image = photos[photo]
    prompt = PROMPT_CASES[case].pixels(image.shape[:2])
    embedding = pipeline.encode_image(image)
    pred = pipeline.decode(embedding, **prompt, multimask=multimask)
    assert pred.masks.shape == ((3 if multimask else 1), *image.shape[:2])
    assert_matches(pred, reference.predict(photo, image, multimask, **prompt))


@pytest.mark.parametrize("photo", ["astronaut", "chelsea"])
def test_refinement_with_previous_low_res_mask(pipeline, reference, photos, photo):
    image = photos[photo]
    hw = image.shape[:2]
    first = PROMPT_CASES["one_point"].pixels(hw)
    second = PROMPT_CASES["points_with_negative"].pixels(hw)
    embedding = pipeline.encode_image(image)

    # Round 1: three candidates; each side keeps its own best low-res logits.
    pred1 = pipeline.decode(embedding, **first, multimask=True)
    ref1 = reference.predict(photo, image, True, **first)
    assert_matches(pred1, ref1)
    ours_prev = pred1.low_res_logits[pred1.best_index]
    ref_prev = ref1.low_res[np.argmax(ref1.iou)][None]
    assert pred1.best_index == int(np.argmax(ref1.iou))
    assert np.abs(pred1.low_res_logits).max() <= 32.0  # clamped, as the predictor's

    # Round 2: more clicks plus the previous mask.
    pred2 = pipeline.decode(embedding, **second, mask_input=ours_prev)
    ref2 = reference.predict(photo, image, False, mask_input=ref_prev, **second)
    assert_matches(pred2, ref2)
    # The previous mask is really used.
    without = pipeline.decode(embedding, **second)
    assert np.abs(without.low_res_logits - pred2.low_res_logits).max() > 10 * LOGIT_TOL


def test_very_large_image_equals_predictor(pipeline, reference, photos):
    # Antialiased downscaling to 1024 and 16x upscaling of the masks, end to end. (Tiny and
    # odd sizes are covered transform by transform in test_client_transforms.py.)
    import cv2

    image = cv2.resize(photos["coffee"], (6000, 4000), interpolation=cv2.INTER_LINEAR)
    prompt = PROMPT_CASES["box_and_point"].pixels(image.shape[:2])
    pred = pipeline.decode(pipeline.encode_image(image), **prompt, multimask=True)
    assert_matches(pred, reference.predict("coffee_6000x4000", image, True, **prompt))


def test_embedding_cache(pipeline, tiny_repository, photos):
    # The module's pipeline (cache_size 8) has encoded the photos already.
    hits = pipeline.stats.hits
    a = pipeline.encode_image(photos["chelsea"].copy())  # same pixels, another array
    assert pipeline.stats.hits == hits + 1
    assert pipeline.encode_image(photos["chelsea"]) is a

    with Sam2Pipeline(pipeline.backend, cache_size=1) as pipe:
        a = pipe.encode_image(photos["chelsea"])
        assert pipe.encode_image(photos["chelsea"]) is a
        b = pipe.encode_image(photos["chelsea"][::-1])  # other pixels: evicts a
        assert b.key != a.key and pipe.stats.evictions == 1
        assert (pipe.stats.hits, pipe.stats.misses) == (1, 2)
        # An evicted embedding a caller still holds keeps working.
        assert pipe.decode(a, points=[[10, 10]]).masks.shape == (1, 300, 451)
        pipe.clear_cache()
        assert not pipe._cache


def test_encode_from_path_equals_array(pipeline, photos, tmp_path):
    from PIL import Image

    Image.fromarray(photos["chelsea"]).save(tmp_path / "c.png")
    assert pipeline.encode_image(tmp_path / "c.png") is pipeline.encode_image(photos["chelsea"])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, "at least one point or a box"),
        ({"points": [[500, 10]]}, r"point 1 \(500, 10\) is outside the image"),
        ({"points": [[-1, 10]]}, "outside the image"),
        ({"points": [[10, 10], [20, 20]], "labels": [1]}, "1 label for 2 points"),
        ({"points": [[10, 10]], "labels": [1, 0]}, "2 labels for 1 point:"),
        ({"points": [[10, 10]], "labels": [2]}, "labels must be 1 .* or 0"),
        ({"points": [[10, float("nan")]]}, "finite"),
        ({"points": [["a", 1]]}, "must be numbers"),
        ({"points": [[1, 2, 3]]}, r"\(x, y\) pairs"),
        ({"labels": [1]}, "labels given without points"),
        ({"box": [100, 10, 50, 200]}, "x0 < x1"),
        ({"box": [0, 0, 452, 300]}, "box .* is outside the image"),
        ({"box": [1, 2, 3]}, "4 numbers"),
        ({"points": [[1, 1]] * 63, "box": [0, 0, 5, 5]}, "too many points: 65"),
        ({"points": [[1, 1]], "mask_input": np.zeros((64, 64))}, "256x256"),
    ],
)
def test_invalid_prompts_are_user_errors(pipeline, photos, kwargs, message):
    embedding = pipeline.encode_image(photos["chelsea"])  # 451 x 300
    with pytest.raises(UserError, match=message):
        pipeline.decode(embedding, **kwargs)


def test_points_on_the_border_and_default_labels(pipeline, photos):
    embedding = pipeline.encode_image(photos["chelsea"])
    pred = pipeline.decode(embedding, points=[[0, 0], [451, 300]])
    assert pred.prompt.labels.tolist() == [1, 1]
    pred = pipeline.decode(embedding, points=[[1, 1]] * 62, box=[0, 0, 451, 300])  # 64 in all
    assert pred.masks.shape == (1, 300, 451)


def test_decode_batch_splits_by_point_count_and_max_prompts(pipeline, photos):
    """decode_batch: one backend run per (point count, ≤ max_prompts) chunk, answers in the
    caller's order, each equal to decode() of that prompt set alone."""
    image = photos["astronaut"]
    embedding = pipeline.encode_image(image)
    h, w = image.shape[:2]
    sets = [{"points": [[w * (i + 1) / 9, h / 2]]} for i in range(7)]
    sets.insert(3, {"box": [w * 0.1, h * 0.1, w * 0.9, h * 0.9]})
    # One set refines an earlier mask: its chunk sends K mask rows, the others share one.
    sets[1]["mask_input"] = pipeline.decode(embedding, **sets[1]).low_res_logits[0]
    backend = pipeline.backend
    calls = []
    run = backend.decode
    backend.decode = lambda f, p, o: calls.append(len(p["point_coords"])) or run(f, p, o)
    backend.max_prompts = 3
    try:
        batch = pipeline.decode_batch(embedding, sets, multimask=True)
    finally:
        del backend.decode
        backend.max_prompts = 64
    assert sorted(calls) == [1, 1, 3, 3]  # 7 one-point sets in chunks of 3; the box alone
    for pred, prompt in zip(batch, sets):
        alone = pipeline.decode(embedding, **prompt, multimask=True)
        assert np.abs(pred.low_res_logits - alone.low_res_logits).max() <= 1e-4
        assert np.abs(pred.iou_predictions - alone.iou_predictions).max() <= 1e-4


@pytest.mark.parametrize(
    "prompts, message",
    [
        ([{"points": [[1, 1]]}, {"point": [[1, 1]]}], "prompt set 2: unknown key"),
        ([{"points": [[1, 1]]}, [[1, 1]]], "prompt set 2: expected a mapping"),
        ([{"box": [5, 5, 1, 1]}], "prompt set 1: .*box"),
    ],
)
def test_decode_batch_user_errors_name_the_prompt_set(pipeline, photos, prompts, message):
    embedding = pipeline.encode_image(photos["chelsea"])
    with pytest.raises(UserError, match=message):
        pipeline.decode_batch(embedding, prompts)
