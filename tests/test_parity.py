"""The exported ONNX graphs compute what Meta's SAM2ImagePredictor computes.

A seeded random-init SAM2.1 tiny (Meta's checkpoint format) is exported through the CLI
(`tiny_repository`). The encoder gets the predictor's own transformed image, the decoder
the predictor's own prompt tensors, so these tests isolate the graphs; the client's
pre/post-processing is proven separately (tests/test_client_*.py). Random-init logits are
small (|logit| < 0.5), so logits are compared, not thresholded masks.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import assert_real_logits, decoder_feed

TOL = 1e-3


@pytest.fixture(scope="module")
def encoder(tiny_repository):
    return ort.InferenceSession(
        str(tiny_repository / "sam2_encoder/1/model.onnx"), providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="module")
def decoder(tiny_repository):
    return ort.InferenceSession(
        str(tiny_repository / "sam2_decoder/1/model.onnx"), providers=["CPUExecutionProvider"]
    )


def set_image(predictor, encoded: dict, photo: str) -> None:
    """Put ``photo``'s cached state back into the predictor instead of encoding it again."""
    predictor._features, predictor._orig_hw = encoded[photo][3]
    predictor._is_image_set = True


@pytest.fixture(scope="module")
def encoded(predictor, encoder, photos):
    """Per photo: input tensor, the predictor's features, ONNX outputs, predictor state."""
    out = {}
    for name, image in photos.items():
        predictor.set_image(image)
        x = predictor._transforms(image)[None].numpy()
        onnx = dict(zip([o.name for o in encoder.get_outputs()], encoder.run(None, {"image": x})))
        ref = {
            "image_embeddings": predictor._features["image_embed"].numpy(),
            "high_res_feats_0": predictor._features["high_res_feats"][0].numpy(),
            "high_res_feats_1": predictor._features["high_res_feats"][1].numpy(),
        }
        state = (dict(predictor._features), list(predictor._orig_hw))
        out[name] = (x, ref, onnx, state)
    return out


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
def test_encoder_matches_predictor(encoded, photo):
    _, ref, onnx, _ = encoded[photo]
    for key, value in ref.items():
        assert onnx[key].shape == value.shape, key
        assert np.abs(onnx[key] - value).max() <= TOL, key


def prompt_cases(h: int, w: int) -> dict[str, dict]:
    """Prompts in original-image pixels, as a user gives them to the predictor."""
    return {
        "one_point": dict(point_coords=[[w * 0.5, h * 0.45]], point_labels=[1]),
        "points_with_negative": dict(
            point_coords=[[w * 0.3, h * 0.4], [w * 0.6, h * 0.5], [w * 0.8, h * 0.2]],
            point_labels=[1, 1, 0],
        ),
        "box": dict(box=[w * 0.2, h * 0.1, w * 0.8, h * 0.9]),
        "box_and_point": dict(
            box=[w * 0.1, h * 0.2, w * 0.7, h * 0.95],
            point_coords=[[w * 0.4, h * 0.5]],
            point_labels=[0],
        ),
    }


def reference(predictor, prompt: dict, multimask: bool, mask_input=None):
    """The predictor's low-res logits and IoU predictions (``predict`` on the set image)."""
    kw = {k: np.array(v) for k, v in prompt.items()}
    _, iou, low_res = predictor.predict(
        **kw, mask_input=mask_input, multimask_output=multimask, return_logits=True
    )
    assert_real_logits(low_res)  # what the graphs are compared with is not a constant
    return low_res, iou


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
@pytest.mark.parametrize("case", list(prompt_cases(1, 1)))
@pytest.mark.parametrize("multimask", [False, True])
def test_decoder_matches_predictor(predictor, decoder, encoded, photos, photo, case, multimask):
    image = photos[photo]
    set_image(predictor, encoded, photo)
    ref_feats = encoded[photo][1]
    prompt = prompt_cases(*image.shape[:2])[case]
    feed = decoder_feed(predictor, ref_feats, prompt)
    masks, iou, multi_masks, multi_iou = decoder.run(None, feed)
    ref_masks, ref_iou = reference(predictor, prompt, multimask)
    got_masks, got_iou = (multi_masks[0], multi_iou[0]) if multimask else (masks[0], iou[0])
    assert got_masks.shape == ref_masks.shape
    assert np.abs(got_masks - ref_masks).max() <= TOL
    assert np.abs(got_iou - ref_iou).max() <= TOL


@pytest.mark.parametrize("photo", ["astronaut", "chelsea"])
def test_decoder_refines_with_previous_mask(predictor, decoder, encoded, photos, photo):
    image = photos[photo]
    set_image(predictor, encoded, photo)
    ref_feats = encoded[photo][1]
    first = prompt_cases(*image.shape[:2])["one_point"]
    _, scores, low_res = predictor.predict(
        **{k: np.array(v) for k, v in first.items()}, multimask_output=True
    )
    previous = low_res[np.argmax(scores)][None]  # [1, 256, 256], clamped by the predictor
    second = prompt_cases(*image.shape[:2])["points_with_negative"]
    feed = decoder_feed(predictor, ref_feats, second, mask_input=previous)
    masks, iou, _, _ = decoder.run(None, feed)
    ref_masks, ref_iou = reference(predictor, second, False, mask_input=previous)
    assert np.abs(masks[0] - ref_masks).max() <= TOL
    assert np.abs(iou[0] - ref_iou).max() <= TOL
    # The mask prompt is really used: without it the logits differ.
    feed["has_mask_input"][:] = 0
    assert np.abs(decoder.run(["masks"], feed)[0][0] - masks[0]).max() > 10 * TOL


def test_batch_of_two_equals_two_single_runs(encoder, decoder, encoded, predictor, photos):
    x = np.concatenate([encoded["astronaut"][0], encoded["coffee"][0]])
    batched = encoder.run(None, {"image": x})
    for i, name in enumerate(["astronaut", "coffee"]):
        single = encoded[name][2]
        for out, key in zip(batched, ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]):
            assert np.abs(out[i] - single[key]).max() <= 1e-4

    feeds = []
    for name in ["astronaut", "coffee"]:
        set_image(predictor, encoded, name)
        prompt = prompt_cases(*photos[name].shape[:2])["points_with_negative"]
        feeds.append(decoder_feed(predictor, encoded[name][1], prompt))
    both = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    out = decoder.run(None, both)
    for i, feed in enumerate(feeds):
        for got, single in zip(out, decoder.run(None, feed)):
            assert np.abs(got[i] - single[0]).max() <= 1e-4


@pytest.mark.parametrize("multimask", [False, True])
def test_prompt_batch_matches_batched_predictor(predictor, decoder, encoded, photos, multimask):
    """K prompt sets against one image's ``[1, ...]`` features (what sam2_decoder_prompts
    takes) equal Meta's batched ``predict`` (``[K, N, 2]`` points, ``[K, 4]`` boxes)."""
    image = photos["coffee"]
    h, w = image.shape[:2]
    set_image(predictor, encoded, "coffee")
    features = encoded["coffee"][1]
    frac_points = [[[0.2, 0.3], [0.5, 0.5]], [[0.7, 0.4], [0.1, 0.9]], [[0.5, 0.2], [0.3, 0.6]]]
    points = np.array(frac_points, np.float32) * [w, h]
    labels = np.array([[1, 0], [1, 1], [1, 0]])
    frac_boxes = [[0.1, 0.1, 0.6, 0.7], [0.3, 0.2, 0.9, 0.8], [0.0, 0.0, 0.5, 0.5]]
    boxes = np.array(frac_boxes, np.float32) * [w, h, w, h]
    for batch in (dict(point_coords=points, point_labels=labels), dict(box=boxes)):
        _, ref_iou, ref_low = predictor.predict(
            **batch, multimask_output=multimask, return_logits=True
        )
        rows = [
            decoder_feed(predictor, features, {k: v[i] for k, v in batch.items()}) for i in range(3)
        ]
        feed = dict(features)  # once, batch 1
        for name in ("point_coords", "point_labels", "mask_input", "has_mask_input"):
            feed[name] = np.concatenate([r[name] for r in rows])
        masks, iou, multi_masks, multi_iou = decoder.run(None, feed)
        got_masks, got_iou = (multi_masks, multi_iou) if multimask else (masks, iou)
        assert got_masks.shape == ref_low.shape == (3, 3 if multimask else 1, 256, 256)
        assert np.abs(got_masks - ref_low).max() <= TOL
        assert np.abs(got_iou - ref_iou).max() <= TOL
        # One shared (unused) mask row instead of K gives the same answers.
        shared = decoder.run(None, {**feed, "mask_input": feed["mask_input"][:1]})
        for got, want in zip(shared, (masks, iou, multi_masks, multi_iou)):
            assert np.array_equal(got, want)


def test_graphs_pass_onnx_checker(tiny_repository):
    import onnx

    for model in ("sam2_encoder", "sam2_decoder"):
        onnx.checker.check_model(str(tiny_repository / model / "1" / "model.onnx"), full_check=True)
    # sam2_decoder_prompts serves the very same graph under its own config.
    prompts = tiny_repository / "sam2_decoder_prompts/1/model.onnx"
    assert prompts.read_bytes() == (tiny_repository / "sam2_decoder/1/model.onnx").read_bytes()
