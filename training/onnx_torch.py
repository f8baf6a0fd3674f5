"""Run an ONNX graph with torch ops, node by node, so a shipped ``.onnx`` file has gradients.

The attack needs d(output)/d(input) of the model a user actually has: the ``.onnx`` file, not a training checkpoint.
onnx2torch would do this but needs torchvision; the project's exported graphs use a dozen operators, so a small
interpreter over ``torch.nn.functional`` is shorter than the dependency. It covers the ops of the VGG-style nets
``training.model`` exports, with and without in-graph flip TTA, plus what residual / mobile nets add (Add, Mul,
BatchNormalization, Clip, Concat, Reshape, ...). Any other op is refused up front with its name.

``parity_check`` compares it with onnxruntime on the file itself before anything trusts its gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.nn import functional as F

Tensor = torch.Tensor
Attrs = dict[str, object]


class UnsupportedModelError(ValueError):
    """The graph uses something the interpreter does not implement; the message names it."""


def _pads_2d(pads: Sequence[int], ndim: int) -> tuple[list[int], bool]:
    """ONNX pads [x1_begin, x2_begin, ..., x1_end, x2_end] -> F.pad order (last axis first), and whether symmetric."""
    k = ndim - 2
    begin, end = list(pads[:k]), list(pads[k:])
    torch_pads: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        torch_pads += [b, e]
    return torch_pads, begin == end


def _spatial(attrs: Attrs, key: str, default: int, k: int) -> list[int]:
    value = attrs.get(key)
    return list(value) if value else [default] * k  # type: ignore[arg-type]


def _check_auto_pad(attrs: Attrs, op: str) -> None:
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedModelError(f"{op} with auto_pad={auto_pad} is not supported (export with explicit pads)")


def _conv(x: Tensor, w: Tensor, b: Tensor | None = None, *, attrs: Attrs) -> Tensor:
    _check_auto_pad(attrs, "Conv")
    k = x.ndim - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[k]
    pads, symmetric = _pads_2d(_spatial(attrs, "pads", 0, 2 * k), x.ndim)
    padding: int | list[int] = 0
    if symmetric:
        padding = pads[::2][::-1]  # begin pads per axis, first axis first
    else:
        x = F.pad(x, pads)
    return conv(
        x,
        w,
        b,
        stride=_spatial(attrs, "strides", 1, k),
        padding=padding,
        dilation=_spatial(attrs, "dilations", 1, k),
        groups=int(attrs.get("group", 1)),  # type: ignore[arg-type]
    )


def _pool(x: Tensor, *, attrs: Attrs, kind: str) -> Tensor:
    _check_auto_pad(attrs, kind)
    k = x.ndim - 2
    kernel = list(attrs["kernel_shape"])  # type: ignore[call-overload]
    strides = _spatial(attrs, "strides", 1, k)
    pads, symmetric = _pads_2d(_spatial(attrs, "pads", 0, 2 * k), x.ndim)
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    padding: int | list[int] = pads[::2][::-1] if symmetric else 0
    if kind == "MaxPool":
        if not symmetric:
            x = F.pad(x, pads, value=-math.inf)
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[k]
        return pool(x, kernel, strides, padding, dilation=_spatial(attrs, "dilations", 1, k), ceil_mode=ceil_mode)
    if not symmetric:
        raise UnsupportedModelError("AveragePool with asymmetric pads is not supported")
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[k]
    return pool(
        x, kernel, strides, padding, ceil_mode=ceil_mode, count_include_pad=bool(attrs.get("count_include_pad", 0))
    )


def _gemm(a: Tensor, b: Tensor, c: Tensor | None = None, *, attrs: Attrs) -> Tensor:
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    y = float(attrs.get("alpha", 1.0)) * (a @ b)  # type: ignore[arg-type]
    return y if c is None else y + float(attrs.get("beta", 1.0)) * c  # type: ignore[arg-type]


def _softmax(x: Tensor, *, attrs: Attrs, opset: int, log: bool = False) -> Tensor:
    fn = F.log_softmax if log else F.softmax
    if opset >= 13:
        return fn(x, dim=int(attrs.get("axis", -1)))  # type: ignore[arg-type]
    # Before opset 13 the input is coerced to 2-D at `axis` (default 1) and normalised over the second dimension.
    axis = int(attrs.get("axis", 1)) % x.ndim  # type: ignore[arg-type]
    shape = x.shape
    return fn(x.reshape(math.prod(shape[:axis]), -1), dim=1).reshape(shape)


def _axes(attrs: Attrs, axes_input: Tensor | None, ndim: int) -> list[int] | None:
    axes = attrs.get("axes") if axes_input is None else axes_input.tolist()
    return None if axes is None else [int(a) % ndim for a in axes]  # type: ignore[union-attr]


def _reduce(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def op(x: Tensor, axes: Tensor | None = None, *, attrs: Attrs) -> Tensor:
        dims = _axes(attrs, axes, x.ndim)
        keep = bool(attrs.get("keepdims", 1))
        if dims is None or not dims:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            dims = list(range(x.ndim))
        return fn(x, dim=dims, keepdim=keep)

    return op


def _reduce_max(x: Tensor, dim: list[int], keepdim: bool) -> Tensor:
    return x.amax(dim=dim, keepdim=keepdim)


def _flatten(x: Tensor, *, attrs: Attrs) -> Tensor:
    axis = int(attrs.get("axis", 1)) % max(x.ndim, 1)  # type: ignore[arg-type]
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _reshape(x: Tensor, shape: Tensor, *, attrs: Attrs) -> Tensor:
    target = [int(s) for s in shape.tolist()]
    if not attrs.get("allowzero", 0):
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


def _slice(
    x: Tensor,
    starts: Tensor,
    ends: Tensor,
    axes: Tensor | None = None,
    steps: Tensor | None = None,
    *,
    attrs: Attrs,
) -> Tensor:
    starts_l, ends_l = starts.tolist(), ends.tolist()
    axes_l = axes.tolist() if axes is not None else list(range(len(starts_l)))
    steps_l = steps.tolist() if steps is not None else [1] * len(starts_l)
    for start, end, axis, step in zip(starts_l, ends_l, axes_l, steps_l, strict=True):
        dim = x.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:  # torch slicing has no negative step: index explicitly (how torch.flip is exported)
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        index = torch.arange(start, end, step, dtype=torch.long)
        x = x.index_select(axis, index)
    return x


def _gather(x: Tensor, indices: Tensor, *, attrs: Attrs) -> Tensor:
    axis = int(attrs.get("axis", 0)) % x.ndim  # type: ignore[arg-type]
    idx = indices.long() % x.shape[axis]
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :])


def _unsqueeze(x: Tensor, axes: Tensor | None = None, *, attrs: Attrs) -> Tensor:
    dims = sorted(int(a) % (x.ndim + len(_raw_axes(attrs, axes))) for a in _raw_axes(attrs, axes))
    for d in dims:
        x = x.unsqueeze(d)
    return x


def _squeeze(x: Tensor, axes: Tensor | None = None, *, attrs: Attrs) -> Tensor:
    raw = _raw_axes(attrs, axes)
    dims = [int(a) % x.ndim for a in raw] if raw else [i for i, s in enumerate(x.shape) if s == 1]
    for d in sorted(dims, reverse=True):
        x = x.squeeze(d)
    return x


def _raw_axes(attrs: Attrs, axes: Tensor | None) -> list[int]:
    if axes is not None:
        return [int(a) for a in axes.tolist()]
    return [int(a) for a in attrs.get("axes", [])]  # type: ignore[union-attr]


def _pad(x: Tensor, pads: Tensor, value: Tensor | None = None, axes: Tensor | None = None, *, attrs: Attrs) -> Tensor:
    if axes is not None:
        raise UnsupportedModelError("Pad with an 'axes' input is not supported")
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    torch_pads, _ = _pads_2d([int(p) for p in pads.tolist()], x.ndim + 2)
    fill = float(value) if value is not None and value.numel() else 0.0
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(str(mode))
    if torch_mode is None:
        raise UnsupportedModelError(f"Pad mode {mode!r} is not supported")
    return (
        F.pad(x, torch_pads, mode=torch_mode, value=fill)
        if torch_mode == "constant"
        else F.pad(x, torch_pads, mode=torch_mode)
    )


def _clip(x: Tensor, lo: Tensor | None = None, hi: Tensor | None = None, *, attrs: Attrs) -> Tensor:
    low = float(lo) if lo is not None and lo.numel() else attrs.get("min")
    high = float(hi) if hi is not None and hi.numel() else attrs.get("max")
    return x.clamp(min=low, max=high)  # type: ignore[arg-type]


def _constant(*, attrs: Attrs) -> Tensor:
    if "value" in attrs:
        return torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())  # type: ignore[arg-type]
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64),
                       ("value_ints", torch.int64)):  # fmt: skip
        if key in attrs:
            return torch.tensor(attrs[key], dtype=dtype)
    raise UnsupportedModelError(f"Constant with attributes {sorted(attrs)} is not supported")


_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.BOOL: torch.bool,
}


def _cast(x: Tensor, *, attrs: Attrs) -> Tensor:
    to = int(attrs["to"])  # type: ignore[call-overload]
    if to not in _ONNX_DTYPES:
        raise UnsupportedModelError(f"Cast to ONNX type {to} is not supported")
    return x.to(_ONNX_DTYPES[to])


def _shape(x: Tensor, *, attrs: Attrs) -> Tensor:
    start, end = int(attrs.get("start", 0)), attrs.get("end")  # type: ignore[arg-type]
    return torch.tensor(list(x.shape)[start : None if end is None else int(end)], dtype=torch.int64)  # type: ignore[call-overload]


def _per_axis(v: Tensor, x: Tensor, axis: int) -> Tensor:
    """A per-channel scale / zero point shaped to broadcast along `axis` of `x` (a scalar stays a scalar)."""
    if v.ndim == 0 or v.numel() == 1:
        return v.reshape(())
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return v.reshape(shape)


_QUANT_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127)}


def _quantize(x: Tensor, scale: Tensor, zero: Tensor | None = None, *, attrs: Attrs) -> Tensor:
    """QuantizeLinear as fake quantisation: integer values held in float, rounded half to even as ONNX does, with a
    straight-through gradient (the rounding is treated as identity), so an int8 graph can still be attacked."""
    axis = int(attrs.get("axis", 1))  # type: ignore[call-overload]
    lo, hi = _QUANT_RANGES.get(zero.dtype if zero is not None else torch.uint8, (0, 255))
    z = _per_axis(zero.float(), x, axis) if zero is not None else 0.0
    q = x / _per_axis(scale.float(), x, axis) + z
    return (q + (torch.round(q) - q).detach()).clamp(lo, hi)


def _dequantize(x: Tensor, scale: Tensor, zero: Tensor | None = None, *, attrs: Attrs) -> Tensor:
    axis = int(attrs.get("axis", 1))  # type: ignore[call-overload]
    z = _per_axis(zero.float(), x, axis) if zero is not None else 0.0
    return (x.float() - z) * _per_axis(scale.float(), x, axis)


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda a, b, *, attrs: fn(a, b)


def _unary(fn: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda x, *, attrs: fn(x)


# op type -> fn(*inputs, attrs=..., [opset=...]); a missing optional input arrives as None.
OPS: dict[str, Callable[..., Tensor]] = {
    "Conv": _conv,
    "BatchNormalization": lambda x, scale, bias, mean, var, *, attrs: F.batch_norm(
        x,
        mean,
        var,
        scale,
        bias,
        training=False,
        eps=float(attrs.get("epsilon", 1e-5)),  # type: ignore[arg-type]
    ),
    "Relu": _unary(F.relu),
    "LeakyRelu": lambda x, *, attrs: F.leaky_relu(x, float(attrs.get("alpha", 0.01))),  # type: ignore[arg-type]
    "PRelu": lambda x, slope, *, attrs: torch.where(x >= 0, x, x * slope),
    "Sigmoid": _unary(torch.sigmoid),
    "HardSigmoid": lambda x, *, attrs: (float(attrs.get("alpha", 0.2)) * x + float(attrs.get("beta", 0.5))).clamp(0, 1),  # type: ignore[arg-type]
    "HardSwish": _unary(F.hardswish),
    "Tanh": _unary(torch.tanh),
    "Elu": lambda x, *, attrs: F.elu(x, float(attrs.get("alpha", 1.0))),  # type: ignore[arg-type]
    "Clip": _clip,
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt),
    "Neg": _unary(torch.neg),
    "Reciprocal": _unary(torch.reciprocal),
    "MaxPool": lambda x, *, attrs: _pool(x, attrs=attrs, kind="MaxPool"),
    "AveragePool": lambda x, *, attrs: _pool(x, attrs=attrs, kind="AveragePool"),
    "GlobalAveragePool": lambda x, *, attrs: x.mean(dim=tuple(range(2, x.ndim)), keepdim=True),
    "GlobalMaxPool": lambda x, *, attrs: x.amax(dim=tuple(range(2, x.ndim)), keepdim=True),
    "ReduceMean": _reduce(torch.mean),
    "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(_reduce_max),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda x, *, attrs: x.permute(*(attrs.get("perm") or reversed(range(x.ndim)))),  # type: ignore[misc]
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda *xs, attrs: torch.cat(list(xs), dim=int(attrs["axis"])),  # type: ignore[call-overload]
    "Slice": _slice,
    "Gather": _gather,
    "Shape": _shape,
    "Cast": _cast,
    "Pad": _pad,
    "Constant": _constant,
    "Gemm": _gemm,
    "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Pow": _binary(torch.pow),
    "Sum": lambda *xs, attrs: sum(xs[1:], xs[0]),
    "Identity": _unary(lambda x: x),
    "Dropout": _unary(lambda x: x),  # inference: identity (the optional mask output is not supported)
    "Softmax": _softmax,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "LogSoftmax": lambda x, *, attrs, opset: _softmax(x, attrs=attrs, opset=opset, log=True),
}
_NEEDS_OPSET = {"Softmax", "LogSoftmax"}


class OnnxModule(torch.nn.Module):
    """``OnnxModule(path)(x)``: the graph's single output for its single (non-initializer) input, in torch."""

    def __init__(self, model: str | Path | onnx.ModelProto):
        super().__init__()
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model))
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        foreign = sorted({n.domain for n in graph.node if n.domain not in ("", "ai.onnx")})
        unsupported = sorted({n.op_type for n in graph.node if n.op_type not in OPS})
        if foreign or unsupported:
            raise UnsupportedModelError(
                "the ONNX graph uses operators the torch interpreter does not implement: "
                + ", ".join(unsupported + [f"domain {d!r}" for d in foreign])
                + f" (supported: {', '.join(sorted(OPS))})"
            )
        for node in graph.node:
            if node.op_type in ("Dropout", "MaxPool") and len([o for o in node.output if o]) > 1:
                raise UnsupportedModelError(f"{node.op_type} with a second output ({node.output[1]}) is not supported")
        self.constants: dict[str, Tensor] = {
            init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in graph.initializer
        }
        inputs = [i.name for i in graph.input if i.name not in self.constants]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise UnsupportedModelError(f"expected one input and one output, got {inputs} and {len(graph.output)}")
        self.input_name, self.output_name = inputs[0], graph.output[0].name
        # An int8 (QDQ) graph runs here as fake quantisation in float, while onnxruntime runs integer kernels: the
        # two agree only to about one quantisation step, so parity is checked with QUANTIZED_ATOL for them.
        self.quantized = any(n.op_type == "QuantizeLinear" for n in graph.node)
        self.nodes = [
            (
                n.op_type,
                list(n.input),
                list(n.output),
                {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute},
            )
            for n in graph.node
        ]

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Tensor] = dict(self.constants)
        env[self.input_name] = x
        for op, inputs, outputs, attrs in self.nodes:
            args = [env[name] if name else None for name in inputs]
            kwargs: dict[str, object] = {"attrs": attrs}
            if op in _NEEDS_OPSET:
                kwargs["opset"] = self.opset
            env[outputs[0]] = OPS[op](*args, **kwargs)
        return env[self.output_name]


QUANTIZED_ATOL = 5e-2


def parity_check(module: OnnxModule, path: str | Path, inputs: np.ndarray, atol: float = 1e-4) -> float:
    """Max |torch interpreter - onnxruntime| on ``inputs`` (float32 NCHW); raises above ``atol``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: inputs.astype(np.float32)})[0]
    with torch.no_grad():
        got = module(torch.from_numpy(inputs.astype(np.float32))).numpy()
    diff = float(np.abs(expected - got).max())
    if not np.isfinite(diff) or diff > atol:
        raise RuntimeError(
            f"the torch model rebuilt from {path} differs from onnxruntime by {diff:.2e} (> {atol:.0e}); "
            "its gradients cannot be trusted"
        )
    return diff
