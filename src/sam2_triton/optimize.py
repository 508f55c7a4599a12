"""Graph passes run on the exported ONNX graphs: shape folding and FP16 conversion.

Why shape folding. The legacy TorchScript exporter records every ``x.shape[i]`` that Meta's
code reads as a ``Shape → Gather`` chain, followed by the integer arithmetic done on it
(window padding with ``Mod``, ``1 / sqrt(head_dim)`` for the attention scale, reshape
targets). Only the batch (and the decoder's point count) is dynamic, yet the graph
recomputes every size on each run. ONNX Runtime's CUDA execution provider places such
shape subgraphs on the CPU; where their result is used as *data* by a GPU kernel (the
attention scale multiplies the queries), it inserts ``MemcpyFromHost``/``MemcpyToHost``
nodes and the stream waits on the host. :func:`fold_static_shapes` replaces every read of a
static dimension by a constant (shapes from ONNX Runtime's symbolic shape inference),
folds the arithmetic that follows with ``onnxscript``'s constant folder, and rewrites
reshape targets whose only unknown entry is the batch size to ``-1``, so that no shape
arithmetic is left where the batch does not need it.

Why FP16. On a GPU the encoder is bound by memory traffic and tensor-core rate; FP16
weights and activations halve the bytes and run on the FP16 tensor cores. The graph's
inputs and outputs stay FP32 (:func:`to_fp16` with ``keep_io_types``) so the Triton
contract is the same for both precisions; ops that overflow or lose too much in FP16 stay
FP32 (:data:`FP16_OP_BLOCK_LIST`).

Why attention fusion. As exported, each Hiera attention block is ``MatMul → Softmax →
MatMul`` on explicit attention maps: the global-attention blocks of base_plus/large write
``heads × 4096 × 4096`` scores per image (512 MiB in FP32) and read them back twice, so
the encoder is bound by memory traffic and its working set grows to tens of GiB at batch
8. :func:`fuse_attention` runs ONNX Runtime's own SAM2 fusion
(``onnxruntime.transformers``, ``model_type="sam2"``), which rewrites those blocks to
``com.microsoft.MultiHeadAttention``: flash / memory-efficient attention on the CUDA EP,
a fused kernel on the CPU EP. The result is an ONNX Runtime graph: TensorRT does not
run that contrib op, so the TensorRT path keeps the plain graph.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sam2_triton.files import atomic_path

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

#: Ops kept in FP32 by :func:`to_fp16`, on top of ``onnxruntime.transformers.float16``'s
#: own list. ``ReduceMean``/``Pow``/``Sqrt`` are the decoder's channel-first LayerNorm2d
#: (upscaling path), whose squared deviations leave FP16's range from |x - mean| > 256;
#: ``Sin``/``Cos`` are the random Fourier point embeddings, whose arguments reach tens of
#: radians where FP16 keeps two decimal digits. Both sit in the small decoder, so keeping
#: them FP32 costs nothing measurable. ``LayerNormalization`` stays FP16: ONNX defines its
#: statistics in ``stash_type`` (FP32 by default) and ONNX Runtime's kernels follow that.
#: ``Softmax`` and ``Erf`` (GELU) stay FP16: they touch the largest tensors (global
#: attention maps, MLP activations), and ONNX Runtime accumulates softmax in FP32.
FP16_OP_BLOCK_LIST: tuple[str, ...] = ("ReduceMean", "Pow", "Sqrt", "Sin", "Cos", "ArgMax")

#: Node-name fragments kept in FP32 (the Mul/MatMul feeding ``Sin``/``Cos`` are kept anyway).
FP16_NODE_BLOCK_PATTERNS: tuple[str, ...] = ("/pe_layer/",)

_SSI_TEMP = "sym_shape_infer_temp.onnx"


def op_counts(model: "onnx.ModelProto") -> Counter:
    """How many nodes of each op type the main graph has."""
    return Counter(node.op_type for node in model.graph.node)


def _symbolic_shapes(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """``model`` with a shape for every tensor, from ONNX Runtime's symbolic inference."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    left_before = Path(_SSI_TEMP).exists()
    try:
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    finally:
        # On failure the tool dumps its partial model into the working directory.
        if not left_before:
            for leftover in Path().glob(f"{_SSI_TEMP}*"):
                leftover.unlink(missing_ok=True)


def _static_dims(model: "onnx.ModelProto") -> dict[str, list[int | None]]:
    """Each tensor's dims: an int where static, ``None`` where symbolic or unknown."""
    dims: dict[str, list[int | None]] = {}
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        ttype = value.type.tensor_type
        if not ttype.HasField("shape"):
            continue
        dims[value.name] = [
            d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim
        ]
    return dims


def _constant_node(name: str, values: Iterable[int], scalar: bool = False):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    array = np.array(list(values), dtype=np.int64)
    if scalar:
        array = array.reshape(())
    tensor = numpy_helper.from_array(array, name=f"{name}_value")
    return onnx.helper.make_node("Constant", [], [name], name=f"{name}_folded", value=tensor)


def _int_constants(model: "onnx.ModelProto") -> dict[str, "object"]:
    """Integer tensors that are initializers or ``Constant`` outputs, as numpy arrays."""
    from onnx import numpy_helper

    consts = {}
    for init in model.graph.initializer:
        if init.data_type in (6, 7):  # INT32, INT64
            consts[init.name] = numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            if tensor.data_type in (6, 7):
                consts[node.output[0]] = numpy_helper.to_array(tensor)
    return consts


def _shape_slice(node, rank: int) -> tuple[int, int]:
    """The ``start``/``end`` attributes of a ``Shape`` node (opset ≥ 15), clamped."""
    start, end = 0, rank
    for attr in node.attribute:
        if attr.name == "start":
            start = attr.i
        elif attr.name == "end":
            end = attr.i
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return start, end


def _replace_static_shape_reads(model: "onnx.ModelProto") -> int:
    """Replace ``Shape`` (or ``Gather``/``Slice`` of one) reading static dims by constants.

    ``model`` must carry inferred shapes (``value_info``). Works in place; returns how many
    tensors became constants. Nodes left without consumers are removed later.
    """
    dims = _static_dims(model)
    consts = _int_constants(model)
    shapes: dict[str, list[int | None]] = {}  # output of a Shape node → its dims
    replace: dict[str, tuple[list[int], bool]] = {}
    for node in model.graph.node:
        if node.op_type != "Shape" or node.input[0] not in dims:
            continue
        d = dims[node.input[0]]
        start, end = _shape_slice(node, len(d))
        shapes[node.output[0]] = d[start:end]
        if all(v is not None for v in d[start:end]):
            replace[node.output[0]] = (d[start:end], False)
    for node in model.graph.node:
        if not node.input or node.input[0] not in shapes:
            continue
        d = shapes[node.input[0]]
        if node.op_type == "Gather" and node.input[1] in consts:
            idx = consts[node.input[1]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            picked = [d[int(i)] for i in idx.reshape(-1)]
            if axis == 0 and all(v is not None for v in picked):
                replace[node.output[0]] = (picked, idx.ndim == 0)
        elif node.op_type == "Slice" and all(i in consts for i in node.input[1:]):
            args = [consts[i].reshape(-1).tolist() for i in node.input[1:]]
            axes = args[2] if len(args) > 2 else [0]
            steps = args[3] if len(args) > 3 else [1]
            if axes in ([0], [-1]) and len(args[0]) == 1:
                picked = d[slice(args[0][0], args[1][0], steps[0])]
                if all(v is not None for v in picked):
                    replace[node.output[0]] = (picked, False)
    nodes = [
        _constant_node(out, values, scalar)
        for node in model.graph.node
        for out in node.output
        if (hit := replace.get(out)) is not None
        for values, scalar in [hit]
    ]
    if not nodes:
        return 0
    kept = [n for n in model.graph.node if not any(o in replace for o in n.output)]
    del model.graph.node[:]
    model.graph.node.extend(nodes + kept)
    return len(nodes)


def _batch_only_reshapes(model: "onnx.ModelProto") -> int:
    """Turn ``Reshape`` targets whose single non-constant entry is a size into ``-1``.

    ``Concat(Unsqueeze(batch), 8, 8, C)`` as a reshape target becomes the constant
    ``[-1, 8, 8, C]``: the same result for any batch, with no shape arithmetic on the way.
    Only applied when every other entry is a positive constant. Returns the count.
    """
    import numpy as np
    from onnx import numpy_helper

    consts = _int_constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        concat = producers.get(node.input[1])
        if concat is None or concat.op_type != "Concat":
            continue
        entries: list[int | None] = []
        for part in concat.input:
            if part in consts:
                entries.extend(int(v) for v in consts[part].reshape(-1))
            elif (p := producers.get(part)) is not None and p.op_type == "Unsqueeze":
                entries.append(None)  # one unknown scalar
            else:
                entries = []
                break
        unknown = [i for i, v in enumerate(entries) if v is None]
        if len(unknown) != 1 or any(v is not None and v <= 0 for v in entries):
            continue
        entries[unknown[0]] = -1
        name = f"{node.input[1]}_batch_free"
        tensor = numpy_helper.from_array(np.array(entries, dtype=np.int64), name=name)
        model.graph.initializer.append(tensor)
        node.input[1] = name
        rewritten += 1
    return rewritten


def _constant_fold(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Fold constant subgraphs and drop unused nodes (``onnxscript``'s optimizer).

    ``ConstantOfShape`` of a constant shape is folded too (``onnxscript`` keeps it by
    default): the legacy exporter's ``expand`` builds ``Where(Equal(shape, -ones), ...)``
    from one, and a GPU-resident ``ones`` next to a CPU-resident ``shape`` is a copy.
    """
    import onnx_ir as ir
    import onnxscript.optimizer

    for name in ("onnxscript", "onnx_ir"):  # they log every node they skip at INFO
        logging.getLogger(name).setLevel(logging.WARNING)

    def should_fold(node) -> bool | None:
        return True if node.op_type == "ConstantOfShape" else None

    model_ir = ir.serde.deserialize_model(model)
    onnxscript.optimizer.optimize_ir(
        model_ir, num_iterations=2, onnx_shape_inference=False, should_fold=should_fold
    )
    return ir.serde.serialize_model(model_ir)


def fold_static_shapes(model: "onnx.ModelProto", max_rounds: int = 4) -> "onnx.ModelProto":
    """Return ``model`` with the arithmetic on static sizes folded away (see module doc).

    The result computes the same function for every batch size and point count; only
    reads of dynamic dims (batch, number of points) remain as ``Shape`` nodes.
    """
    before = op_counts(model)
    for _ in range(max_rounds):
        inferred = _symbolic_shapes(model)
        changed = _replace_static_shape_reads(inferred)
        changed += _batch_only_reshapes(inferred)
        for value in list(inferred.graph.value_info):
            inferred.graph.value_info.remove(value)
        model = _constant_fold(inferred)
        if not changed:
            break
    after = op_counts(model)
    log.info(
        "shape folding: %d → %d nodes, Shape %d → %d",
        sum(before.values()),
        sum(after.values()),
        before["Shape"],
        after["Shape"],
    )
    return model


def fuse_attention(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Attention, LayerNorm and GELU fused into ONNX Runtime's contrib ops.

    Uses ``onnxruntime.transformers.optimizer.optimize_model(model_type="sam2")`` with
    ``opt_level=0`` (pattern fusions only: no provider-specific rewrites are saved, the
    file runs on the CPU and CUDA execution providers). ``model`` is left unchanged.
    """
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    source = onnx.ModelProto()
    source.CopyFrom(model)
    before = op_counts(source)
    fused = optimize_model(
        source, model_type="sam2", num_heads=0, hidden_size=0, opt_level=0, use_gpu=True
    ).model
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):
        fused.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    after = op_counts(fused)
    log.info(
        "attention fusion: %d MultiHeadAttention (Softmax %d -> %d), LayerNormalization %d",
        after["MultiHeadAttention"],
        before["Softmax"],
        after["Softmax"],
        after["LayerNormalization"],
    )
    return fused


def to_fp16(
    model: "onnx.ModelProto",
    op_block_list: Iterable[str] = FP16_OP_BLOCK_LIST,
    node_block_patterns: Iterable[str] = FP16_NODE_BLOCK_PATTERNS,
) -> "onnx.ModelProto":
    """FP16 weights and compute, FP32 inputs and outputs (``onnxruntime.transformers``).

    Ops in ``op_block_list`` and nodes whose name contains one of ``node_block_patterns``
    keep FP32 and get ``Cast`` nodes around them. ``model`` is left unchanged.
    """
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(op_block_list))
    patterns = tuple(node_block_patterns)
    source = onnx.ModelProto()
    source.CopyFrom(model)  # the converter edits its argument in place
    named = {n.name for n in source.graph.node if any(p in n.name for p in patterns)}
    blocked_nodes = sorted(named | _fp32_neighbourhood(source))
    _isolate_blocked_inputs(source, set(blocked), set(blocked_nodes))
    wrapped = OnnxModel(source)
    wrapped.topological_sort()
    converted = convert_float_to_float16(
        source,
        keep_io_types=True,
        op_block_list=blocked,
        node_block_list=blocked_nodes,
        disable_shape_infer=False,  # it needs every tensor's type to place the Casts
    )
    # The converter appends the Casts of the graph inputs after their consumers, and leaves
    # FP16 value_info on initializers it kept FP32 for blocked ops: sort, drop the hints.
    wrapped = OnnxModel(converted)
    wrapped.topological_sort()
    del wrapped.model.graph.value_info[:]
    return wrapped.model


def _fp32_neighbourhood(model: "onnx.ModelProto", depth: int = 3) -> set[str]:
    """Names of the arithmetic nodes feeding ``Sin``/``Cos`` (the point embedding's
    projection ``2π · (coords @ G)``): kept FP32 with them."""
    producers = {out: node for node in model.graph.node for out in node.output}
    keep: set[str] = set()
    frontier = [n for n in model.graph.node if n.op_type in ("Sin", "Cos")]
    for _ in range(depth):
        nxt = []
        for node in frontier:
            for name in node.input:
                p = producers.get(name)
                arithmetic = p is not None and p.op_type in ("Mul", "MatMul", "Add", "Sub", "Div")
                if arithmetic and p.name not in keep:
                    keep.add(p.name)
                    nxt.append(p)
        frontier = nxt
    return keep


def _isolate_blocked_inputs(model: "onnx.ModelProto", blocked_ops, blocked_nodes) -> int:
    """Route each FP32-kept node's use of a shared tensor through its own ``Identity``.

    Some ``onnxruntime.transformers.float16`` releases (1.30) name the ``Cast`` they put in
    front of a kept node after the tensor alone, and emit it twice when two kept nodes
    share the tensor (``sin(x)`` and ``cos(x)``): the graph is then not in SSA form. ONNX
    Runtime removes the Identities when it loads the graph.
    """
    import onnx

    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            if name:
                uses[name] = uses.get(name, 0) + 1
    for name in _int_constants(model):  # integer constants are never cast
        uses.pop(name, None)
    added = []
    for node in model.graph.node:
        if node.op_type not in blocked_ops and node.name not in blocked_nodes:
            continue
        for k, name in enumerate(node.input):
            if name and uses.get(name, 0) > 1:
                alias = f"{name}__to_{node.name or node.op_type}_{k}".replace("/", "_")
                added.append(onnx.helper.make_node("Identity", [name], [alias], name=alias))
                node.input[k] = alias
    model.graph.node.extend(added)
    return len(added)


def constants_on_the_right(model: "onnx.ModelProto") -> int:
    """Swap the inputs of each ``Add`` whose first input is a weight, in place; returns how
    many. Addition is commutative, so every value stays bit for bit the same.

    Why: the exporter writes each linear layer's bias as ``Add(bias, MatMul(x, W))``. ONNX
    Runtime's CUDA ``Add`` has fast kernels for a right-hand side that is a scalar or one
    value per channel; a broadcast left-hand side goes to its generic kernel, which computes
    every element's index dim by dim. Measured with CUPTI on the H100 (docs/benchmarks.md):
    75 such adds, 1.1 ms of the base_plus encoder's 6.9 ms at batch 1.
    """
    weights = {i.name for i in model.graph.initializer}
    weights |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    swapped = 0
    for node in model.graph.node:
        if node.op_type == "Add" and node.input[0] in weights and node.input[1] not in weights:
            node.input[0], node.input[1] = node.input[1], node.input[0]
            swapped += 1
    if swapped:
        log.info("constants on the right: %d Add nodes", swapped)
    return swapped


def pads_as_concats(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Each zero ``Pad`` at the end of static dims, rewritten as ``Concat`` with zeros.

    Why: Hiera pads each windowed block's input up to a multiple of its window (base_plus:
    64×64 → 70×70 tokens in stage 3, 32×32 → 35×35 in stage 4). ONNX Runtime's CUDA ``Pad``
    is a generic per-element kernel: measured with CUPTI on the H100 (docs/benchmarks.md),
    its 15 calls took 3.9 ms of the base_plus encoder's 10.6 ms of device time at batch 1,
    for tensors of a few MB. A ``Concat`` of the input and a ``ConstantOfShape``
    block of zeros per padded dim writes the same tensor at copy speed. The result is equal
    element for element (zeros are zeros); the batch dim may be symbolic, the others must be
    static. Run after the FP16 conversion (the zeros take the input's element type).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    if not any(node.op_type == "Pad" for node in model.graph.node):
        return model  # no shape inference for graphs without one (the decoder)
    inferred = _symbolic_shapes(model)
    dims = _static_dims(inferred)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.value_info, *inferred.graph.input]
    }
    consts = _int_constants(model)
    nodes, rewritten = [], 0
    for node in model.graph.node:
        shape = dims.get(node.input[0]) if node.op_type == "Pad" else None
        pads = consts.get(node.input[1]) if shape and len(node.input) > 1 else None
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        if (
            pads is None
            or mode != b"constant"
            or (len(node.input) > 2 and node.input[2])  # a pad value (or axes) given
            or len(pads) != 2 * len(shape)
            or any(pads[: len(shape)])  # padding at the start
            or pads[len(shape)] != 0  # padding the batch
            or any(d is None for d in shape[1:])
            or node.input[0] not in types
        ):
            nodes.append(node)
            continue
        rank, name, x = len(shape), node.name or f"pad{rewritten}", node.input[0]
        zero = numpy_helper.from_array(
            np.zeros(1, helper.tensor_dtype_to_np_dtype(types[x])), f"{name}/zero"
        )
        batch = f"{name}/batch"
        current, size = x, list(shape)
        padded = [axis for axis in range(1, rank) if pads[rank + axis] > 0]
        if padded:
            nodes.append(helper.make_node("Shape", [x], [batch], name=batch, start=0, end=1))
        for axis in padded:
            block = [*size[1:axis], int(pads[rank + axis]), *size[axis + 1 :]]
            rest, target, zeros = f"{name}/rest{axis}", f"{name}/shape{axis}", f"{name}/zeros{axis}"
            out = node.output[0] if axis == padded[-1] else f"{name}/padded{axis}"
            nodes += [
                _constant_node(rest, block),
                helper.make_node("Concat", [batch, rest], [target], name=target, axis=0),
                helper.make_node("ConstantOfShape", [target], [zeros], name=zeros, value=zero),
                helper.make_node("Concat", [current, zeros], [out], name=out, axis=axis),
            ]
            current, size[axis] = out, size[axis] + int(pads[rank + axis])
        if not padded:  # all pads zero: the input as it is
            nodes.append(helper.make_node("Identity", [x], [node.output[0]], name=name))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for n in nodes for name in n.input}
    unused = [i for i in model.graph.initializer if i.name not in used]  # the pads
    for init in unused:
        model.graph.initializer.remove(init)
    if rewritten:
        log.info("pads as concats: %d Pad nodes rewritten", rewritten)
    onnx.checker.check_model(model)
    return model


def save_model(model: "onnx.ModelProto", path: str | os.PathLike) -> Path:
    """Save ``model`` to ``path`` atomically and check it (``onnx.checker``, full)."""
    import onnx

    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


#: Inputs that ONNX Runtime's CUDA kernels read from host memory (``OrtMemTypeCPUInput``):
#: a host-side shape computation may feed them without a copy.
CUDA_HOST_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "ConstantOfShape": frozenset({0}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Range": frozenset({0, 1, 2}),
    "Pad": frozenset({1, 2, 3}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Split": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Squeeze": frozenset({1}),
    "OneHot": frozenset({1}),
    "TopK": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "Clip": frozenset({1, 2}),
}


def predicted_host_copies(model: "onnx.ModelProto") -> list[tuple[str, int, str]]:
    """Where ONNX Runtime's CUDA EP would copy between host and device, predicted on a CPU.

    Mirrors ONNX Runtime's ``GetCpuPreferredNodes`` (``fallback_cpu_capability.cc``):
    starting from the host outputs of ``Shape``/``Size``, a consumer goes to the CPU when
    every input is a host tensor it does not read as a host input, a small (≤ 100
    elements) initializer or a graph input. Each edge from such a node into a device
    input is a ``MemcpyFromHost``; each device-computed tensor read as a host input (a
    ``Tile``'s repeats, a ``Reshape``'s shape) is a ``MemcpyToHost``. Returns
    ``(consumer node, input index, tensor)`` for each. It ignores the session's own
    constant folding and kernels missing for a data type, so it is a lead and a regression
    check; the saved optimized model of a CUDA
    session (``scripts/gpu/``) is the measurement.
    """
    import heapq

    import numpy as np

    graph = model.graph
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            sizes[node.output[0]] = int(np.prod(node.attribute[0].t.dims))
    graph_inputs = {i.name for i in graph.input}
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    host: set[str] = set()
    candidates: list[int] = []
    for node in nodes:
        if node.op_type in ("Shape", "Size"):
            host.update(node.output)
            candidates += [c for out in node.output for c in consumers.get(out, [])]
    heapq.heapify(candidates)
    cpu_nodes: set[int] = set()
    visited: set[int] = set()
    while candidates:
        index = heapq.heappop(candidates)
        if index in visited:
            continue
        visited.add(index)
        node = nodes[index]
        host_inputs = CUDA_HOST_INPUTS.get(node.op_type, frozenset())
        on_cpu = True
        for k, name in enumerate(node.input):
            if not name or sizes.get(name, 101) <= 100 or name in graph_inputs:
                continue
            if name not in host or k in host_inputs:
                on_cpu = False
                break
        if on_cpu:
            cpu_nodes.add(index)
            host.update(node.output)
            for out in node.output:
                for c in consumers.get(out, []):
                    heapq.heappush(candidates, c)
    # ONNX Runtime folds nodes of constant inputs (a Cast of a constant) before placing.
    constant = set(sizes)
    for node in nodes:
        if node.input and all(not name or name in constant for name in node.input):
            constant.update(node.output)
    copies = []
    computed = {out for node in nodes for out in node.output} - constant
    for index, node in enumerate(nodes):
        if index in cpu_nodes or node.op_type in ("Shape", "Size"):
            continue
        host_inputs = CUDA_HOST_INPUTS.get(node.op_type, frozenset())
        for k, name in enumerate(node.input):
            if name in host and k not in host_inputs:
                copies.append((node.name, k, name))  # MemcpyFromHost
            elif k in host_inputs and name in computed and name not in host:
                copies.append((node.name, k, name))  # MemcpyToHost: device data read by host
    return copies
