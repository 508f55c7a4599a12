"""What TensorRT's ONNX parser takes, checked without TensorRT.

The GPU configs ask NVIDIA's ONNX Runtime backend for its TensorRT execution provider. A graph
node TensorRT cannot parse is not an error there: ONNX Runtime cuts the graph into pieces and
runs those nodes on the CUDA EP, with copies between the pieces and no whole-graph engine. So
the graphs those configs serve must hold only operators of TensorRT's published support list,
in the standard ONNX domain, at an opset TensorRT parses.

:data:`TENSORRT_ONNX_OPERATORS` is the operator names marked supported ("Y") in the ONNX-TensorRT
parser's support matrix for TensorRT 10.0 (``docs/operators.md`` of github.com/onnx/onnx-tensorrt
at commit 96e7811, June 2024; it covers opsets 9 to 20). The NGC image this project pins
(25.12) ships a later TensorRT 10.x, whose parser supports at least these.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

#: Operators TensorRT 10.0's ONNX parser supports (see the module docstring for the source).
TENSORRT_ONNX_OPERATORS = frozenset("""
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
    EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
    HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization
    LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
    NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
    RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
    ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan
    Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
    Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu
    Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split())  # noqa: SIM905 - the names as the support matrix lists them
#: The opsets that list covers.
TENSORRT_OPSETS = range(9, 21)


def tensorrt_problems(path: str | os.PathLike) -> list[str]:
    """Why TensorRT's ONNX parser could not take the graph at ``path`` whole (empty: it can):
    operators outside the standard domain or the support list, an opset it does not parse."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    problems = []
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version not in TENSORRT_OPSETS:
            problems.append(f"opset {opset.version} is outside {TENSORRT_OPSETS}")
    ops = Counter((node.domain or "", node.op_type) for node in model.graph.node)
    for (domain, op), count in sorted(ops.items()):
        if domain not in ("", "ai.onnx"):
            problems.append(f"{count}x {domain}.{op} (not a standard ONNX operator)")
        elif op not in TENSORRT_ONNX_OPERATORS:
            problems.append(f"{count}x {op} (not in TensorRT's support list)")
    return problems


def tensorrt_graphs(repository: str | os.PathLike, config_name: str | None = None) -> dict:
    """``{model: graph path}`` for every config of ``repository`` (``config.pbtxt``, or
    ``configs/<config_name>.pbtxt``) that asks for the TensorRT accelerator."""
    from sam2_triton.model_config import read_config

    graphs = {}
    for folder in sorted(p for p in Path(repository).iterdir() if p.is_dir()):
        path = folder / "config.pbtxt"
        if config_name is not None:
            path = folder / "configs" / f"{config_name}.pbtxt"
        if not path.is_file():
            continue
        config = read_config(path)
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        if any(a.name == "tensorrt" for a in accelerators):
            graphs[folder.name] = folder / "1" / (config.default_model_filename or "model.onnx")
    return graphs
