"""The conversion rule table: which PyTorch modules map to which Flax modules, tensor by tensor.

A rule is chosen by the PyTorch module's *name* (the last segments of its path in the
state_dict) and its *type*:

1. the rules whose name pattern matches the end of the module path are the candidates;
2. when the module object is at hand (converting a ``torch.nn.Module``, or any Flax -> PyTorch
   conversion), only the rules that accept its type stay; without it (a bare state_dict), rules
   marked ``by_type_only`` drop out, since their name alone is shared with another kind;
3. of those left, the rule naming more path segments wins (``se.conv`` over ``conv``);
4. anything still tied is an error, never a guess.

A tensor's rank is only ever checked against what the rule declares, never used to choose a
rule. Supporting a new layer kind means adding a row here, not a code path in the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CONV",
    "CONV1D",
    "CONV1X1_AS_DENSE",
    "COUNTER",
    "IDENTITY",
    "LINEAR",
    "RULES",
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

    def torch_problem(self, shape: tuple[int, ...], dtype: str) -> str | None:
        """Why a PyTorch tensor of this shape and dtype does not fit, or ``None``."""
        pattern = self.torch_shape
        if pattern is not None and (
            len(shape) != len(pattern)
            or any(p is not None and p != s for p, s in zip(pattern, shape, strict=True))
        ):
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


@dataclass(frozen=True)
class Tensor:
    """Where one PyTorch tensor of a module goes in Flax.

    Attributes:
        collection: the Flax variable collection (``"params"``, ``"batch_stats"``).
        name: the leaf name inside the Flax module.
        layout: how the tensor moves between layouts.
        required: whether every module of this kind has it (biases are optional).
    """

    collection: str
    name: str
    layout: Layout = IDENTITY
    required: bool = True


@dataclass(frozen=True)
class Rule:
    """One kind of layer.

    Attributes:
        name: the rule's name, for error messages.
        torch_module: regex for the last segment(s) of the PyTorch module path, e.g. ``fc\\.0``.
        torch_types: accepted ``torch.nn`` class names (a subclass counts), checked whenever a
            module object is given.
        tensors: PyTorch tensor name (``weight``, ``bias``, ...) -> its Flax place.
        flax_module: the Flax module name; ``None`` keeps the PyTorch name.
        by_type_only: applies only when the module's type is known, because its name alone is
            another rule's too (a bare ``EffectiveSEModule``'s ``fc`` is a ResNet's classifier
            name); without the module such a key is left to the other rule, whose layout check
            then reports it.
    """

    name: str
    torch_module: str
    torch_types: tuple[str, ...]
    tensors: Mapping[str, Tensor] = field(default_factory=dict)
    flax_module: str | None = None
    by_type_only: bool = False


_DENSE_FROM_CONV1X1 = {
    "weight": Tensor("params", "kernel", CONV1X1_AS_DENSE),
    "bias": Tensor("params", "bias", required=False),
}
_DENSE_FROM_LINEAR = {
    "weight": Tensor("params", "kernel", LINEAR),
    "bias": Tensor("params", "bias", required=False),
}

_CONV = {
    "weight": Tensor("params", "kernel", CONV),
    "bias": Tensor("params", "bias", required=False),
}
_CONV1D = {
    "weight": Tensor("params", "kernel", CONV1D),
    "bias": Tensor("params", "bias", required=False),
}
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
    Rule("conv", r"conv\d*|downsample\.0", ("Conv2d",), _CONV),
    Rule("batchnorm", r"bn\d*|downsample\.1", ("BatchNorm2d",), _BATCHNORM),
    Rule("classifier (Linear)", r"fc", ("Linear",), _DENSE_FROM_LINEAR),
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
