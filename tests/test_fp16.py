"""The FP16 export (``--precision fp16``) keeps the contract and agrees with FP32.

Runs ONNX Runtime on the CPU on real photos with the random-init tiny of ``conftest``.
Random weights give small logits (|x| < 1), so the mask check is strict: a sign flip
anywhere shows. Thresholds: encoder features within 1 % relative L2 (FP16 rounding is
~5e-4 per op), no inf/NaN, masks' IoU ≥ 0.98 against FP32, IoU predictions within 1e-2.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import run_script

from sam2_triton.export import DECODER_OUTPUTS, ENCODER_OUTPUTS
from sam2_triton.model_config import (
    RepositoryParams,
    check_config_against_onnx,
    decoder_config,
    encoder_config,
)
from sam2_triton.optimize import op_counts, pads_as_concats, predicted_host_copies

FLOAT16 = onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def fp16_repository(tmp_path_factory, tiny_checkpoint):
    repo = tmp_path_factory.mktemp("fp16_repository")
    run_script(
        "export_onnx.py",
        "--model",
        "tiny",
        "--checkpoint",
        tiny_checkpoint,
        "--repository",
        repo,
        "--precision",
        "fp16",
        "--no-configs",
    )
    return repo


def _session(repo, model):
    path = str(repo / model / "1" / "model.onnx")
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _image(photo) -> np.ndarray:
    import cv2

    x = cv2.resize(photo, (1024, 1024), interpolation=cv2.INTER_LINEAR) / 255.0
    x = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def test_contract_unchanged(fp16_repository):
    """FP32 inputs/outputs, same names and dims: the served configs need no change."""
    params = RepositoryParams(model_size="tiny")
    for config, model in (
        (encoder_config(params), "sam2_encoder"),
        (decoder_config(params), "sam2_decoder"),
    ):
        path = fp16_repository / model / "1" / "model.onnx"
        assert check_config_against_onnx(config, path) == []
        graph = onnx.load(str(path), load_external_data=False).graph
        weights = [i.data_type for i in graph.initializer if i.data_type in (1, FLOAT16)]
        assert weights.count(FLOAT16) > len(weights) / 2, "most weights should be FP16"


def test_fp16_encoder_attention_is_fused(fp16_repository):
    """In the encoder's CUDA graph (model.cuda.onnx) every Hiera block's attention runs as ONNX
    Runtime's MultiHeadAttention (flash attention on the CUDA EP): no explicit attention map
    (Softmax) is left."""
    from sam2_triton.optimize import op_counts

    path = fp16_repository / "sam2_encoder/1/model.cuda.onnx"
    graph = onnx.load(str(path), load_external_data=False)
    counts = op_counts(graph)
    assert counts["MultiHeadAttention"] == 12, counts  # tiny: 1 + 2 + 7 + 2 blocks
    assert counts["Softmax"] == 0, counts


def test_exports_need_no_host_copies(tiny_repository, fp16_repository):
    """No shape arithmetic feeds device data (would make ORT's CUDA EP copy to/from host)."""
    for repo in (tiny_repository, fp16_repository):
        for model in ("sam2_encoder", "sam2_decoder"):
            graph = onnx.load(str(repo / model / "1" / "model.onnx"), load_external_data=False)
            assert predicted_host_copies(graph) == [], (repo, model)


def test_exports_take_the_fast_cuda_kernels(tiny_repository, fp16_repository):
    """Two graph forms ONNX Runtime's CUDA EP runs through slow generic kernels are gone from
    every exported graph: Hiera's window padding (exported as Concat with zeros; the CUDA Pad
    took a third of the encoder's device time) and biases added on the left of an Add."""
    paths = [tiny_repository / "sam2_encoder/1/model.onnx"]
    paths += [fp16_repository / "sam2_encoder/1" / f for f in ("model.onnx", "model.cuda.onnx")]
    paths += [repo / "sam2_decoder/1/model.onnx" for repo in (tiny_repository, fp16_repository)]
    for path in paths:
        model = onnx.load(str(path), load_external_data=False)
        graph, counts = model.graph, op_counts(model)
        if "encoder" in str(path):
            assert counts["Pad"] == 0 and counts["ConstantOfShape"] >= 4, (path, counts)
        weights = {i.name for i in graph.initializer}
        weights |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
        adds = [n for n in graph.node if n.op_type == "Add"]
        assert adds and not [n.name for n in adds if n.input[0] in weights], path


def _pad_graph(dtype: int, pads: list[int], mode: str = "constant") -> onnx.ModelProto:
    h = onnx.helper
    x = h.make_tensor_value_info("x", dtype, ["batch", 5, 6, 3])
    y = h.make_tensor_value_info("y", dtype, ["batch", "h", "w", "c"])
    pad = h.make_node("Pad", ["x", "pads"], ["y"], name="pad", mode=mode)
    init = onnx.numpy_helper.from_array(np.array(pads, np.int64), "pads")
    graph = h.make_graph([pad], "g", [x], [y], [init])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("dtype", [onnx.TensorProto.FLOAT, FLOAT16])
def test_pads_as_concats_is_the_same_pad(dtype):
    """Zero padding at the end of the static dims becomes Concat with zeros, equal element
    for element at any batch; padding at the start, of the batch or by reflection stays."""
    np_type = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    for pads in ([0, 0, 0, 0, 0, 2, 3, 0], [0, 0, 0, 0, 0, 0, 1, 4], [0, 0, 0, 0, 0, 0, 0, 0]):
        model = _pad_graph(dtype, pads)
        rewritten = pads_as_concats(_pad_graph(dtype, pads))
        assert op_counts(rewritten)["Pad"] == 0
        assert not rewritten.graph.initializer  # the pads constant went with the Pad
        for batch in (1, 3):
            x = np.random.default_rng(batch).standard_normal((batch, 5, 6, 3)).astype(np_type)
            want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
            got = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": x})[0]
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    for pads, mode in (
        ([0, 1, 0, 0, 0, 0, 0, 0], "constant"),
        ([0, 0, 0, 0, 1, 0, 0, 0], "constant"),
        ([0, 0, 0, 0, 0, 2, 2, 0], "reflect"),
    ):
        assert op_counts(pads_as_concats(_pad_graph(dtype, pads, mode)))["Pad"] == 1


def test_fp16_agrees_with_fp32_on_photos(tiny_repository, fp16_repository, photos):
    enc32, enc16 = _session(tiny_repository, "sam2_encoder"), _session(
        fp16_repository, "sam2_encoder"
    )
    dec32, dec16 = _session(tiny_repository, "sam2_decoder"), _session(
        fp16_repository, "sam2_decoder"
    )
    rng = np.random.default_rng(0)
    for name, photo in photos.items():
        image = _image(photo)
        f32 = dict(zip(ENCODER_OUTPUTS, enc32.run(None, {"image": image})))
        f16 = dict(zip(ENCODER_OUTPUTS, enc16.run(None, {"image": image})))
        for key in ENCODER_OUTPUTS:
            assert f16[key].dtype == np.float32 and np.isfinite(f16[key]).all(), (name, key)
            rel = np.linalg.norm(f16[key] - f32[key]) / np.linalg.norm(f32[key])
            assert rel < 1e-2, (name, key, rel)
        prompts = {
            "point_coords": (rng.random((1, 3, 2)) * 1024).astype(np.float32),
            "point_labels": np.array([[1, 1, 0]], np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros((1, 1), np.float32),
        }
        out32 = dict(zip(DECODER_OUTPUTS, dec32.run(None, {**f32, **prompts})))
        out16 = dict(zip(DECODER_OUTPUTS, dec16.run(None, {**f16, **prompts})))
        # A second click that feeds the first mask back exercises the mask path in FP16.
        follow = {**prompts, "mask_input": np.clip(out32["masks"], -32, 32)}
        follow["has_mask_input"] = np.ones((1, 1), np.float32)
        out32b = dict(zip(DECODER_OUTPUTS, dec32.run(None, {**f32, **follow})))
        out16b = dict(zip(DECODER_OUTPUTS, dec16.run(None, {**f16, **follow})))
        for a, b in ((out32, out16), (out32b, out16b)):
            for key in ("masks", "multimask_masks"):
                assert np.isfinite(b[key]).all()
                m32, m16 = a[key] > 0, b[key] > 0
                iou = (m32 & m16).sum() / max((m32 | m16).sum(), 1)
                assert iou >= 0.98, (name, key, iou)
                assert np.abs(a[key] - b[key]).max() < 0.05, (name, key)
            for key in ("iou_predictions", "multimask_iou_predictions"):
                assert np.abs(a[key] - b[key]).max() < 1e-2, (name, key)


# --- TensorRT readiness: what the TensorRT configs serve, checked without TensorRT -----------


@pytest.mark.parametrize("which", ["fp32", "fp16"])
def test_tensorrt_configs_serve_graphs_tensorrts_parser_takes_whole(
    tiny_repository, fp16_repository, which
):
    """Every graph a GPU config hands to TensorRT holds standard ONNX operators of TensorRT's
    published support list only (the fused encoder, with ONNX Runtime's contrib operators,
    is a separate file for the CUDA EP), and its profile matches the config's batching."""
    import shutil

    from sam2_triton.model_config import write_repository_configs
    from sam2_triton.tensorrt import tensorrt_graphs, tensorrt_problems

    repo = tiny_repository if which == "fp32" else fp16_repository
    if which == "fp16":  # that export wrote no configs: write the defaults beside its files
        configs = repo.parent / "fp16_with_configs"
        shutil.copytree(repo, configs, dirs_exist_ok=True)
        write_repository_configs(configs, "tiny")
        repo = configs
    graphs = tensorrt_graphs(repo)
    assert {"sam2_encoder", "sam2_decoder", "sam2_decoder_prompts"} <= set(graphs)
    for model, path in graphs.items():
        assert tensorrt_problems(path) == [], (model, tensorrt_problems(path))
    fused = repo / "sam2_encoder" / "1" / "model.cuda.onnx"
    assert fused.is_file() == (which == "fp16")
    if which == "fp16":
        assert any("com.microsoft.MultiHeadAttention" in p for p in tensorrt_problems(fused))
        params = RepositoryParams(model_size="tiny")
        assert check_config_against_onnx(encoder_config(params), fused) == []


def test_tensorrt_profiles_cover_the_batching():
    """min/opt/max of each TensorRT profile: 1, the first preferred batch size, the largest
    batch the config lets Triton form (and 1..max_points points for the decoders)."""
    from sam2_triton.model_config import repository_configs

    for path, config in repository_configs().items():
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        trt = [a for a in accelerators if a.name == "tensorrt"]
        if not trt:
            continue
        shapes = {
            key: dict(
                item.split(":")
                for item in trt[0].parameters[f"trt_profile_{key}_shapes"].split(",")
            )
            for key in ("min", "opt", "max")
        }
        for tensor, largest in shapes["max"].items():
            lead = int(largest.split("x")[0])
            batch = config.max_batch_size
            if batch:
                assert lead == batch, (path, tensor)
                assert int(shapes["min"][tensor].split("x")[0]) == 1, (path, tensor)
            if tensor == "point_coords":
                assert largest.split("x")[1] == config.parameters["max_points"].string_value
