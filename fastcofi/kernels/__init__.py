"""Numba kernels: arrays and scalars in, arrays or scalars out; no validation, no RNG, no objects.

One subject a module: :mod:`.sparse` (sorting and transposing CSR, id lookup), :mod:`.objective`
(the fused cost and gradients), :mod:`.rowsolve` (the regularized least-squares row solve of ALS
and fold-in), :mod:`.cgpass` (a conjugate-gradient pass over a row's gathered ratings),
:mod:`.cholesky` (small dense factorizations), :mod:`.vectors` (float32 vectors of a fixed
width), :mod:`.bfloat16` (reduced-precision copies of the side a row solve reads),
:mod:`.foldin` (a new row's solve behind checks of its ratings), :mod:`.vb` (variational Bayes
row updates), :mod:`.topn` (top-n selection) and :mod:`.parse` (the built-in text parser). The
Python wrappers check shapes and dtypes and turn status codes into errors; a kernel trusts what
it is given. Nothing here imports the rest of the
package.
"""
