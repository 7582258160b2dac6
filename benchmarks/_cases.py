"""What can be measured: workloads, modes, shapes, and the plan of cases for one run."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

from se_common import SelectiveKernelConfig, get_model

WORKLOADS = {
    "se_fwd": "SE block forward",
    "se_fwdbwd": "SE block forward + backward (input and parameter gradients)",
    "sk_fwd": "SK block forward, eval mode (BatchNorm running statistics)",
    "sk_fwdbwd": "SK block forward + backward (input and parameter gradients), train mode "
    "(batch statistics; running statistics updated)",
    "infer": "whole network, eval-mode forward",
    "train": "whole network, one SGD training step (forward, loss, backward, update)",
    "convs": "grouped and depthwise 3x3/5x5 convolutions alone (ResNeXt, RegNetY and depthwise "
    "shapes), forward and forward + backward (input and kernel gradients), float32",
}
SE_WORKLOADS = ("se_fwd", "se_fwdbwd")
SK_WORKLOADS = ("sk_fwd", "sk_fwdbwd")
BLOCK_WORKLOADS = SE_WORKLOADS + SK_WORKLOADS
MODEL_WORKLOADS = ("infer", "train")
# The record workloads of `convs`: forward, and forward + backward (output, input and kernel
# gradients), as se_fwd / se_fwdbwd.
CONV_WORKLOADS = ("conv_fwd", "conv_fwdbwd")
# Forward-only workloads run in eval mode, the others in train mode (matters for BatchNorm).
EVAL_WORKLOADS = ("se_fwd", "sk_fwd", "infer")

# mode -> (framework, description). Mode names are unique, so a mode implies its framework.
MODES = {
    "jit": ("jax", "jax.jit of the linen module (convs: of se_flax.conv_general_dilated), NHWC"),
    "jit_donate": ("jax", "jax.jit, NHWC, input (se_*, sk_*) or train state (train) donated"),
    "xla_jit": ("jax", "jax.jit of jax.lax.conv_general_dilated: XLA's own convolution (convs)"),
    "nnx_jit": ("jax", "NNX model under nnx.jit (infer, train), NHWC"),
    "nnx_tree": ("jax", "NNX model under nnx.jit(graph=False), modules as pytrees, NHWC"),
    "nnx_split": ("jax", "NNX model: nnx.split once, jax.jit over the state (infer, train), NHWC"),
    "eager": ("torch", "PyTorch eager, NCHW"),
    "channels_last": ("torch", "PyTorch eager, channels_last"),
    "compile": ("torch", "torch.compile (inductor), NCHW"),
}
# The NNX twins of the linen networks (se_flax.nnx), same weights and inputs as `jit`.
NNX_MODES = ("nnx_jit", "nnx_tree", "nnx_split")
# Donation has nothing to reuse at inference: the input is not the size of the output. (A
# block's input is: SE's always, SK's at stride 1 with in = out channels, as benchmarked.)
# NNX modes run the networks only. `xla_jit` runs the convolutions only, which run neither
# donation, NNX nor torch.compile (one operator: PyTorch's eager call is oneDNN's kernel).
NOT_APPLICABLE = (
    {("infer", "jit_donate")}
    | {(workload, mode) for workload in BLOCK_WORKLOADS for mode in NNX_MODES}
    | {(workload, "xla_jit") for workload in BLOCK_WORKLOADS + MODEL_WORKLOADS}
    | {(w, m) for w in CONV_WORKLOADS for m in ("jit_donate", "compile", *NNX_MODES)}
)
DTYPES = ("float32", "bfloat16")
# The convolutions run in float32 only (se_flax's grouped kernels compute in float32 /
# float64; bfloat16 runs them in float32 and rounds once): other --dtypes plan no conv case.
CONV_DTYPES = ("float32",)
ITEMSIZE = {"float32": 4, "bfloat16": 2}

# (H, W, C) of the feature map each ResNet-50 stage hands to its SE blocks (bottleneck outputs).
RESNET50_STAGES = {
    "stage1": (56, 56, 256),
    "stage2": (28, 28, 512),
    "stage3": (14, 14, 1024),
    "stage4": (7, 7, 2048),
}
# --quick: the same four stages, 8x smaller in channels and 7-8x in resolution.
QUICK_STAGES = {
    "stage1": (8, 8, 32),
    "stage2": (4, 4, 64),
    "stage3": (2, 2, 128),
    "stage4": (1, 1, 256),
}
# (H, W, C) of the feature map each ResNet-18 stage hands to the SK unit of its stride-1 blocks
# (SK-ResNet-18's first conv of every basic block but the strided ones; in = out channels).
RESNET18_STAGES = {
    "stage1": (56, 56, 64),
    "stage2": (28, 28, 128),
    "stage3": (14, 14, 256),
    "stage4": (7, 7, 512),
}
# --quick: the same four stages, 4x smaller in channels and 7-8x in resolution.
QUICK_SK_STAGES = {
    "stage1": (8, 8, 16),
    "stage2": (4, 4, 32),
    "stage3": (2, 2, 64),
    "stage4": (1, 1, 128),
}
# (M, K, N) of the roofline matmuls (M x K) @ (K x N): the im2col GEMMs of ResNet-50's 3x3
# convolutions at batch 8, 224x224 (stage 1 to 4), and a square one.
ROOFLINE_SHAPES = [
    (25088, 576, 64),
    (6272, 1152, 128),
    (1568, 2304, 256),
    (392, 4608, 512),
    (2048, 2048, 2048),
]
# --quick: small shapes, a smoke measurement (far from the machine's peak).
QUICK_ROOFLINE_SHAPES = [(784, 144, 16), (256, 256, 256)]
# The SK unit as skresnet18 builds it (timm's sk_kwargs: rd_ratio 1/8, rd_divisor 16, split input).
SK_CONFIG: SelectiveKernelConfig = get_model("skresnet18").config.sk
# --quick models: ResNet-50's bottleneck design and ResNet-18's basic design, one block per stage
# (14 and 10 layers), each with its attention twin: registered names with create_model options
# (config fields override the model's own, as timm's model_args do).
EXTRA_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet14": ("resnet50", {"layers": (1, 1, 1, 1)}),
    "seresnet14": ("seresnet50", {"layers": (1, 1, 1, 1)}),
    "resnet10": ("resnet18", {"layers": (1, 1, 1, 1)}),
    "skresnet10": ("skresnet18", {"layers": (1, 1, 1, 1)}),
}


@dataclass(frozen=True)
class ConvShape:
    """A convolution: NHWC input ``(batch, h, w, c)``, ``out`` output channels (``c`` unless
    given), ``groups`` groups (``c``: depthwise; 1: ungrouped), a ``kernel`` x ``kernel``
    window, ``stride``, padding ``kernel // 2`` on every side."""

    h: int
    w: int
    c: int
    groups: int
    kernel: int
    stride: int
    source: str = ""
    out: int | None = None

    @property
    def features(self) -> int:
        return self.c if self.out is None else self.out

    @property
    def padding(self) -> int:
        return self.kernel // 2

    def output_hw(self) -> tuple[int, int]:
        k, p, s = self.kernel, self.padding, self.stride
        return (self.h + 2 * p - k) // s + 1, (self.w + 2 * p - k) // s + 1

    def flops(self, batch: int) -> int:
        """2 x the multiply-adds of one forward call (taps on padding included)."""
        ho, wo = self.output_hw()
        return 2 * batch * ho * wo * self.features * (self.c // self.groups) * self.kernel**2


def _conv(h, w, c, groups, kernel, stride, source="", out=None) -> tuple[str, ConvShape]:
    kind = "dw" if groups == c else f"g{groups}"
    kind += "" if out is None else f"_o{out}"
    return f"{h}x{w}x{c}_{kind}_k{kernel}_s{stride}", ConvShape(
        h, w, c, groups, kernel, stride, source, out
    )


# The `convs` workload: the grouped 3x3 convolutions of ResNeXt-50 32x4d's stages and
# RegNetY-1.6GF's (group width 24), one at stride 2, depthwise 3x3 and 5x5 ones, and ungrouped
# stems and first-stage convolutions.
CONV_SHAPES: dict[str, ConvShape] = dict(
    [
        _conv(56, 56, 128, 32, 3, 1, "ResNeXt-50 32x4d stage 1"),
        _conv(28, 28, 256, 32, 3, 1, "ResNeXt-50 32x4d stage 2"),
        _conv(14, 14, 512, 32, 3, 1, "ResNeXt-50 32x4d stage 3"),
        _conv(7, 7, 1024, 32, 3, 1, "ResNeXt-50 32x4d stage 4"),
        _conv(28, 28, 120, 5, 3, 1, "RegNetY-1.6GF stage 2"),
        _conv(14, 14, 336, 14, 3, 1, "RegNetY-1.6GF stage 3"),
        _conv(7, 7, 888, 37, 3, 1, "RegNetY-1.6GF stage 4"),
        _conv(56, 56, 128, 32, 3, 2, "stride 2, ResNeXt-50 32x4d stage 1 width"),
        _conv(112, 112, 96, 96, 3, 1, "depthwise"),
        _conv(56, 56, 144, 144, 3, 1, "depthwise"),
        _conv(28, 28, 240, 240, 5, 1, "depthwise"),
        _conv(14, 14, 480, 480, 3, 1, "depthwise"),
        _conv(7, 7, 1152, 1152, 5, 1, "depthwise"),
        _conv(56, 56, 144, 144, 3, 2, "depthwise, stride 2"),
        # ungrouped convolutions with few input channels, which run se_flax's kernels too
        _conv(224, 224, 3, 1, 3, 2, "EfficientNet / RegNet stem", out=32),
        _conv(224, 224, 3, 1, 7, 2, "ResNet stem", out=64),
        _conv(112, 112, 32, 1, 3, 1, "ResNet-D deep stem"),
        _conv(56, 56, 64, 1, 3, 1, "ResNet-50 stage 1"),
        _conv(112, 112, 24, 1, 3, 1, "EfficientNetV2 stage 1 (edge residual)", out=96),
    ]
)
# Seconds that the timed repeats of one conv case may take (Runner.budget_s): XLA's grouped
# backward runs seconds per call (10-14 s at 8x56x56x128, 32 groups, on 2 cores); every conv
# case, in both frameworks, follows the same rule.
CONV_BUDGET_S = 10.0
# --quick: two small shapes (XLA's grouped backward takes about a second per call at batch 8).
QUICK_CONV_SHAPES = ("14x14x336_g14_k3_s1", "14x14x480_dw_k3_s1")
# Model-name prefix of an attention network -> its label; "<prefix><plain>" is <plain>'s twin.
ATTENTION_PREFIXES = {"se": "SE", "sk": "SK"}


def model_options(name: str) -> tuple[str, dict[str, Any]]:
    """The registered name and ``create_model`` options of a benchmark's network."""
    return EXTRA_MODELS.get(name, (name, {}))


def sk_options() -> dict[str, Any]:
    """Keyword arguments of both frameworks' ``SelectiveKernel``: skresnet18's SK unit."""
    return asdict(SK_CONFIG)


def attention_pairs(models: list[str]) -> list[tuple[str, str, str]]:
    """(attention model, its plain twin, label) for each attention model whose twin is listed."""
    pairs = []
    for model in models:
        for prefix, label in ATTENTION_PREFIXES.items():
            plain = model.removeprefix(prefix)
            if plain != model and plain in models:
                pairs.append((model, plain, label))
    return pairs


@dataclass(frozen=True)
class Case:
    """One measurement. ``shape`` is the logical NHWC input shape, whatever the layout."""

    workload: str
    framework: str
    mode: str
    dtype: str
    name: str  # "stage1".."stage4" for blocks, a CONV_SHAPES name for convs, else the model
    batch: int
    shape: tuple[int, int, int, int]

    @property
    def layout(self) -> str:
        return {"jax": "NHWC", "channels_last": "NCHW (channels_last)"}.get(
            self.framework if self.framework == "jax" else self.mode, "NCHW"
        )

    @property
    def input_bytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]

    def key(self) -> tuple:
        return (self.workload, self.mode, self.dtype, self.name, self.batch)

    def as_record(self) -> dict:
        return {**asdict(self), "shape": list(self.shape), "layout": self.layout}


def plan(
    workloads: list[str],
    modes: list[str],
    dtypes: list[str],
    stages: dict[str, tuple[int, int, int]],
    se_batch: int,
    sweep_stage: str | None,
    sweep_batches: list[int],
    sk_stages: dict[str, tuple[int, int, int]],
    sk_batch: int,
    models: list[str],
    model_batch: int,
    image_size: int,
    conv_shapes: list[str] = (),
    conv_batch: int = 8,
) -> list[Case]:
    """Every case of a run, each once, grouped so that one setting's modes run side by side.
    ``convs`` plans its two record workloads (``CONV_WORKLOADS``) at ``conv_shapes``, in
    ``CONV_DTYPES`` only."""
    settings: list[tuple[str, str, int, tuple[int, int, int, int]]] = []
    for workload in workloads:
        if workload in SE_WORKLOADS:
            points = [(name, se_batch) for name in stages]
            if sweep_stage is not None:
                points += [(sweep_stage, b) for b in sweep_batches]
            for name, batch in dict.fromkeys(points):
                settings.append((workload, name, batch, (batch, *stages[name])))
        elif workload in SK_WORKLOADS:
            for name, hwc in sk_stages.items():
                settings.append((workload, name, sk_batch, (sk_batch, *hwc)))
        elif workload == "convs":
            for conv_workload in CONV_WORKLOADS:
                for name in conv_shapes:
                    conv = CONV_SHAPES[name]
                    shape = (conv_batch, conv.h, conv.w, conv.c)
                    settings.append((conv_workload, name, conv_batch, shape))
        else:
            for model in models:
                shape = (model_batch, image_size, image_size, 3)
                settings.append((workload, model, model_batch, shape))
    cases = []
    for (workload, name, batch, shape), dtype, mode in itertools.product(settings, dtypes, modes):
        if workload in CONV_WORKLOADS and dtype not in CONV_DTYPES:
            continue
        if (workload, mode) not in NOT_APPLICABLE:
            cases.append(Case(workload, MODES[mode][0], mode, dtype, name, batch, shape))
    return cases
