"""Float32 vectors of a width fixed at compile time, for kernels that keep a short row in
registers.

LLVM's loop vectorizer leaves a k-long loop with a runtime k in memory: each pass over a
row reloads it and reloads what it accumulates. A value of `Float32Vector` is one LLVM vector
(``<lanes x float>``), which the backend keeps in registers (four 256-bit ones for 32 lanes):
a row loaded once serves every product it takes part in, when the CPU has the registers (32
of 256 bits with AVX-512; with 16, the widest widths spill some to the stack). Rows shorter
than the width are loaded and stored under a mask, the lanes past them 0 (see
`NATIVE_MASKS`). Only for compiled kernels: with the JIT off nothing here runs.
"""

import operator

import llvmlite.binding as ll
from llvmlite import ir
from numba.core import cgutils, config, types
from numba.extending import intrinsic, models, overload, register_model

# The widths kernels are compiled for: a row of k values takes the first that holds it, a
# longer one their loops. The kernels' dispatches name each of the four.
WIDTHS = (8, 16, 32, 64)


def _target_features():
    """The CPU features numba compiles for: NUMBA_CPU_FEATURES when set, else the host's."""
    if config.CPU_FEATURES is not None:
        return set(config.CPU_FEATURES.split(","))
    try:
        return set(ll.get_host_cpu_features().flatten().split(","))
    except RuntimeError:  # a host whose features LLVM cannot read
        return set()


# Whether the target has masked loads and stores as instructions, of float32 lanes (x86 from
# AVX) and of 16-bit ones (AVX-512BW): elsewhere (AVX2's 16-bit lanes, ARM) LLVM splits each into
# a test and a load per lane, which need not beat the loops the kernels would replace (every
# timing so far is from an AVX-512 host), so they keep those loops there.
_FEATURES = _target_features()
NATIVE_MASKS = "+avx" in _FEATURES
NATIVE_HALF_MASKS = "+avx512bw" in _FEATURES


class Float32Vector(types.Type):
    """``lanes`` float32 values held as one value."""

    def __init__(self, lanes):
        self.lanes = lanes
        super().__init__(name=f"Float32Vector({lanes})")


@register_model(Float32Vector)
class _Float32VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), fe_type.lanes))


_INT32 = ir.IntType(32)


def _lanes_of(lanes):
    """The width asked for: a literal positive int, else None."""
    if isinstance(lanes, types.IntegerLiteral) and lanes.literal_value > 0:
        return lanes.literal_value
    return None


def _float32_rows(array, ndim):
    """Whether ``array`` is a C-contiguous float32 array of ``ndim`` dimensions."""
    return (isinstance(array, types.Array) and array.ndim == ndim
            and array.dtype == types.float32 and array.layout == "C")


def _mask(builder, count, count_type, lanes):
    """``<lanes x i1>``: lane ``j`` is set when ``j < count``."""
    wide = ir.IntType(64)
    count = builder.sext(count, wide) if count_type.signed else builder.zext(count, wide)
    limit = builder.insert_element(ir.Constant(ir.VectorType(wide, lanes), ir.Undefined), count,
                                   ir.Constant(_INT32, 0))
    limit = builder.shuffle_vector(limit, limit,
                                   ir.Constant(ir.VectorType(_INT32, lanes), [0] * lanes))
    index = ir.Constant(ir.VectorType(wide, lanes), list(range(lanes)))
    return builder.icmp_signed("<", index, limit)


def _first_pointer(context, builder, array_type, array, row=None, row_type=None):
    """Pointer to the first element of ``array`` (1-d) or of its row ``row`` (2-d)."""
    view = context.make_array(array_type)(context, builder, array)
    where = [context.get_constant(types.intp, 0)] * array_type.ndim
    if row is not None:
        where[0] = context.cast(builder, row, row_type, types.intp)
    return cgutils.get_item_pointer2(
        context, builder, view.data, cgutils.unpack_tuple(builder, view.shape),
        cgutils.unpack_tuple(builder, view.strides), array_type.layout, where,
    )


def _masked_load(builder, pointer, mask, lanes, element=None, name="f32", size=4):
    """The lanes of ``<lanes x element>`` at ``pointer`` that ``mask`` sets, 0 in the others
    (``name`` the element's in the intrinsic's name, ``size`` its bytes, its alignment). The
    call has the alignment as an argument, which LLVM upgrades to its newer form as it reads
    the call."""
    vector = ir.VectorType(element or ir.FloatType(), lanes)
    function = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vector, [pointer.type, _INT32, mask.type, vector]),
        f"llvm.masked.load.v{lanes}{name}.p0",
    )
    return builder.call(function, [pointer, ir.Constant(_INT32, size), mask,
                                   ir.Constant(vector, None)])


def _masked_store(builder, vector, pointer, mask, widen=False):
    """Store the lanes of ``vector`` that ``mask`` sets; ``widen``: as float64 values."""
    name, size = "f32", 4
    if widen:
        vector = builder.fpext(vector, ir.VectorType(ir.DoubleType(), vector.type.count))
        name, size = "f64", 8
    function = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(ir.VoidType(), [vector.type, pointer.type, _INT32, mask.type]),
        f"llvm.masked.store.v{vector.type.count}{name}.p0",
    )
    builder.call(function, [vector, pointer, ir.Constant(_INT32, size), mask])


@intrinsic(prefer_literal=True)
def load_row(typingctx, array, row, count, lanes):
    """Row ``row`` of a C-contiguous 2-d float32 array as a ``Float32Vector(lanes)``: its
    first ``count`` values, 0 in the lanes after them. ``count`` at most ``lanes`` (more are
    cut to ``lanes``) and not past the row's end (neither is checked)."""
    width = _lanes_of(lanes)
    if not (width and _float32_rows(array, 2) and isinstance(row, types.Integer)
            and isinstance(count, types.Integer)):
        return None
    result = Float32Vector(width)

    def codegen(context, builder, signature, args):
        pointer = _first_pointer(context, builder, signature.args[0], args[0], args[1],
                                 signature.args[1])
        return _masked_load(builder, pointer, _mask(builder, args[2], signature.args[2], width),
                            width)
    return result(array, row, count, lanes), codegen


@intrinsic(prefer_literal=True)
def load_bfloat16_row(typingctx, array, row, count, lanes):
    """`load_row` of a 2-d uint16 array of bfloat16 bits (`bfloat16.to_bfloat16`), each value
    widened exactly to the float32 whose upper half it is."""
    width = _lanes_of(lanes)
    if not (width and isinstance(array, types.Array) and array.ndim == 2
            and array.dtype == types.uint16 and array.layout == "C"
            and isinstance(row, types.Integer) and isinstance(count, types.Integer)):
        return None
    result = Float32Vector(width)

    def codegen(context, builder, signature, args):
        pointer = _first_pointer(context, builder, signature.args[0], args[0], args[1],
                                 signature.args[1])
        mask = _mask(builder, args[2], signature.args[2], width)
        bits = _masked_load(builder, pointer, mask, width, ir.IntType(16), "i16", 2)
        wide = builder.zext(bits, ir.VectorType(_INT32, width))
        wide = builder.shl(wide, ir.Constant(ir.VectorType(_INT32, width), [16] * width))
        return builder.bitcast(wide, ir.VectorType(ir.FloatType(), width))
    return result(array, row, count, lanes), codegen


@intrinsic
def store_row(typingctx, array, row, count, vector):
    """The first ``count`` lanes of ``vector`` into the start of row ``row`` of a C-contiguous
    2-d float32 array; the rest of the row is not written."""
    if not (isinstance(vector, Float32Vector) and _float32_rows(array, 2)
            and isinstance(row, types.Integer) and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _first_pointer(context, builder, signature.args[0], args[0], args[1],
                                 signature.args[1])
        _masked_store(builder, args[3], pointer,
                      _mask(builder, args[2], signature.args[2], vector.lanes))
        return context.get_dummy_value()
    return types.void(array, row, count, vector), codegen


@intrinsic(prefer_literal=True)
def load_vector(typingctx, array, count, lanes):
    """`load_row` of a 1-d float32 array."""
    width = _lanes_of(lanes)
    if not (width and _float32_rows(array, 1) and isinstance(count, types.Integer)):
        return None
    result = Float32Vector(width)

    def codegen(context, builder, signature, args):
        pointer = _first_pointer(context, builder, signature.args[0], args[0])
        return _masked_load(builder, pointer, _mask(builder, args[1], signature.args[1], width),
                            width)
    return result(array, count, lanes), codegen


@intrinsic
def store_vector(typingctx, array, count, vector):
    """The first ``count`` lanes of ``vector`` into the start of a contiguous 1-d float32
    array, or float64 one (each value widened exactly); the rest of the array is not
    written."""
    if not (isinstance(vector, Float32Vector) and isinstance(array, types.Array)
            and array.ndim == 1 and array.layout == "C"
            and array.dtype in (types.float32, types.float64)
            and isinstance(count, types.Integer)):
        return None
    width = vector.lanes
    widen = array.dtype == types.float64

    def codegen(context, builder, signature, args):
        pointer = _first_pointer(context, builder, signature.args[0], args[0])
        _masked_store(builder, args[2], pointer, _mask(builder, args[1], signature.args[1], width),
                      widen)
        return context.get_dummy_value()
    return types.void(array, count, vector), codegen


@intrinsic
def splat(typingctx, value, like):
    """A vector as wide as ``like`` with ``value`` (a float, rounded to float32) in each lane."""
    if not (isinstance(value, types.Float) and isinstance(like, Float32Vector)):
        return None

    def codegen(context, builder, signature, args):
        lanes = signature.args[1].lanes
        single = context.cast(builder, args[0], signature.args[0], types.float32)
        vector = ir.VectorType(ir.FloatType(), lanes)
        one = builder.insert_element(ir.Constant(vector, ir.Undefined), single,
                                     ir.Constant(_INT32, 0))
        return builder.shuffle_vector(one, one,
                                      ir.Constant(ir.VectorType(_INT32, lanes), [0] * lanes))
    return like(value, like), codegen


@intrinsic
def lane_sum(typingctx, vector):
    """The sum of a vector's lanes (float32), in any order (a tree of shuffles and adds)."""
    if not isinstance(vector, Float32Vector):
        return None

    def codegen(context, builder, signature, args):
        lanes = signature.args[0].lanes
        function = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.FloatType(), [ir.FloatType(), args[0].type]),
            f"llvm.vector.reduce.fadd.v{lanes}f32",
        )
        return builder.call(function, [ir.Constant(ir.FloatType(), -0.0), args[0]],
                            fastmath=("reassoc",))
    return types.float32(vector), codegen


def _lanewise(instruction):
    @intrinsic
    def apply(typingctx, a, b):
        if not (isinstance(a, Float32Vector) and a == b):
            return None

        def codegen(context, builder, signature, args):
            return getattr(builder, instruction)(args[0], args[1], flags=("reassoc",))
        return a(a, b), codegen
    return apply


_add = _lanewise("fadd")
_multiply = _lanewise("fmul")


@overload(operator.add)
def _add_vectors(a, b):
    if isinstance(a, Float32Vector) and a == b:
        return lambda a, b: _add(a, b)


@overload(operator.mul)
def _multiply_vectors(a, b):
    if isinstance(a, Float32Vector) and a == b:
        return lambda a, b: _multiply(a, b)

