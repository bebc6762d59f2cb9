"""What every kernel module shares."""

from llvmlite import ir
from numba.core import cgutils, config, types
from numba.core.extending import intrinsic

from .vectors import Float32Vector

# Reassociation lets the k-long dot products vectorize; tests compare against the dense
# reference at a relative 1e-9, far above the rounding differences it causes. No "contract":
# whether LLVM fuses a multiply and an add into one FMA depends on what it inlined, which
# differs between a kernel compiled in the process and one loaded from numba's cache (a CG
# fit on 6,000 ratings: 619.7851772270695 against 619.7851765572286 after 35 iterations), so
# the same fit would give other bits depending on the cache.
_FASTMATH = {"reassoc"}

# Cache line size in bytes of x86-64 and most ARM cores (a hint for alignment and prefetch only:
# on a core with longer lines a 64-byte aligned row still ends within its last line).
_LINE = 64


@intrinsic
def _prefetch(typingctx, array, index):
    """Hint the cache to fetch an element of ``array`` for reading: for an integer ``index``,
    ``array[index]`` of a 1-d array or the first element of row ``index`` of a 2-d one; for a
    tuple of one integer per dimension, that element. No effect on results. A walk that reads
    rows at random indices issues it some rows ahead: the hardware does not guess where the
    next row is."""
    if not isinstance(array, types.Array):
        return None
    if isinstance(index, types.Integer):
        if array.ndim not in (1, 2):
            return None
    elif not (isinstance(index, types.BaseTuple) and len(index) == array.ndim
              and all(isinstance(part, types.Integer) for part in index)):
        return None

    def codegen(context, builder, signature, args):
        array_type, index_type = signature.args
        view = context.make_array(array_type)(context, builder, args[0])
        if isinstance(index_type, types.Integer):
            where = [context.cast(builder, args[1], index_type, types.intp)]
            where += [context.get_constant(types.intp, 0)] * (array_type.ndim - 1)
        else:
            where = [context.cast(builder, part, part_type, types.intp) for part, part_type
                     in zip(cgutils.unpack_tuple(builder, args[1]), index_type)]
        pointer = cgutils.get_item_pointer2(
            context, builder, view.data, cgutils.unpack_tuple(builder, view.shape),
            cgutils.unpack_tuple(builder, view.strides), array_type.layout, where,
        )
        byte_pointer = ir.IntType(8).as_pointer()
        int32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32]),
            "llvm.prefetch.p0i8",
        )
        # read, high temporal locality, data cache
        builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(int32, 0),
                                ir.Constant(int32, 3), ir.Constant(int32, 1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@intrinsic
def _muladd(typingctx, a, b, c):
    """``a * b + c`` rounded once (one FMA instruction) on a CPU that has them, for floats of
    one type. Fused or not is the target's choice alone, not the optimizer's as with fastmath's
    "contract" (see `_FASTMATH`), so a kernel gives the same bits from numba's cache as when
    compiled in the process. Reassociable, like `_FASTMATH`: a loop summing with it
    vectorizes. Lane by lane for `Float32Vector` values."""
    if not (isinstance(a, (types.Float, Float32Vector)) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        value_type = args[0].type
        if isinstance(value_type, ir.VectorType):
            name = f"v{value_type.count}f32"
        else:
            name = "f32" if value_type == ir.FloatType() else "f64"
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(value_type, [value_type] * 3), f"llvm.fmuladd.{name}",
        )
        return builder.call(function, args, fastmath=("reassoc",))

    return a(a, b, c), codegen


@intrinsic
def _take_next(typingctx, counter):
    """Atomically add 1 to ``counter[0]`` (a 1-d int64 array shared by a parallel loop's
    threads) and return the value it had: each caller gets a number no other caller gets.

    numba does not see this write: a read of ``counter`` after the parallel loop may be moved
    before it (it read 0 in a test), so only this function may touch the counter."""
    if not (isinstance(counter, types.Array) and counter.ndim == 1
            and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        one = context.get_constant(types.int64, 1)
        return builder.atomic_rmw("add", view.data, one, "monotonic")

    return types.int64(counter), codegen


def _serial_take_next(counter):
    """`_take_next` with the JIT off, where a parallel loop runs in one thread."""
    value = int(counter[0])
    counter[0] = value + 1
    return value


def _unfused_muladd(a, b, c):
    """`_muladd` with the JIT off: two roundings."""
    return a * b + c


def _no_prefetch(array, index):
    """`_prefetch` with the JIT off, where intrinsics cannot run: a hint, so nothing to do."""


prefetch = _no_prefetch if config.DISABLE_JIT else _prefetch
muladd = _unfused_muladd if config.DISABLE_JIT else _muladd
take_next = _serial_take_next if config.DISABLE_JIT else _take_next
