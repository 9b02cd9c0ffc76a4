"""gelu(x @ kernel + bias) as one GEMM on Hopper GPUs (Pallas Mosaic GPU), the bias and exact GELU in its epilogue.

XLA runs an MLP's first projection as a cuBLAS GEMM with the bias in its epilogue, then GELU as a pass of its own
over the widest activation (cuBLAS' GELU epilogue is tanh's approximation, not the erf that BART's "gelu" is). Here
one persistent kernel per SM loops over output tiles: a memory warpgroup streams x and kernel tiles through shared
memory while two compute warpgroups multiply (wgmma) and, per finished tile, add the bias, apply GELU and store it
(TMA) while the next tile's operands load. LSG-BART-base's fc1 at 16384 tokens on an H100: 0.174 ms against 0.202
for cuBLAS plus the GELU pass (bench/hopper_gemm.py, bench/RESULTS.md).

`dense_gelu` takes the kernel where it applies (an sm90 GPU, half precision, shapes in whole tiles) and XLA's
formulation elsewhere; under differentiation its forward is XLA's (training keeps its tested path). Under a sharded
jit it runs on each device's rows (custom_partitioning). `gemm_bias_gelu(..., interpret=interpreter())` runs the
kernel in Pallas' Mosaic GPU interpreter (the tests).
"""
import functools

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from jaxport.layers import gelu

TILE_M, TILE_N, TILE_K, STAGES = 128, 64, 64, 4  # per compute warpgroup; the CTA's tile is TILE_M x 2 * TILE_N
_SQRT_HALF = 0.7071067811865476


def _erf(z):
    """Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, far below half precision's rounding): exp and arithmetic,
    which Mosaic GPU lowers; XLA's erf is not available in the kernel."""
    a = jnp.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    e = 1.0 - poly * jnp.exp(-a * a)
    return jnp.where(z < 0, -e, e)


def kernel_applies(x: jax.Array, kernel: jax.Array) -> bool:
    """Whether `dense_gelu` takes the Hopper kernel for x [..., K] @ kernel [K, N] on the default device."""
    device = jax.devices()[0]
    return (device.platform == "gpu" and getattr(device, "compute_capability", None) == "9.0"
            and x.dtype in (jnp.bfloat16, jnp.float16) and kernel.dtype == x.dtype and kernel.ndim == 2
            and kernel.shape[0] % TILE_K == 0 and kernel.shape[1] % (2 * TILE_N) == 0)


def gemm_bias_gelu(x, kernel, bias, *, interpret=None):
    """gelu(x [M, K] @ kernel [K, N] + bias [N]) in x's dtype, accumulated in float32, as one Mosaic GPU kernel.
    Rows past M in the last tile are read as zeros and not written (TMA bounds)."""
    M, K = x.shape
    N = kernel.shape[1]
    cta_n = 2 * TILE_N
    m_tiles, n_tiles, k_steps = pl.cdiv(M, TILE_M), N // cta_n, K // TILE_K
    swizzle = plgpu.find_swizzle(TILE_K * 16)  # a tile row's bits (16 per half-precision element)
    transforms = (plgpu.TilingTransform((8, swizzle // 2)), plgpu.SwizzleTransform(swizzle))
    out_swizzle = plgpu.find_swizzle(TILE_N * 16)
    out_transforms = (plgpu.TilingTransform((8, out_swizzle // 2)), plgpu.SwizzleTransform(out_swizzle))
    # Persistent: one program per SM; in the interpreter two, so that each loops over several tiles.
    programs = 2 if interpret else jax.devices()[0].core_count

    def body(x_gmem, w_gmem, b_gmem, o_gmem):
        def pipeline(step, context):
            return plgpu.emit_pipeline_warp_specialized(
                step, grid=(k_steps,), memory_registers=40,
                in_specs=[plgpu.BlockSpec((TILE_M, TILE_K), lambda k: (0, k), transforms=transforms),
                          plgpu.BlockSpec((TILE_K, cta_n), lambda k: (k, 0), transforms=transforms)],
                wg_axis="wg", num_compute_wgs=2, max_concurrent_steps=STAGES, compute_context=context)

        def scoped(allocations, out_smem, bias_smem, bias_barrier):
            wg = lax.axis_index("wg")
            wg_cols = pl.ds(wg * TILE_N, TILE_N)

            @plgpu.nd_loop((m_tiles * n_tiles,), collective_axes="sm")
            def _(info):
                (index,) = info.index
                rows = pl.ds(lax.div(index, n_tiles) * TILE_M, TILE_M)
                cols = pl.ds(lax.rem(index, n_tiles) * cta_n, cta_n)

                def epilogue(run_pipeline):
                    plgpu.copy_gmem_to_smem(b_gmem.at[cols].at[wg_cols], bias_smem.at[wg], bias_barrier.at[wg])

                    @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((TILE_M, TILE_N), jnp.float32))
                    def _(acc_ref):
                        run_pipeline(acc_ref)
                        plgpu.barrier_wait(bias_barrier.at[wg])
                        y = acc_ref[...] + lax.broadcast_in_dim(bias_smem[wg].astype(jnp.float32), (TILE_M, TILE_N),
                                                                (1,))
                        y = (0.5 * y * (1.0 + _erf(y * _SQRT_HALF))).astype(o_gmem.dtype)
                        plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous tile's store has read it
                        out_smem[wg] = y
                        plgpu.commit_smem()
                        plgpu.copy_smem_to_gmem(out_smem.at[wg], o_gmem.at[rows, cols].at[:, wg_cols])

                def multiply(_, x_smem, w_smem, acc_ref):
                    plgpu.wgmma(acc_ref, x_smem, w_smem.at[:, wg_cols])
                    plgpu.wgmma_wait(0)
                    return acc_ref

                pipeline(multiply, epilogue)(x_gmem.at[rows, :], w_gmem.at[:, cols], allocations=allocations)
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

        ignore = lambda *_, **__: None
        pl.run_scoped(scoped, pipeline(ignore, ignore).get_allocations(x_gmem, w_gmem),
                      plgpu.SMEM((2, TILE_M, TILE_N), o_gmem.dtype, transforms=out_transforms),
                      plgpu.SMEM((2, TILE_N), b_gmem.dtype), plgpu.Barrier(num_barriers=2), collective_axes="wg")

    options = (dict(interpret=interpret) if interpret else
               dict(compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup,
                                                         approx_math=True)))
    return plgpu.kernel(body, out_type=jax.ShapeDtypeStruct((M, N), x.dtype), grid=(programs,), grid_names=("sm",),
                        num_threads=3, thread_name="wg", **options)(x, kernel, bias.astype(x.dtype))


def _xla_dense_gelu(x, kernel, bias):
    return gelu(jnp.dot(x, kernel) + bias.astype(x.dtype))


def interpreter():
    """Parameters that run gemm_bias_gelu in Pallas' Mosaic GPU interpreter (on the CPU: the tests)."""
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams  # no public name for it yet
    return InterpretGPUParams()


def _local_gemm(x, kernel, bias):
    """Each device's part under _rows_gemm: the kernel on a GPU; elsewhere XLA's formulation, so that the
    partitioning can be tested on CPU devices (the interpreter's host callbacks cannot run under
    custom_partitioning)."""
    if jax.default_backend() != "gpu":
        return _xla_dense_gelu(x, kernel, bias)
    return gemm_bias_gelu(x, kernel, bias)


_rows_gemm = custom_partitioning(_local_gemm)


def _shardings(mesh, arg_shapes):
    """(argument shardings, result sharding): x's rows keep their sharding; its columns, the kernel and the bias
    are whole on every device."""
    rows = (tuple(getattr(arg_shapes[0].sharding, "spec", ())) + (None,))[0]
    whole = NamedSharding(mesh, PartitionSpec())
    by_rows = NamedSharding(mesh, PartitionSpec(rows, None))
    return (by_rows, whole, whole), by_rows


def _partition(mesh, arg_shapes, result_shape):
    arg_shardings, result_sharding = _shardings(mesh, arg_shapes)
    return mesh, _local_gemm, result_sharding, arg_shardings


_rows_gemm.def_partition(partition=_partition,
                         infer_sharding_from_operands=lambda mesh, arg_shapes, _: _shardings(mesh, arg_shapes)[1],
                         sharding_rule="m k, k n, n -> m n", need_replication_factors=("k", "n"))


@jax.custom_vjp
def _dense_gelu(x, kernel, bias):
    if not kernel_applies(x, kernel):
        return _xla_dense_gelu(x, kernel, bias)
    return _rows_gemm(x.reshape(-1, x.shape[-1]), kernel, bias).reshape(*x.shape[:-1], kernel.shape[1])


def _dense_gelu_fwd(x, kernel, bias):
    return jax.vjp(_xla_dense_gelu, x, kernel, bias)


_dense_gelu.defvjp(_dense_gelu_fwd, lambda vjp, g: vjp(g))


def dense_gelu(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """gelu(x [..., K] @ kernel [K, N] + bias [N]), exact GELU, in x's dtype."""
    return _dense_gelu(x, kernel.astype(x.dtype), bias)
