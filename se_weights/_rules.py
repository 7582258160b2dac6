"""The conversion rule tables: which PyTorch layers map to which Flax layers, tensor by tensor.

With the PyTorch module at hand (``torch_to_flax(module)``, and always for ``flax_to_torch``),
a layer's *type* chooses its rule, whatever its name (:data:`LAYER_RULES`):

1. the rules whose ``torch_types`` name a class of the layer's type (a subclass counts) are the
   candidates, user ``rules=`` first; the first is the type's default;
2. inside this library's, timm's and torchvision's SE-family layers, :data:`CONTEXTS` give
   named children another Flax name or another candidate (their 1x1 convolutions are Flax
   ``Dense`` layers);
3. where no Context names a layer, the :data:`RULES` row that a state_dict's key would take
   (its name pattern matches the module path, and the row takes the layer's type) gives the
   layer's Flax module name: the row's ``flax_module`` (the classic recipe's ``fc.0`` is
   ``fc1``, in any class of one's own), else the PyTorch name's; so a module and its state_dict
   convert to the same tree. No row: the PyTorch name's (``a.b.0.c`` is ``a/b_0/c``);
4. with a ``target`` (the Flax variables, or their shapes), the candidate whose Flax leaves are
   exactly the target's at that path wins (a 1x1 ``Conv2d`` as a ``Dense`` kernel ``(I, O)`` or a
   ``Conv`` kernel ``(1, 1, I, O)``; a BatchNorm with or without ``num_batches_tracked``); where
   step 3 gave a row's ``flax_module``, a target holding the layer under its PyTorch name
   instead (``fc_0``) is taken too;
5. without a target, a layer whose name a :data:`RULES` row claims for another layout (a 1x1
   ``Conv2d`` named ``fc1`` outside an SE layer) is ambiguous: an error names both options.

From a bare state_dict (no module objects: files from timm, torchvision, the classic recipe),
names choose (:data:`RULES`):

1. the rules whose name pattern matches the end of the module path are the candidates;
2. rules marked ``by_type_only`` drop out, since their name alone is shared with another kind;
3. of those left, the rule naming more path segments wins (``se.conv`` over ``conv``);
4. still tied, the rules that the module's tensor names fit (each one of the rule's, every
   required one of the collections asked for there) win: timm's ``downsample.1`` is a
   bias-free conv (``weight`` only) after an average pool, else a BatchNorm (``weight``,
   ``bias`` and its statistics);
5. anything still tied is an error, never a guess; so is a name no row matches. Both errors
   say to pass the module instead, whose layer types decide.

Wherever the names decide, the module and the state_dict give the same Flax tree, bit for bit;
where they cannot, the state_dict is an error, never a different tree.

A tensor's rank is only ever checked against what a rule declares, never used to choose a rule.
Supporting a new layer kind means adding a row (or passing ``rules=``), not a code path in the
engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CONTEXTS",
    "CONV",
    "CONV1D",
    "CONV1X1_AS_DENSE",
    "CONV3D",
    "CONV_TRANSPOSE2D",
    "COUNTER",
    "IDENTITY",
    "LAYER_RULES",
    "LINEAR",
    "LINEAR_AS_CONV1X1",
    "RULES",
    "Child",
    "Context",
    "Layout",
    "Rule",
    "Tensor",
]


FLOATS = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class Layout:
    """A bit-exact, invertible move of one tensor between the PyTorch and Flax layouts.

    Attributes:
        name: what the layout is, for error messages.
        torch_shape: the expected PyTorch shape as a pattern: ints must match, ``None`` is free;
            ``None`` for the whole pattern accepts any shape.
        to_flax, to_torch: the moves (pure transposes/reshapes: no arithmetic). They may raise
            ``ValueError`` for a value that cannot move exactly.
        dtypes: PyTorch dtype name -> Flax dtype name; anything else is refused.
    """

    name: str
    torch_shape: tuple[int | None, ...] | None
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]
    dtypes: Mapping[str, str] = field(default_factory=lambda: {f: f for f in FLOATS})

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether a PyTorch tensor of this shape matches ``torch_shape``."""
        pattern = self.torch_shape
        return pattern is None or (
            len(shape) == len(pattern)
            and all(p is None or p == s for p, s in zip(pattern, shape, strict=True))
        )

    def torch_problem(self, shape: tuple[int, ...], dtype: str) -> str | None:
        """Why a PyTorch tensor of this shape and dtype does not fit, or ``None``."""
        if not self.fits(shape):
            return f"shape {tuple(shape)} is not a {self.name}"
        if dtype not in self.dtypes:
            return f"dtype {dtype} is not one of {', '.join(self.dtypes)} for a {self.name}"
        return None

    def flax_shape(self, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.to_flax(np.zeros(torch_shape, np.int8)).shape


def _counter_to_flax(a: np.ndarray) -> np.ndarray:
    if a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
        raise ValueError(f"counter value {a.max()} does not fit in int32")
    return a.astype(np.int32)


IDENTITY = Layout("tensor", None, lambda a: a, lambda a: a)
# BatchNorm's num_batches_tracked: int64 in PyTorch, int32 in Flax (JAX's integer without x64).
# The value is kept exactly; one that does not fit in int32 is refused.
COUNTER = Layout(
    "int64 counter", (), _counter_to_flax, lambda a: a.astype(np.int64), {"int64": "int32"}
)
# nn.Linear weight (out, in) <-> Dense kernel (in, out).
LINEAR = Layout("Linear weight (O, I)", (None, None), lambda a: a.T, lambda a: a.T)
# A 1x1 nn.Conv2d used as a fully connected layer (timm, torchvision SE) <-> Dense kernel (in, out).
CONV1X1_AS_DENSE = Layout(
    "1x1 Conv2d weight (O, I, 1, 1)",
    (None, None, 1, 1),
    lambda a: a[:, :, 0, 0].T,
    lambda a: a.T[:, :, None, None],
)
# nn.Conv2d weight (O, I/groups, kH, kW) <-> Conv kernel (kH, kW, I/groups, O).
CONV = Layout(
    "Conv2d weight (O, I, kH, kW)",
    (None, None, None, None),
    lambda a: a.transpose(2, 3, 1, 0),
    lambda a: a.transpose(3, 2, 0, 1),
)

# nn.Conv1d weight (O, I/groups, k) <-> 1-D Conv kernel (k, I/groups, O) (ECA's conv).
CONV1D = Layout(
    "Conv1d weight (O, I, k)",
    (None, None, None),
    lambda a: a.transpose(2, 1, 0),
    lambda a: a.transpose(2, 1, 0),
)
# nn.Conv3d weight (O, I/groups, kD, kH, kW) <-> Conv kernel (kD, kH, kW, I/groups, O).
CONV3D = Layout(
    "Conv3d weight (O, I, kD, kH, kW)",
    (None, None, None, None, None),
    lambda a: a.transpose(2, 3, 4, 1, 0),
    lambda a: a.transpose(4, 3, 0, 1, 2),
)
# nn.ConvTranspose2d weight (I, O, kH, kW) <-> nn.ConvTranspose(transpose_kernel=True) kernel
# (kH, kW, O, I): the kernel of the convolution whose transpose both compute.
CONV_TRANSPOSE2D = Layout(
    "ConvTranspose2d weight (I, O, kH, kW)",
    (None, None, None, None),
    lambda a: a.transpose(2, 3, 1, 0),
    lambda a: a.transpose(3, 2, 0, 1),
)
# nn.Linear weight (O, I) <-> a 1x1 Conv kernel (1, 1, I, O).
LINEAR_AS_CONV1X1 = Layout(
    "Linear weight (O, I) as a 1x1 Conv kernel",
    (None, None),
    lambda a: a.T[None, None],
    lambda a: a[0, 0].T,
)


@dataclass(frozen=True)
class Tensor:
    """Where one PyTorch tensor of a module goes in Flax.

    Attributes:
        collection: the Flax variable collection (``"params"``, ``"batch_stats"``), or ``None``
            for a tensor the Flax layer has no place for (BatchNorm's counter in
            ``flax.linen.BatchNorm``): dropped on purpose, and every one is reported.
        name: the leaf name inside the Flax module.
        layout: how the tensor moves between layouts.
        required: whether every module of this kind has it (biases are optional).
    """

    collection: str | None
    name: str
    layout: Layout = IDENTITY
    required: bool = True


@dataclass(frozen=True)
class Rule:
    """One kind of layer: its PyTorch tensors and where each goes in Flax.

    Attributes:
        name: the rule's name, for error messages.
        torch_module: regex for the last segment(s) of the PyTorch module path, e.g. ``fc\\.0``,
            for state_dicts without module objects; ``None`` for a rule chosen by type only.
        torch_types: the PyTorch class names it takes (a subclass counts).
        tensors: PyTorch tensor name (``weight``, ``bias``, ...) -> its Flax place.
        flax_module: the Flax module name; ``None`` keeps the PyTorch name.
        by_type_only: (name rules) applies only when the module's type is known, because its
            name alone is another rule's too (a bare ``EffectiveSEModule``'s ``fc`` is a
            ResNet's classifier name); without the module such a key is left to the other
            rule, whose layout check then reports it.

    Example: a layer of one's own, ``self.weight`` of shape ``(C,)``, whose Flax twin holds
    ``params/scale``::

        Rule("scale", None, ("Scale",), {"weight": Tensor("params", "scale")})
    """

    name: str
    torch_module: str | None
    torch_types: tuple[str, ...]
    tensors: Mapping[str, Tensor] = field(default_factory=dict)
    flax_module: str | None = None
    by_type_only: bool = False


@dataclass(frozen=True)
class Child:
    """What a :class:`Context` says of one named child.

    Attributes:
        flax_name: its Flax module path below the parent (``"fc1"``), ``None`` to keep its own.
        rule: the name of the candidate rule it prefers (``"Conv2d as Dense (1x1)"``), ``None``
            for its type's default.
    """

    flax_name: str | None = None
    rule: str | None = None


@dataclass(frozen=True)
class Context:
    """Inside a module of one of ``torch_types``, named children take other names or rules.

    Attributes:
        name: for error messages.
        torch_types: the parent's PyTorch class names (a subclass counts).
        children: child path relative to the parent (``"fc.0"``) -> :class:`Child`.
    """

    name: str
    torch_types: tuple[str, ...]
    children: Mapping[str, Child]


def _weight_and_bias(layout: Layout) -> dict[str, Tensor]:
    return {
        "weight": Tensor("params", "kernel", layout),
        "bias": Tensor("params", "bias", required=False),
    }


_DENSE_FROM_CONV1X1 = _weight_and_bias(CONV1X1_AS_DENSE)
_DENSE_FROM_LINEAR = _weight_and_bias(LINEAR)
_CONV = _weight_and_bias(CONV)
_CONV1D = _weight_and_bias(CONV1D)
_BATCHNORM = {
    "weight": Tensor("params", "scale"),
    "bias": Tensor("params", "bias"),
    "running_mean": Tensor("batch_stats", "mean"),
    "running_var": Tensor("batch_stats", "var"),
    "num_batches_tracked": Tensor("batch_stats", "num_batches_tracked", COUNTER),
}

RULES: tuple[Rule, ...] = (
    # The SE excitation layers of timm's SEModule, torchvision's SqueezeExcitation and
    # se_torch.SqueezeExcite: 1x1 convolutions named fc1/fc2.
    Rule("se-fc (1x1 conv)", r"fc[12]", ("Conv2d",), _DENSE_FROM_CONV1X1),
    # The classic recipe: nn.Sequential(Linear, ReLU, Linear, Sigmoid) named fc.
    Rule("classic se fc.0 (Linear)", r"fc\.0", ("Linear",), _DENSE_FROM_LINEAR, "fc1"),
    Rule("classic se fc.2 (Linear)", r"fc\.2", ("Linear",), _DENSE_FROM_LINEAR, "fc2"),
    # Backbones (timm / torchvision ResNet names): convolutions, BatchNorms, the classifier.
    # timm's ConvNormAct (SK paths, SK blocks' convs, CBAM's spatial conv) is `conv` + `bn` too.
    # timm's deep stems are Sequentials `conv1.{0,3,6}` (convs) and `conv1.{1,4}` (norms),
    # ResNet-RS's stem pool `maxpool.0` (conv) and `maxpool.{1,2}` (norm). A shortcut is
    # `downsample.0` / `.1` (conv, norm), or after an average pool `.1` / `.2`: `downsample.1`
    # is either, and its tensor names tell which: the bias-free conv holds a `weight` only, the
    # norm a `bias` too (and its running statistics).
    Rule("conv", r"conv\d*|conv1\.[036]|maxpool\.0|downsample\.0", ("Conv2d",), _CONV),
    Rule(
        "shortcut conv after a pool",
        r"downsample\.1",
        ("Conv2d",),
        {"weight": Tensor("params", "kernel", CONV)},
    ),
    Rule(
        "batchnorm",
        r"bn\d*|conv1\.[14]|maxpool\.[12]|downsample\.[12]",
        ("BatchNorm2d",),
        _BATCHNORM,
    ),
    # timm's EfficientNet family: the stem, head and block convs (a mixed conv's parts are
    # `conv_dw.0`, `conv_dw.1`, ...; depthwise kernels (C, 1, k, k) move as any conv's, to
    # (k, k, 1, C)), the SE's 1x1 convs with bias (Dense), the classifier.
    Rule(
        "efficientnet conv",
        r"conv_(?:stem|head|pw|dw|pwl|exp)(?:\.\d+)?",
        ("Conv2d",),
        _CONV,
    ),
    Rule(
        "efficientnet se conv (1x1 conv)",
        r"se\.conv_(?:reduce|expand)",
        ("Conv2d",),
        _DENSE_FROM_CONV1X1,
    ),
    Rule("classifier (Linear)", r"fc|classifier", ("Linear",), _DENSE_FROM_LINEAR),
    # timm's RegNet: ConvNormAct `stem`, `s1.b1.conv1` ... are `conv` + `bn` (above); the
    # pre-activation blocks (RegNetV) hold BatchNorms `norm1`..`norm3` and bare convs: the stem
    # `stem`, a shortcut `downsample` (or `downsample.1` after a pool, above).
    Rule("regnet pre-activation conv", r"stem|downsample", ("Conv2d",), _CONV),
    Rule("regnet pre-activation norm", r"norm[123]", ("BatchNorm2d",), _BATCHNORM),
    # Selective Kernel attention (timm's SelectiveKernelAttn): 1x1 convolutions without bias.
    Rule("sk attention fc (1x1 conv)", r"fc_reduce|fc_select", ("Conv2d",), _DENSE_FROM_CONV1X1),
    # ECA (timm's EcaModule): a Conv1d named conv. In blocks it sits at `se.conv`, which outranks
    # the backbone's `conv`; a bare EcaModule's `conv` is told apart by its type only.
    Rule("eca conv (Conv1d)", r"se\.conv", ("Conv1d",), _CONV1D),
    Rule("eca conv (Conv1d, bare module)", r"conv", ("Conv1d",), _CONV1D, by_type_only=True),
    # Effective SE (timm's EffectiveSEModule): one 1x1 conv with bias named fc: `se.fc` in blocks;
    # a bare module's `fc` shares the classifier's name and is told apart by its type only.
    Rule("effective-se fc (1x1 conv)", r"se\.fc", ("Conv2d",), _DENSE_FROM_CONV1X1),
    Rule(
        "effective-se fc (1x1 conv, bare module)",
        r"fc",
        ("Conv2d",),
        _DENSE_FROM_CONV1X1,
        by_type_only=True,
    ),
)


# ------------------------------------------------------------------ by type (module objects)


_AFFINE_NORM = {  # LayerNorm, GroupNorm: elementwise affine parameters are optional
    "weight": Tensor("params", "scale", required=False),
    "bias": Tensor("params", "bias", required=False),
}
DENSE_FROM_CONV1X1 = "Conv2d as Dense (1x1)"

# Each layer type's rules, its default first. With a target, the one that fits it wins.
LAYER_RULES: tuple[Rule, ...] = (
    Rule("Conv1d", None, ("Conv1d",), _CONV1D),
    Rule("Conv2d", None, ("Conv2d",), _CONV),
    Rule(DENSE_FROM_CONV1X1, None, ("Conv2d",), _DENSE_FROM_CONV1X1),
    Rule("Conv3d", None, ("Conv3d",), _weight_and_bias(CONV3D)),
    Rule("ConvTranspose2d", None, ("ConvTranspose2d",), _weight_and_bias(CONV_TRANSPOSE2D)),
    Rule("Linear", None, ("Linear",), _DENSE_FROM_LINEAR),
    Rule("Linear as 1x1 Conv", None, ("Linear",), _weight_and_bias(LINEAR_AS_CONV1X1)),
    # BatchNorm1d/2d/3d, SyncBatchNorm: se_flax.BatchNorm keeps PyTorch's counter; Flax's own
    # BatchNorm (linen and NNX) has none, so there it is dropped (and reported).
    Rule("BatchNorm", None, ("_BatchNorm",), _BATCHNORM),
    Rule(
        "BatchNorm without counter (flax.linen / nnx BatchNorm)",
        None,
        ("_BatchNorm",),
        {**_BATCHNORM, "num_batches_tracked": Tensor(None, "num_batches_tracked", COUNTER)},
    ),
    Rule("LayerNorm", None, ("LayerNorm",), _AFFINE_NORM),
    Rule("GroupNorm", None, ("GroupNorm",), _AFFINE_NORM),
    Rule("Embedding", None, ("Embedding",), {"weight": Tensor("params", "embedding")}),
)

_SE_FC = {"fc1": Child(rule=DENSE_FROM_CONV1X1), "fc2": Child(rule=DENSE_FROM_CONV1X1)}
_MB_SE = {
    "conv_reduce": Child(rule=DENSE_FROM_CONV1X1),
    "conv_expand": Child(rule=DENSE_FROM_CONV1X1),
}
# The SE family's layers, as this library, timm and torchvision name them: their 1x1 convs are
# fully connected layers (Flax Dense), and the classic recipe's Sequential is fc1/fc2.
CONTEXTS: tuple[Context, ...] = (
    Context(
        "SE (se_torch.SqueezeExcite, timm SEModule, torchvision SqueezeExcitation)",
        ("SqueezeExcite", "SEModule", "SqueezeExcitation"),
        _SE_FC,
    ),
    # timm's EfficientNet SE is a class named SqueezeExcite too, with conv_reduce/conv_expand.
    Context(
        "EfficientNet SE (se_torch.MBSqueezeExcite, timm _efficientnet_blocks.SqueezeExcite)",
        ("MBSqueezeExcite", "SqueezeExcite"),
        _MB_SE,
    ),
    # "SElayer": the seed article's own spelling of the class (any other name of one's own is
    # named by the name table's classic rows, the same fc1/fc2).
    Context(
        "classic SELayer", ("SELayer", "SElayer"), {"fc.0": Child("fc1"), "fc.2": Child("fc2")}
    ),
    Context("effective SE", ("EffectiveSEModule",), {"fc": Child(rule=DENSE_FROM_CONV1X1)}),
    Context("CBAM channel attention", ("ChannelAttn",), _SE_FC),
    Context(
        "Selective Kernel attention",
        ("SelectiveKernelAttn",),
        {"fc_reduce": Child(rule=DENSE_FROM_CONV1X1), "fc_select": Child(rule=DENSE_FROM_CONV1X1)},
    ),
)
