"""hwact's additions to TVM 0.27's Relax ONNX frontend, so that hwact's integer ONNX imports bit-exactly.

Two changes, applied only while hwact imports a model (`converters()`, around `from_onnx`):

    ConvInteger   the frontend has no converter. ONNX defines
                      y[n, o, p] = sum_{c, k} (x[n, c, p*s + k*d - pad] - x_zp) * (w[o, c, k] - w_zp[o])
                  in int32, where a padded position contributes 0 (it holds x_zp). Imported as a Relax
                  conv2d with out_dtype int32 on (int32(x) - x_zp) and (int32(w) - w_zp): zero padding of
                  the shifted input is the zero point padding of the spec, and the int32 accumulation is
                  onnxruntime's (|x - x_zp| <= 255, |w - w_zp| <= 255, so any channel depth below 2^15
                  cannot overflow).

    scalar integer constants
                  an elementwise op (Add, Sub, Mul, Div, Mod, BitShift, Min, Max, Clip) with a rank-0
                  integer constant operand gets that constant as a tensor of shape [1] * rank (it
                  broadcasts to the same result). A rank-0 Relax constant is inlined into the TIR kernel
                  as an immediate, and TVM then folds and emits arithmetic that has no defined overflow
                  (LLVM nsw/nuw adds): uint64 x + 2^63 (hwact's rounding right shift of a signed value:
                  int64 -> uint64, + 2^63 + 2^(s-1), >> s, - 2^(63-s)) saturated at 2^64 - 1 for every
                  x >= 2^63 instead of wrapping as onnxruntime does, int64 x + INT64_MIN likewise, and a
                  uint64 constant >= 2^63 in Mod failed to compile. As a [1]-shaped buffer the constant is
                  loaded at run time and the adds wrap (tests/backends/test_tvm.py checks each op at its
                  type's edge values against onnxruntime).

Everything else hwact's integer ONNX uses (Cast, int64 Div truncation, Mod, BitShift on uint64, Clip,
Min/Max, ReduceSum/ReduceMax, Gather, MatMulInteger, MaxPool, Round half to even) the frontend imports
bit-exactly as it is; tests/backends/test_tvm.py checks whole integer ViTs and CNNs against onnxruntime.
"""

from __future__ import annotations

import contextlib

from hwact.errors import UnsupportedError

SCALAR_OPERAND_OPS = ("Add", "Sub", "Mul", "Div", "Mod", "BitShift", "Min", "Max", "Clip")


def _frontend():
    from tvm.relax.frontend.onnx import onnx_frontend

    return onnx_frontend


def _conv_integer():
    """The ConvInteger converter class (built on first use: it subclasses the frontend's base class)."""
    from tvm import relax

    class ConvInteger(_frontend().OnnxOpConverter):
        """ONNX ConvInteger (2-D) as a Relax int32 conv2d of the zero-point-shifted operands."""

        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            if len(inputs[0].ty.shape) != 4:
                raise UnsupportedError(f"ConvInteger on a rank-{len(inputs[0].ty.shape)} input: hwact's TVM "
                                       f"import takes 2-D convolutions (rank 4) only")
            if attr.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise UnsupportedError("ConvInteger with auto_pad: hwact's TVM import takes explicit pads only")
            x = relax.op.astype(inputs[0], "int32")
            w = relax.op.astype(inputs[1], "int32")
            if len(inputs) > 2 and inputs[2] is not None:
                x = relax.op.subtract(x, relax.op.astype(inputs[2], "int32"))
            if len(inputs) > 3 and inputs[3] is not None:
                w_zero = bb.normalize(relax.op.astype(inputs[3], "int32"))
                if len(w_zero.ty.shape) == 1:                     # per output channel
                    w_zero = relax.op.reshape(w_zero, [-1, 1, 1, 1])
                w = relax.op.subtract(w, w_zero)
            return relax.op.nn.conv2d(bb.normalize(x), bb.normalize(w), strides=attr.get("strides", 1),
                                      padding=attr.get("pads", 0), dilation=attr.get("dilations", 1),
                                      groups=attr.get("group", 1), out_dtype="int32")

    return ConvInteger


def _scalars_as_tensors(converter):
    """`converter` with each rank-0 integer constant operand given as a [1] * rank tensor, rank the largest
    rank among the op's other operands (a rank-0 result stays as it is)."""
    import tvm
    from tvm import relax

    def is_int_scalar(value) -> bool:
        return isinstance(value, tvm.ir.GenericConst) and value.value.numpy().ndim == 0 \
            and value.value.numpy().dtype.kind in "iu"

    def rank_of(value) -> int:
        shape = getattr(getattr(value, "ty", None), "shape", None)
        return len(shape) if shape is not None else 0

    class ScalarsAsTensors(converter):
        @classmethod
        def get_converter(cls, opset):
            convert = converter.get_converter(opset)

            def with_tensors(bb, inputs, attr, params):
                rank = max((rank_of(v) for v in inputs if isinstance(v, relax.Expr) and not is_int_scalar(v)),
                           default=0)
                if rank:
                    inputs = [relax.const(v.value.numpy().reshape([1] * rank), str(v.value.numpy().dtype))
                              if is_int_scalar(v) else v for v in inputs]
                return convert(bb, inputs, attr, params)

            return with_tensors

    ScalarsAsTensors.__name__ = converter.__name__
    return ScalarsAsTensors


def with_additions(base: dict) -> dict:
    """A converter map (op type -> converter class) with hwact's ConvInteger and scalar operand handling."""
    return {**base, **{op: _scalars_as_tensors(base[op]) for op in SCALAR_OPERAND_OPS if op in base},
            "ConvInteger": _conv_integer()}


def known_ops() -> set[str]:
    """The ONNX op types hwact's TVM import converts."""
    return set(with_additions(_frontend()._get_convert_map()))


@contextlib.contextmanager
def converters():
    """Within: TVM's ONNX frontend (from_onnx) converts with with_additions(its own map). The frontend
    reads its map through the module function _get_convert_map on every import; that function is what
    is swapped here, and put back after."""
    frontend = _frontend()
    original = getattr(frontend, "_get_convert_map", None)
    if not callable(original):
        raise UnsupportedError("this TVM's Relax ONNX frontend has no _get_convert_map (hwact is written "
                               "against TVM 0.27)", hint="pip install 'apache-tvm==0.27.*'")
    frontend._get_convert_map = lambda: with_additions(original())
    try:
        yield
    finally:
        frontend._get_convert_map = original
