"""Grouped and depthwise convolutions on CPUs: three JAX primitives (the convolution, its input
gradient, its kernel gradient) over se_flax's XLA FFI kernels (``se_flax/_kernels``), behind
:func:`se_flax.conv_general_dilated`.

XLA's CPU convolution with ``feature_group_count > 1`` is 3-130x slower than PyTorch's oneDNN
in the forward pass and 40-700x in the gradients (README's performance findings). The kernels
compute the NHWC x HWIO convolution directly, vectorised over output channels, on XLA's
intra-op threads, in float32 and float64.

Each primitive is bilinear, and the three are each other's transposes: with ``conv(x, k)``,
``input_grad(g, k)`` (``conv``'s transpose in ``x``) and ``kernel_grad(x, g)`` (its transpose
in ``k``), ``input_grad``'s transposes are ``conv`` and ``kernel_grad``, and
``kernel_grad``'s are ``input_grad`` and ``conv``. So forward mode, reverse mode, higher
derivatives and ``vmap`` work. Other backends (GPU, TPU) lower the three to XLA's convolution
and its transposes.

:func:`fusion_boundary`, the identity as a custom call XLA cannot fuse through, lives here
too: it is the fourth handler of the same library, and the backbones put it after each block.
"""

from __future__ import annotations

import ctypes
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

__all__ = ["fusion_boundary", "grouped_conv", "kernels_built"]

NHWC = ("NHWC", "HWIO", "NHWC")

# Ungrouped convolutions run the kernels where they beat XLA's CPU convolution (measured on a
# 2-core Xeon, batch 8, float32; docs' benchmark findings): a k x k kernel (k > 1) with at most
# 64 input channels, as stems and first stages have. The forward pass for at most 64 output
# channels too, the input gradient from 8 input channels on (the kernels' input gradient of a
# 3-channel stride-2 stem is 1.5-5x slower than XLA's; a stem's is not computed in training).
UNGROUPED_MAX_CHANNELS = 64
UNGROUPED_FORWARD_MAX_FEATURES = 64
UNGROUPED_INPUT_GRAD_MIN_CHANNELS = 8
_TARGETS = ("SeFlaxGroupedConv", "SeFlaxGroupedConvInputGrad", "SeFlaxGroupedConvKernelGrad")
_BOUNDARY = "SeFlaxFusionBoundary"


@functools.cache
def _library() -> str | None:
    """The built kernels' path, their FFI targets registered; None where setup.py built none."""
    here = pathlib.Path(__file__).parent
    found = sorted(here.glob("_grouped_conv_kernels*.so"))
    if not found:
        return None
    lib = ctypes.CDLL(str(found[0]))
    for name in (*_TARGETS, _BOUNDARY):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return str(found[0])


def kernels_built() -> bool:
    """Whether se_flax's CPU kernels were built at install (setup.py; they need a C++17
    compiler). Without them, grouped and depthwise convolutions run XLA's."""
    return _library() is not None


def grouped_conv(
    x: jax.Array,
    kernel: jax.Array,
    groups: int,
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    dilation: tuple[int, int],
    precision: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation,
    dimension_numbers=NHWC, feature_group_count=groups)`` for float32 or float64 ``x``
    ``(N, H, W, C)`` and ``kernel`` ``(KH, KW, C / groups, O)``, non-negative explicit ``pads``:
    on CPU se_flax's kernels and their gradients (needs :func:`kernels_built`), elsewhere XLA's."""
    params = _params(groups, strides, pads, dilation, precision)
    return _conv_p.bind(x, kernel, **params)


def ungrouped_on_kernels(kernel_shape: tuple[int, ...]) -> bool:
    """Whether an ungrouped convolution with this HWIO ``kernel_shape`` runs se_flax's kernels
    on CPU (in one of its passes at least): a kernel larger than 1x1 with at most
    ``UNGROUPED_MAX_CHANNELS`` input channels."""
    kh, kw, c, _ = kernel_shape
    return kh * kw > 1 and c <= UNGROUPED_MAX_CHANNELS


def _on_kernels(target: str, groups: int, kernel_shape: tuple[int, ...]) -> bool:
    """Whether pass ``target`` runs se_flax's kernel on CPU (else XLA's convolution): always for
    grouped convolutions, by the measured rules above for ungrouped ones."""
    if groups > 1:
        return True
    _, _, c, o = kernel_shape
    if not ungrouped_on_kernels(kernel_shape):
        return False
    if target == _TARGETS[0]:
        return o <= UNGROUPED_FORWARD_MAX_FEATURES
    if target == _TARGETS[1]:
        return c >= UNGROUPED_INPUT_GRAD_MIN_CHANNELS
    return True


def _params(groups, strides, pads, dilation, precision):
    return {
        "groups": int(groups),
        "strides": tuple(int(s) for s in strides),
        "pads": tuple((int(lo), int(hi)) for lo, hi in pads),
        "dilation": tuple(int(d) for d in dilation),
        "precision": precision,
    }


def _out_shape(x_shape, kernel_shape, strides, pads, dilation):
    (n, h, w, _), (kh, kw, _, o) = x_shape, kernel_shape
    ho = (h + sum(pads[0]) - (kh - 1) * dilation[0] - 1) // strides[0] + 1
    wo = (w + sum(pads[1]) - (kw - 1) * dilation[1] - 1) // strides[1] + 1
    return (n, max(ho, 0), max(wo, 0), o)


def _xla_conv(x, kernel, groups, strides, pads, dilation, precision):
    return lax.conv_general_dilated(
        x,
        kernel,
        strides,
        pads,
        rhs_dilation=dilation,
        dimension_numbers=NHWC,
        feature_group_count=groups,
        precision=precision,
    )


def _ffi(target, a, b, shape, groups, strides, pads, dilation):
    """One of the kernels, ``target`` (a, b) -> ``shape``, with the geometry as attributes."""
    if _library() is None:  # (dispatch checks kernels_built; a direct bind gets this)
        raise RuntimeError("se_flax's CPU kernels were not built (see setup.py)")
    (sh, sw), ((pt, _), (pl, _)), (dh, dw) = strides, pads, dilation
    out = jax.ShapeDtypeStruct(shape, a.dtype)
    attrs = {"sh": sh, "sw": sw, "pt": pt, "pl": pl, "dh": dh, "dw": dw, "groups": groups}
    return jax.ffi.ffi_call(target, out)(a, b, **{k: np.int64(v) for k, v in attrs.items()})


def _xla_transpose(linear, shape, ct):
    """XLA's own gradient: the transpose of ``linear`` (one argument of ``shape``) at ``ct``."""
    return jax.linear_transpose(linear, jax.ShapeDtypeStruct(shape, ct.dtype))(ct)[0]


# ------------------------------------------------------------------------------------------
# The three primitives' implementations: the kernel on CPU, XLA elsewhere.


def _conv_impl(x, kernel, *, groups, strides, pads, dilation, precision):
    geometry = (groups, strides, pads, dilation)
    shape = _out_shape(x.shape, kernel.shape, strides, pads, dilation)

    def xla(x, k):
        return _xla_conv(x, k, *geometry, precision)

    if not _on_kernels(_TARGETS[0], groups, kernel.shape):
        return xla(x, kernel)
    return lax.platform_dependent(
        x,
        kernel,
        cpu=lambda x, k: _ffi(_TARGETS[0], x, k, shape, *geometry),
        default=xla,
    )


def _input_grad_impl(g, kernel, *, x_shape, groups, strides, pads, dilation, precision):
    geometry = (groups, strides, pads, dilation)

    def xla(g, k):
        return _xla_transpose(lambda x: _xla_conv(x, k, *geometry, precision), x_shape, g)

    if not _on_kernels(_TARGETS[1], groups, kernel.shape):
        return xla(g, kernel)
    return lax.platform_dependent(
        g,
        kernel,
        cpu=lambda g, k: _ffi(_TARGETS[1], g, k, x_shape, *geometry),
        default=xla,
    )


def _kernel_grad_impl(x, g, *, kernel_shape, groups, strides, pads, dilation, precision):
    geometry = (groups, strides, pads, dilation)

    def xla(x, g):
        return _xla_transpose(lambda k: _xla_conv(x, k, *geometry, precision), kernel_shape, g)

    if not _on_kernels(_TARGETS[2], groups, kernel_shape):
        return xla(x, g)
    return lax.platform_dependent(
        x,
        g,
        cpu=lambda x, g: _ffi(_TARGETS[2], x, g, kernel_shape, *geometry),
        default=xla,
    )


def _conv_abstract(x, kernel, *, groups, strides, pads, dilation, precision):
    del groups, precision
    shape = _out_shape(x.shape, kernel.shape, strides, pads, dilation)
    return jax.core.ShapedArray(shape, x.dtype)


def _input_grad_abstract(g, kernel, *, x_shape, **_):
    return jax.core.ShapedArray(x_shape, g.dtype)


def _kernel_grad_abstract(x, g, *, kernel_shape, **_):
    return jax.core.ShapedArray(kernel_shape, x.dtype)


# ------------------------------------------------------------------------------------------
# Transposes: each primitive's in terms of the other two (or itself).


def _conv_t_x(ct, x, kernel, **params):  # conv(., k)^T = input_grad(., k)
    return _input_grad_p.bind(ct, kernel, x_shape=x.aval.shape, **params)


def _conv_t_k(ct, x, kernel, **params):  # conv(x, .)^T = kernel_grad(x, .)
    return _kernel_grad_p.bind(x, ct, kernel_shape=kernel.aval.shape, **params)


def _input_grad_t_g(ct, g, kernel, *, x_shape, **params):  # input_grad(., k)^T = conv(., k)
    del g, x_shape
    return _conv_p.bind(ct, kernel, **params)


def _input_grad_t_k(ct, g, kernel, *, x_shape, **params):  # input_grad(g, .)^T = kernel_grad(., g)
    del x_shape
    return _kernel_grad_p.bind(ct, g, kernel_shape=kernel.aval.shape, **params)


def _kernel_grad_t_x(ct, x, g, *, kernel_shape, **params):  # kernel_grad(., g)^T = input_grad(g, .)
    del kernel_shape
    return _input_grad_p.bind(g, ct, x_shape=x.aval.shape, **params)


def _kernel_grad_t_g(ct, x, g, *, kernel_shape, **params):  # kernel_grad(x, .)^T = conv(x, .)
    del g, kernel_shape
    return _conv_p.bind(x, ct, **params)


# ------------------------------------------------------------------------------------------
# Batching: a batch of images (kernel shared) folds into N; anything else maps.


def _fold(bind, image, image_dim, other):
    image = jnp.moveaxis(image, image_dim, 0)
    y = bind(image.reshape(-1, *image.shape[2:]), other)
    return y.reshape(*image.shape[:2], *y.shape[1:]), 0


def _map(bind, a, da, b, db):
    size = a.shape[da] if da is not None else b.shape[db]
    a = jnp.moveaxis(a, da, 0) if da is not None else jnp.broadcast_to(a, (size, *a.shape))
    b = jnp.moveaxis(b, db, 0) if db is not None else jnp.broadcast_to(b, (size, *b.shape))
    return lax.map(lambda ab: bind(*ab), (a, b)), 0


def _conv_batch(args, dims, **params):
    (x, kernel), (dx, dk) = args, dims
    bind = functools.partial(_conv_p.bind, **params)
    if dk is None:
        return _fold(bind, x, dx, kernel)
    return _map(bind, x, dx, kernel, dk)


def _input_grad_batch(args, dims, *, x_shape, **params):
    (g, kernel), (dg, dk) = args, dims
    if dk is None:
        size = g.shape[dg]
        shape = (size * x_shape[0], *x_shape[1:])
        bind = functools.partial(_input_grad_p.bind, x_shape=shape, **params)
        return _fold(bind, g, dg, kernel)
    bind = functools.partial(_input_grad_p.bind, x_shape=x_shape, **params)
    return _map(bind, g, dg, kernel, dk)


def _kernel_grad_batch(args, dims, **params):
    (x, g), (dx, dg) = args, dims
    return _map(functools.partial(_kernel_grad_p.bind, **params), x, dx, g, dg)


def _primitive(name, impl, abstract, transposes, batch, static):
    p = Primitive(name)
    p.def_impl(jax.jit(impl, static_argnames=static, inline=True))
    p.def_abstract_eval(abstract)
    mlir.register_lowering(p, mlir.lower_fun(impl, multiple_results=False))
    ad.defbilinear(p, *transposes)
    batching.primitive_batchers[p] = batch
    return p


_STATIC = ("groups", "strides", "pads", "dilation", "precision")
_conv_p = _primitive(
    "se_flax_grouped_conv",
    _conv_impl,
    _conv_abstract,
    (_conv_t_x, _conv_t_k),
    _conv_batch,
    _STATIC,
)
_input_grad_p = _primitive(
    "se_flax_grouped_conv_input_grad",
    _input_grad_impl,
    _input_grad_abstract,
    (_input_grad_t_g, _input_grad_t_k),
    _input_grad_batch,
    ("x_shape", *_STATIC),
)
_kernel_grad_p = _primitive(
    "se_flax_grouped_conv_kernel_grad",
    _kernel_grad_impl,
    _kernel_grad_abstract,
    (_kernel_grad_t_x, _kernel_grad_t_g),
    _kernel_grad_batch,
    ("kernel_shape", *_STATIC),
)


# ------------------------------------------------------------------------------------------
# The fusion boundary.


def fusion_boundary(x: jax.Array) -> jax.Array:
    """``x``, computed once into a buffer on CPUs: what the backbones put at their blocks'
    outputs.

    XLA's CPU backend fuses elementwise work into each of its consumers, and a block's output
    (BatchNorm, attention gate, shortcut sum, activation) has several: the next block's first
    convolution and its shortcut, and in training the backward pass. Fused into each, it is
    computed again in each; ``jax.lax.optimization_barrier`` does not stop this (XLA's CPU
    pipeline removes barriers before fusion). A custom call does: this one, se_flax's
    ``SeFlaxFusionBoundary`` kernel, returns its operand in place (XLA aliases the output to
    the input; a copy where it cannot). Inference, batch 8, float32, on a 2-core Xeon
    (interleaved processes, two each): regnety_016 169 to 149-153 ms, seresnext50_32x4d 352-384
    to 328-350, efficientnet_b0 91-92 to 85-90.

    The identity everywhere else (other backends, kernels not built, programs over several
    devices, whose partitioner would replicate the call), and the identity's
    derivatives (its JVP and transpose put the boundary on the tangent and cotangent); any dtype
    and shape, and under ``vmap``. Values are unchanged; what XLA fuses around it can round a
    sum in another order (efficientnet_b0's float32 training gradients: 5e-7 relative).
    """
    return _boundary_p.bind(x)


def _boundary_cpu_lowering(ctx, x):
    # The kernel only in a one-device program: XLA's SPMD partitioner replicates a custom call
    # it knows no sharding rule for (an all-gather of a batch-sharded operand before it,
    # measured), so a program over several devices (or inside shard_map) gets the identity.
    one_device = getattr(ctx.module_context.axis_context, "num_devices", None) == 1
    if _library() is None or not one_device:
        return [x]
    return jax.ffi.ffi_lowering(_BOUNDARY, operand_output_aliases={0: 0})(ctx, x)


_boundary_p = Primitive("se_flax_fusion_boundary")
_boundary_p.def_impl(jax.jit(_boundary_p.bind))
_boundary_p.def_abstract_eval(lambda x: x)
mlir.register_lowering(_boundary_p, lambda ctx, x: [x])  # other backends: the identity
mlir.register_lowering(_boundary_p, _boundary_cpu_lowering, platform="cpu")
ad.deflinear2(_boundary_p, lambda ct, x: [_boundary_p.bind(ct)])
batching.defvectorized(_boundary_p)
