"""The RegNet family in Flax linen (NHWC), twins of ``se_torch``'s, planned by
:class:`se_common.RegNetConfig`.

Blocks are built from their :class:`se_common.RegBlockSpec` alone, with every layer option once
in the :class:`RegLayers` the backbone hands each. Submodule names mirror timm's state_dict keys
(``s1.b1.conv2.conv`` is ``s1/b1/conv2/conv``, SE's ``se.fc1`` a ``Dense`` ``se/fc1``, an
average-pool shortcut's conv ``downsample.1`` is ``downsample_1``, the classifier ``head.fc``
is ``head/fc``), so :mod:`se_flax.convert` maps them one to one. Grouped 3x3 convolutions run
through :func:`se_flax.conv_general_dilated` (se_flax's CPU kernels).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_common import PretrainedCfg, RegBlockSpec, RegNetConfig, conv_padding
from se_flax._batchnorm import BatchNorm
from se_flax._dtypes import Dtype
from se_flax._efficientnet import ACTIVATIONS, fan_out_init
from se_flax._grouped import fusion_boundary
from se_flax._layers import (
    ConvNormAct,
    PlannedBackbone,
    avg_pool_2x2,
    check_input,
    conv,
    drop_path,
    planned_levels,
    pooled_head,
)
from se_flax._squeeze_excite import SqueezeExcite

__all__ = ["RegBottleneck", "RegLayers", "RegNet", "RegPreBottleneck", "avg_pool_same"]

Array = jax.Array
Activation = Callable[[Array], Array]

# timm's RegNet classifier init: normal, std 0.01.
classifier_init = nn.initializers.normal(0.01)


def avg_pool_same(x: Array) -> Array:
    """timm's ``AvgPool2dSame(2, stride=1)`` (NHWC): zero-padded by one row and column after,
    then 2x2 means, the padding counted."""
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return (x[:, :-1, :-1] + x[:, :-1, 1:] + x[:, 1:, :-1] + x[:, 1:, 1:]) / 4


def shortcut_pool(x: Array, spec: RegBlockSpec) -> Array:
    """The average pool of an ``"avg"`` shortcut (:class:`se_common.RegBlockSpec`'s ``pool``)."""
    if spec.pool == "stride":
        return avg_pool_2x2(x, ceil_mode=True)
    return avg_pool_same(x) if spec.pool == "same" else x


@dataclasses.dataclass(frozen=True)
class RegOptions:
    """Every option of a RegNet's layers, once (shared by the linen :class:`RegLayers` and its
    NNX twin).

    Attributes:
        act: the activation's :data:`se_common.ACTIVATIONS` name.
        norm_layer: factory of the norms (default :class:`BatchNorm`, PyTorch's statistics),
            called with ``scale_init`` for a bottleneck's last norm when ``zero_init_last``.
        zero_init_last: initialise each bottleneck's last norm scale to zero.
        dtype, param_dtype, precision: of every layer.
    """

    act: str = "relu"
    norm_layer: Any = BatchNorm
    zero_init_last: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @property
    def act_fn(self) -> Activation:
        return ACTIVATIONS[self.act]

    @property
    def _dtypes(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}

    def _norm(self, last: bool = False) -> Any:
        if last and self.zero_init_last:
            return functools.partial(self.norm_layer, scale_init=nn.initializers.zeros_init())
        return self.norm_layer

    def _conv_options(self, k: int, stride: int, dilation: int, groups: int) -> dict[str, Any]:
        """A bias-free conv with PyTorch's symmetric padding and timm's init."""
        p = conv_padding(k, stride, dilation)
        return {
            "kernel_size": (k, k),
            "strides": (stride, stride),
            "padding": ((p, p), (p, p)),
            "kernel_dilation": (dilation, dilation),
            "feature_group_count": groups,
            "use_bias": False,
            "kernel_init": fan_out_init(groups),
            "precision": self.precision,
            **self._dtypes,
        }

    def _conv_norm_options(self, groups: int, act: bool, last: bool) -> dict[str, Any]:
        """timm's ``ConvNormAct`` with these options (both front-ends' ``ConvNormAct``)."""
        return {
            "apply_act": act,
            "act_fn": self.act_fn,
            "norm_layer": self._norm(last),
            "precision": self.precision,
            "kernel_init": fan_out_init(groups),
            **self._dtypes,
        }

    def _se_options(self, rd_channels: int) -> dict[str, Any]:
        return {
            "rd_channels": rd_channels,
            "act_fn": self.act_fn,
            "kernel_init": fan_out_init(1),
            "precision": self.precision,
            **self._dtypes,
        }


@dataclasses.dataclass(frozen=True)
class RegLayers(RegOptions):
    """How a linen RegNet builds its layers: the options of :class:`RegOptions`, one method per
    kind of layer, each applied to ``x``."""

    def conv(
        self, x: Array, out: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1, *,
        name: str,
    ) -> Array:  # fmt: skip
        """A bias-free conv with PyTorch's symmetric padding."""
        return conv(out, name=name, **self._conv_options(k, stride, dilation, groups))(x)

    def norm(self, x: Array, train: bool, act: bool = True, *, name: str) -> Array:
        """A norm (timm's ``BatchNormAct2d``: then the activation, unless ``act=False``)."""
        y = self.norm_layer(use_running_average=not train, name=name, **self._dtypes)(x)
        return self.act_fn(y) if act else y

    def conv_norm(
        self, x: Array, train: bool, out: int, k: int, stride: int = 1, dilation: int = 1,
        groups: int = 1, *, act: bool = True, last: bool = False, name: str,
    ) -> Array:  # fmt: skip
        """timm's ``ConvNormAct`` (``name/conv``, ``name/bn``) applied to ``x``."""
        options = self._conv_norm_options(groups, act, last)
        return ConvNormAct(out, k, stride, dilation, groups, name=name, **options)(x, train)

    def se(self, x: Array, spec: RegBlockSpec) -> Array:
        """The block's SE (``se/fc1``, ``se/fc2``), if it has one."""
        if not spec.se_channels:
            return x
        return SqueezeExcite(name="se", **self._se_options(spec.se_channels))(x)


class _Block(nn.Module):
    """Base of the blocks, built as ``Block(spec, layers)`` and applied as ``block(x, train)``;
    training with ``drop_path`` takes a ``"dropout"`` rng."""

    spec: RegBlockSpec
    layers: RegLayers = RegLayers()
    linear_out: bool = False

    def residual(self, y: Array, shortcut: Array | None, train: bool) -> Array:
        """``y`` plus the shortcut (none: ``y``), the branch dropped at ``drop_path``."""
        if shortcut is None:
            return y
        if self.spec.drop_path and train:
            y = drop_path(y, self.spec.drop_path, self.make_rng("dropout"))
        return y + shortcut


class RegBottleneck(_Block):
    """timm's RegNet ``Bottleneck`` (linen, NHWC): 1x1 conv-norm-act, grouped 3x3
    conv-norm-act, SE, 1x1 conv-norm, the shortcut sum, an activation (none with
    ``linear_out``)."""

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        s, L = self.spec, self.layers
        y = L.conv_norm(x, train, s.bottleneck, 1, name="conv1")
        y = L.conv_norm(y, train, s.bottleneck, 3, s.stride, s.dilation, s.groups, name="conv2")
        y = L.se(y, s)
        y = L.conv_norm(y, train, s.out_channels, 1, act=False, last=True, name="conv3")
        shortcut = None if s.shortcut is None else x
        if s.shortcut == "conv1x1":
            shortcut = L.conv_norm(
                x, train, s.out_channels, 1, s.stride, act=False, name="downsample"
            )
        elif s.shortcut == "avg":
            pooled = shortcut_pool(x, s)
            shortcut = L.conv_norm(pooled, train, s.out_channels, 1, act=False, name="downsample_1")
        y = self.residual(y, shortcut, train)
        return y if self.linear_out else L.act_fn(y)


class RegPreBottleneck(_Block):
    """timm's RegNet ``PreBottleneck`` (RegNetV; linen, NHWC): norm-act, 1x1 conv, norm-act,
    grouped 3x3 conv, SE, norm-act, 1x1 conv, the sum with the shortcut of the first norm's
    output."""

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        s, L = self.spec, self.layers
        x = L.norm(x, train, name="norm1")
        y = L.norm(L.conv(x, s.bottleneck, 1, name="conv1"), train, name="norm2")
        y = L.conv(y, s.bottleneck, 3, s.stride, s.dilation, s.groups, name="conv2")
        y = L.norm(L.se(y, s), train, name="norm3")
        y = L.conv(y, s.out_channels, 1, name="conv3")
        shortcut = x
        if s.shortcut == "conv1x1":
            shortcut = L.conv(x, s.out_channels, 1, s.stride, name="downsample")
        elif s.shortcut == "avg":
            shortcut = L.conv(shortcut_pool(x, s), s.out_channels, 1, name="downsample_1")
        return self.residual(y, None if s.shortcut is None else shortcut, train)


class RegStage(nn.Module):
    """A stage: blocks ``b1``, ``b2``, ... (timm's ``RegStage``)."""

    specs: Sequence[RegBlockSpec]
    layers: RegLayers
    preact: bool = False
    linear_out: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        block = RegPreBottleneck if self.preact else RegBottleneck
        for spec in self.specs:
            block_ = block(spec, self.layers, self.linear_out, name=f"b{spec.index}")
            x = fusion_boundary(block_(x, train))  # computed once (se_flax._grouped)
        return x


class _Head(nn.Module):
    """timm's ``ClassifierHead`` (``head``): the pool, dropout, the classifier ``fc``."""

    num_classes: int
    drop_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        return pooled_head(self, x, train, name="fc", kernel_init=classifier_init)


def check_options(
    config: Any, num_classes: Any, in_chans: Any, out_indices: Sequence[int] | None
) -> tuple[int, ...]:
    """Clear errors for a RegNet's options; the feature levels of ``out_indices``."""
    return planned_levels(config, RegNetConfig, num_classes, in_chans, out_indices)


class RegNet(PlannedBackbone, nn.Module):
    """A RegNet described by a :class:`se_common.RegNetConfig` (linen, NHWC), the twin of
    ``se_torch.RegNet``.

    Attributes:
        config: the architecture.
        num_classes: classifier outputs; 0 returns the pooled features.
        in_chans: input channels (checked against the input).
        features_only: return the feature maps of ``out_indices`` (stem, ``s1`` to ``s4``).
        out_indices: feature levels (``config.feature_info()``), default all.
        drop_rate: dropout before the classifier in training.
        drop_path_rate: stochastic depth in training: block ``i`` of ``n`` drops its branch at
            ``drop_path_rate * i / (n - 1)`` (timm's). With either rate, training takes a
            ``"dropout"`` rng: ``apply(..., rngs={"dropout": key})``.
        zero_init_last: initialise each bottleneck's last norm scale to zero; ``None`` takes
            the config's.
        norm_layer: factory of the norms (default :class:`BatchNorm`), called with
            ``use_running_average``, the dtypes, ``name`` (and ``scale_init``).
        dtype, param_dtype, precision: of every layer.
        pretrained_cfg: the data config of pretrained weights (set by ``from_pretrained``).

    Call as ``model.apply(variables, x, train=False)``; in training pass ``train=True,
    mutable=["batch_stats"]``.

    Example:
        >>> model = create_model("regnety_016")
        >>> x = jnp.ones((1, 224, 224, 3))
        >>> variables = model.init(jax.random.key(0), x)
        >>> model.apply(variables, x).shape
        (1, 1000)
    """

    config: RegNetConfig
    num_classes: int = 1000
    in_chans: int = 3
    features_only: bool = False
    out_indices: Sequence[int] | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    zero_init_last: bool | None = None
    norm_layer: Any = BatchNorm
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    pretrained_cfg: PretrainedCfg | None = None

    config_type = RegNetConfig

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array | list[Array]:
        cfg = self.config
        check_input(x, channels=self.in_chans)
        zero = cfg.zero_init_last if self.zero_init_last is None else self.zero_init_last
        L = RegLayers(
            act=cfg.act_layer,
            norm_layer=self.norm_layer,
            zero_init_last=bool(zero),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
        )
        if cfg.preact:
            x = L.conv(x, cfg.stem_width, 3, 2, name="stem")
        else:
            x = L.conv_norm(x, train, cfg.stem_width, 3, 2, name="stem")
        features = [x]
        specs = cfg.blocks(self.drop_path_rate)
        for s in range(1, 5):
            stage = [b for b in specs if b.stage == s]
            x = RegStage(stage, L, cfg.preact, cfg.linear_out, name=f"s{s}")(x, train)
            features.append(x)
        if self.features_only:
            return [features[i] for i in self.levels]
        if cfg.num_features:
            x = L.conv_norm(x, train, cfg.num_features, 1, name="final_conv")
        elif cfg.final_act:
            x = L.act_fn(x)
        head = _Head(
            self.num_classes,
            self.drop_rate,
            self.dtype,
            self.param_dtype,
            self.precision,
            name="head",
        )
        return head(x, train)
