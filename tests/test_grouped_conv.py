"""se_flax's grouped and depthwise CPU kernels (se_flax._grouped) against XLA's convolution:
values, input and kernel gradients, forward mode and second derivatives, vmap and jit, for
every stride, dilation and padding mode; the Conv layers (linen, NNX) against nn.Conv; the
lowering elsewhere than on CPUs."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import se_flax
import se_flax.nnx as se_nnx
from se_flax import conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")

# (case, N, H, W, C, O, groups, kernel, strides, dilation, padding): group widths C / groups
# of 1 (depthwise), 4, 8, 24 and 64, channel multipliers (O > C), widths that fill no vector
# (C = 6, 12, 20), odd and even sizes, every padding mode.
CASES = [
    ("depthwise", 2, 9, 8, 16, 16, 16, 3, (1, 1), (1, 1), "SAME"),
    ("depthwise-s2", 2, 9, 10, 24, 24, 24, 3, (2, 2), (1, 1), ((1, 1), (1, 1))),
    ("depthwise-k5-valid", 1, 9, 9, 8, 8, 8, 5, (1, 1), (1, 1), "VALID"),
    ("depthwise-multiplier", 2, 6, 7, 8, 16, 8, 3, (1, 2), (1, 1), ((1, 0), (2, 1))),
    ("depthwise-odd-channels", 2, 7, 6, 6, 6, 6, 3, (2, 1), (2, 1), "SAME"),
    ("width4", 2, 8, 9, 32, 32, 8, 3, (1, 1), (1, 1), ((1, 1), (1, 1))),
    ("width4-s2", 2, 11, 10, 16, 16, 4, 3, (2, 2), (1, 1), "SAME"),
    ("width4-dilated", 1, 10, 10, 16, 16, 4, 3, (1, 1), (2, 2), ((2, 2), (2, 2))),
    ("width8", 2, 7, 7, 32, 32, 4, 3, (1, 1), (1, 1), "SAME"),
    ("width8-asym", 2, 8, 7, 16, 32, 2, 3, (2, 1), (1, 2), ((0, 2), (3, 0))),
    ("width24", 1, 6, 6, 48, 48, 2, 3, (1, 1), (1, 1), ((1, 1), (1, 1))),
    ("width24-s2", 2, 7, 8, 72, 72, 3, 3, (2, 2), (1, 1), "SAME"),
    ("width64", 1, 5, 5, 128, 128, 2, 3, (1, 1), (1, 1), "SAME"),
    ("width64-valid-s2", 1, 7, 7, 128, 64, 2, 3, (2, 2), (1, 1), "VALID"),
    ("width3-k2", 2, 6, 5, 12, 12, 4, 2, (1, 1), (1, 1), ((0, 1), (1, 0))),
    ("width5-wide-pad", 1, 4, 4, 20, 20, 4, 3, (1, 1), (1, 1), ((3, 2), (2, 3))),
    ("width2-k7", 1, 9, 9, 16, 16, 8, 7, (1, 1), (1, 1), "SAME"),
    ("width4-k9", 1, 10, 10, 16, 16, 4, 9, (1, 1), (1, 1), "SAME"),  # 81 taps: scalar path
    # weights over 128 KB: a task per group and image, from a padded slice (three chunks a
    # group in float32, and the kernel gradient summed per group)
    ("width24-units", 2, 7, 7, 192, 192, 8, 3, (1, 1), (1, 1), "SAME"),
    # an odd count of 24-wide groups with weights over 128 KB (float32, 64-byte vectors: two
    # groups a block split over three chunks, the last unit one group, at stride 2; at stride 1
    # odd counts keep 32-byte chunks)
    ("width24-units-odd", 1, 6, 7, 264, 264, 11, 3, (1, 1), (1, 1), "SAME"),
    ("width24-units-odd-s2", 1, 7, 7, 264, 264, 11, 3, (2, 2), (1, 1), "SAME"),
    ("depthwise-k5-edges", 2, 7, 7, 64, 64, 64, 5, (1, 1), (1, 1), "SAME"),  # most pixels at ends
    # several groups a chunk with weights over 128 KB: slices too (the float32 run takes the
    # second: 16 lanes, two 8-wide groups a chunk)
    ("width4-units-s2", 1, 7, 6, 1024, 1024, 256, 3, (2, 2), (1, 1), "SAME"),
    ("width8-units", 1, 6, 6, 512, 512, 64, 3, (1, 1), (1, 1), "SAME"),
    # ungrouped convolutions with few input channels (stems, first stages): one group
    ("ungrouped-stem-s2", 2, 11, 10, 3, 32, 1, 3, (2, 2), (1, 1), "SAME"),
    ("ungrouped-k7-stem", 1, 13, 12, 3, 16, 1, 7, (2, 2), (1, 1), ((3, 3), (3, 3))),
    ("ungrouped-8-dilated", 2, 9, 9, 8, 24, 1, 3, (1, 1), (2, 2), "SAME"),
    ("ungrouped-64-to-80", 1, 6, 7, 64, 80, 1, 3, (1, 1), (1, 1), ((1, 1), (1, 1))),
]
IDS = [c[0] for c in CASES]

# float32: each result's worst error relative to its largest magnitude, as data.
FLOAT32_TOLERANCE = {"y": 2e-6, "dx": 2e-6, "dk": 1e-5}


def tf_same_pads(size, kernel, stride, dilation):
    """TensorFlow's dynamic "SAME" padding of one axis (timm's Conv2dSame, pad_same): the total
    that keeps ceil(size / stride) outputs, the odd one at the end."""
    effective = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def make(case, dtype, rng):
    _, n, h, w, c, o, groups, k, strides, dilation, padding = case
    x = jnp.asarray(rng.standard_normal((n, h, w, c)), dtype)
    kernel = jnp.asarray(rng.standard_normal((k, k, c // groups, o)), dtype)
    return x, kernel, groups, strides, dilation, padding


def ours(x, kernel, groups, strides, dilation, padding):
    return conv_general_dilated(
        x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC,
        feature_group_count=groups,
    )  # fmt: skip


def xla(x, kernel, groups, strides, dilation, padding):
    return lax.conv_general_dilated(
        x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC,
        feature_group_count=groups, precision=lax.Precision.HIGHEST,
    )  # fmt: skip


def relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def value_and_grads(conv, x, kernel, cotangent, *geometry):
    y, vjp = jax.vjp(lambda x, k: conv(x, k, *geometry), x, kernel)
    return (y, *vjp(cotangent))


def test_kernels_are_built():
    # The development install builds them (setup.py); without them every grouped conv runs
    # XLA's, 40-700x slower in training, and the tests below would compare XLA with itself.
    assert se_flax.kernels_built()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float64_values_and_gradients_at_rounding_level(case, rng):
    x, kernel, *geometry = make(case, jnp.float64, rng)
    y0 = xla(x, kernel, *geometry)
    cotangent = jnp.asarray(rng.standard_normal(y0.shape))
    want = value_and_grads(xla, x, kernel, cotangent, *geometry)
    got = jax.jit(functools.partial(value_and_grads, ours), static_argnums=range(3, 7))(
        x, kernel, cotangent, *geometry
    )
    jaxpr = str(jax.make_jaxpr(lambda x, k: jax.vjp(lambda x, k: ours(x, k, *geometry), x, k))(
        x, kernel
    ))  # fmt: skip
    assert "se_flax_grouped_conv" in jaxpr  # the kernels ran, not XLA's convolution
    for name, a, b in zip(("y", "dx", "dk"), got, want, strict=True):
        assert relative(a, b) < 1e-13, name


# every third case, and the 24-wide groups (split over 64-byte chunks in float32 only)
FLOAT32_CASES = [c for i, c in enumerate(CASES) if i % 3 == 0 or c[0].startswith("width24")]


@pytest.mark.parametrize("case", FLOAT32_CASES, ids=[c[0] for c in FLOAT32_CASES])
def test_float32_within_tolerances(case, rng):
    x, kernel, *geometry = make(case, jnp.float32, rng)
    y0 = xla(x, kernel, *geometry)
    cotangent = jnp.asarray(rng.standard_normal(y0.shape), jnp.float32)
    got = value_and_grads(ours, x, kernel, cotangent, *geometry)
    want = value_and_grads(xla, x, kernel, cotangent, *geometry)
    for name, a, b in zip(("y", "dx", "dk"), got, want, strict=True):
        assert a.dtype == jnp.float32
        assert relative(a, b) < FLOAT32_TOLERANCE[name], name


@pytest.mark.parametrize("size", [7, 8, 9, 10])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_tensorflow_dynamic_same_padding(size, stride, rng):
    case = ("tf-same", 1, size, size + 1, 8, 8, 2, 3, (stride, stride), (1, 2), None)
    x, kernel, groups, strides, dilation, _ = make(case, jnp.float64, rng)
    pads = tuple(tf_same_pads(s, 3, stride, d) for s, d in zip(x.shape[1:3], dilation, strict=True))
    want = xla(x, kernel, groups, strides, dilation, pads)
    assert want.shape[1:3] == (-(-size // stride), -(-(size + 1) // stride))
    for padding in (pads, "SAME"):  # XLA's "SAME" is TensorFlow's
        assert relative(ours(x, kernel, groups, strides, dilation, padding), want) < 1e-13


def test_vmap_over_images_kernels_and_both(rng):
    x, kernel, *geometry = make(CASES[6], jnp.float64, rng)
    xs = jnp.asarray(rng.standard_normal((3, *x.shape)))
    ks = jnp.asarray(rng.standard_normal((3, *kernel.shape)))
    for axes, args in (((0, None), (xs, kernel)), ((None, 0), (x, ks)), ((0, 0), (xs, ks))):
        got = jax.jit(jax.vmap(lambda x, k: ours(x, k, *geometry), axes))(*args)
        want = jax.vmap(lambda x, k: xla(x, k, *geometry), axes)(*args)
        assert relative(got, want) < 1e-13, axes

    # per-example gradients: the gradients' primitives batched too
    def loss(conv, x, k):
        return jnp.sum(jnp.tanh(conv(x, k, *geometry)))

    for axes in ((0, None), (0, 0)):
        k_arg = kernel if axes[1] is None else ks
        got = jax.jit(jax.vmap(jax.grad(functools.partial(loss, ours), (0, 1)), axes))(xs, k_arg)
        want = jax.vmap(jax.grad(functools.partial(loss, xla), (0, 1)), axes)(xs, k_arg)
        for a, b in zip(got, want, strict=True):
            assert relative(a, b) < 1e-12, axes


def test_forward_mode_and_second_derivatives(rng):
    x, kernel, *geometry = make(CASES[9], jnp.float64, rng)
    tx, tk = (jnp.asarray(rng.standard_normal(a.shape)) for a in (x, kernel))

    def loss(conv, x, k):
        return jnp.sum(jnp.sin(conv(x, k, *geometry)))

    for conv_pair in ((ours, xla),):
        jvps = [
            jax.jvp(lambda x, k, c=c: c(x, k, *geometry), (x, kernel), (tx, tk)) for c in conv_pair
        ]
        for a, b in zip(*jvps, strict=True):
            assert relative(a, b) < 1e-13
        # Hessian-vector products: derivatives of the gradients' primitives
        hvps = [
            jax.jvp(jax.grad(functools.partial(loss, c), (0, 1)), (x, kernel), (tx, tk))[1]
            for c in conv_pair
        ]
        for a, b in zip(*hvps, strict=True):
            assert relative(a, b) < 1e-12


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16_bits_accumulate_in_float32_and_round_once(dtype, rng):
    x, kernel, *geometry = make(CASES[7], dtype, rng)
    cotangent = jnp.asarray(rng.standard_normal(ours(x, kernel, *geometry).shape), dtype)
    got = value_and_grads(ours, x, kernel, cotangent, *geometry)
    wide = [a.astype(jnp.float32) for a in (x, kernel, cotangent)]
    want = value_and_grads(ours, *wide, *geometry)  # the float32 kernels, then one rounding
    for name, a, b in zip(("y", "dx", "dk"), got, want, strict=True):
        assert a.dtype == dtype, name
        np.testing.assert_array_equal(
            np.asarray(a, np.float32), np.asarray(b.astype(dtype), np.float32)
        )
    exact = xla(*(a.astype(jnp.float64) for a in (x, kernel)), *geometry)
    assert relative(got[0], exact) < 2.0**-7  # within a 16-bit rounding of the exact result


def test_layers_are_drop_in_for_flax_convs(rng):
    x = jnp.asarray(rng.standard_normal((2, 9, 9, 24)))
    options = {"feature_group_count": 3, "strides": (2, 2), "kernel_dilation": (1, 2)}
    ours_linen = se_flax.Conv(12, (3, 3), param_dtype=jnp.float64, **options)
    theirs_linen = nn.Conv(12, (3, 3), param_dtype=jnp.float64, **options)
    variables = theirs_linen.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours_linen.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, variables
    )
    assert relative(ours_linen.apply(variables, x), theirs_linen.apply(variables, x)) < 1e-13

    ours_nnx = se_nnx.Conv(24, 12, (3, 3), param_dtype=jnp.float64, rngs=nnx.Rngs(0), **options)
    theirs_nnx = nnx.Conv(24, 12, (3, 3), param_dtype=jnp.float64, rngs=nnx.Rngs(0), **options)
    np.testing.assert_array_equal(ours_nnx.kernel[...], theirs_nnx.kernel[...])
    assert relative(ours_nnx(x), theirs_nnx(x)) < 1e-13
    jaxpr = str(jax.make_jaxpr(lambda x: ours_nnx(x))(x))
    assert "se_flax_grouped_conv" in jaxpr


def test_other_cases_keep_xlas_convolution():
    x = jnp.ones((1, 6, 6, 8), jnp.bfloat16)
    k = jnp.ones((3, 3, 2, 8), jnp.bfloat16)
    cases = {
        "ungrouped, 72 channels": (
            jnp.ones((1, 6, 6, 72), jnp.float32), jnp.ones((3, 3, 72, 8), jnp.float32), {}
        ),
        "ungrouped 1x1": (x.astype(jnp.float32), jnp.ones((1, 1, 8, 8), jnp.float32), {}),
        "ungrouped bfloat16": (x, jnp.ones((3, 3, 8, 8), jnp.bfloat16), {}),
        "input dilation": (
            x.astype(jnp.float32),
            k.astype(jnp.float32),
            {"lhs_dilation": (2, 2), "padding": ((1, 1), (1, 1))},
        ),
        "negative pad": (
            x.astype(jnp.float32), k.astype(jnp.float32), {"padding": ((-1, 1), (0, 0))}
        ),
    }  # fmt: skip
    for name, (a, b, extra) in cases.items():
        groups = a.shape[-1] // b.shape[2]
        kw = {"padding": "SAME", **extra}
        jaxpr = str(jax.make_jaxpr(
            lambda a, b, kw=kw, g=groups: conv_general_dilated(
                a, b, (1, 1), dimension_numbers=NHWC, feature_group_count=g, **kw
            )
        )(a, b))  # fmt: skip
        assert "se_flax_grouped_conv" not in jaxpr and "conv_general_dilated" in jaxpr, name


def test_other_backends_lower_to_xlas_convolution():
    # Lowered for a GPU (no GPU needed to lower): XLA's convolution, no call of the CPU kernels;
    # for the CPU, the kernels.
    x = jax.ShapeDtypeStruct((2, 8, 8, 16), jnp.float32)
    k = jax.ShapeDtypeStruct((3, 3, 4, 16), jnp.float32)

    def train_step(x, k):
        return jax.grad(lambda x, k: jnp.sum(ours(x, k, 4, (2, 2), (1, 1), "SAME") ** 2), (0, 1))(
            x, k
        )

    gpu = jax.jit(train_step).trace(x, k).lower(lowering_platforms=("cuda",)).as_text()
    assert "SeFlaxGroupedConv" not in gpu and gpu.count("stablehlo.convolution") == 3
    cpu = jax.jit(train_step).trace(x, k).lower(lowering_platforms=("cpu",)).as_text()
    for target in (
        "SeFlaxGroupedConv",
        "SeFlaxGroupedConvInputGrad",
        "SeFlaxGroupedConvKernelGrad",
    ):
        assert f"custom_call @{target}(" in cpu, target
    assert "stablehlo.convolution" not in cpu


@pytest.mark.parametrize(
    ("c", "o", "want"),
    [
        # (input channels, output channels): the passes on the kernels, the others XLA's
        (3, 32, {"SeFlaxGroupedConv", "SeFlaxGroupedConvKernelGrad"}),
        (8, 64, {"SeFlaxGroupedConv", "SeFlaxGroupedConvInputGrad", "SeFlaxGroupedConvKernelGrad"}),
        (64, 128, {"SeFlaxGroupedConvInputGrad", "SeFlaxGroupedConvKernelGrad"}),
    ],
)
def test_ungrouped_passes_run_where_measured_faster(c, o, want):
    # One training step's passes, x and the kernel both differentiated: each runs the kernel
    # or XLA's convolution by se_flax._grouped's rules; the rest are XLA's convolutions.
    x = jax.ShapeDtypeStruct((2, 8, 8, c), jnp.float32)
    k = jax.ShapeDtypeStruct((3, 3, c, o), jnp.float32)

    def train_step(x, k):
        return jax.grad(lambda x, k: jnp.sum(ours(x, k, 1, (2, 2), (1, 1), "SAME") ** 2), (0, 1))(
            x, k
        )

    cpu = jax.jit(train_step).trace(x, k).lower(lowering_platforms=("cpu",)).as_text()
    targets = ("SeFlaxGroupedConv", "SeFlaxGroupedConvInputGrad", "SeFlaxGroupedConvKernelGrad")
    assert {t for t in targets if f"custom_call @{t}(" in cpu} == want
    assert cpu.count("stablehlo.convolution") == 3 - len(want)


def test_models_with_grouped_convs_use_the_kernels():
    model = se_flax.create_model("seresnext50_32x4d", layers=(1, 1, 1, 1))
    x = jnp.ones((1, 32, 32, 3), jnp.float32)
    jaxpr = str(jax.make_jaxpr(lambda x: model.init(jax.random.key(0), x))(x))
    assert "se_flax_grouped_conv" in jaxpr
