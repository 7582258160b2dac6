"""The RegNet family in Flax NNX (NHWC), the third front-end of one design: the architecture is a
:class:`se_common.RegNetConfig`, blocks are built from their :class:`se_common.RegBlockSpec`,
and attribute names mirror the linen modules' (``s1``, ``b1``, ``conv2/conv``, ``se/fc1``,
``downsample_1``, ``head/fc``), so the same converted variables fill both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from se_common import PretrainedCfg, RegBlockSpec, RegNetConfig, model_feature_info
from se_common import drop_rate as checked_rate
from se_flax._dtypes import Dtype, compute_dtype, mean
from se_flax._grouped import fusion_boundary
from se_flax._layers import check_input
from se_flax._regnet import RegOptions, check_options, classifier_init, shortcut_pool
from se_flax.nnx._layers import BatchNorm, ConvNormAct, DropPath, conv, held_param_dtype
from se_flax.nnx._squeeze_excite import SqueezeExcite

__all__ = ["RegBottleneck", "RegLayers", "RegNet", "RegPreBottleneck", "RegStage"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RegLayers(RegOptions):
    """How an NNX RegNet builds its layers (the twin of :class:`se_flax.RegLayers`);
    ``norm_layer`` is called as ``nnx.BatchNorm`` is."""

    norm_layer: Any = BatchNorm

    def conv(
        self, inp: int, out: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1, *,
        rngs: nnx.Rngs,
    ) -> nnx.Module:  # fmt: skip
        """A bias-free conv with PyTorch's symmetric padding."""
        return conv(inp, out, rngs=rngs, **self._conv_options(k, stride, dilation, groups))

    def norm(self, channels: int, *, rngs: nnx.Rngs) -> nnx.Module:
        return self.norm_layer(channels, rngs=rngs, **self._dtypes)

    def conv_norm(
        self, inp: int, out: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1,
        *, act: bool = True, last: bool = False, rngs: nnx.Rngs,
    ) -> ConvNormAct:  # fmt: skip
        """timm's ``ConvNormAct`` (``conv``, ``bn``)."""
        options = self._conv_norm_options(groups, act, last)
        return ConvNormAct(inp, out, k, stride, dilation, groups, rngs=rngs, **options)

    def se(self, spec: RegBlockSpec, *, rngs: nnx.Rngs) -> SqueezeExcite | None:
        if not spec.se_channels:
            return None
        return SqueezeExcite(spec.bottleneck, rngs=rngs, **self._se_options(spec.se_channels))


class _Block(nnx.Module):
    def __init__(self, spec: RegBlockSpec, layers: RegLayers, *, rngs: nnx.Rngs) -> None:
        self.spec = spec
        self.act_fn = layers.act_fn
        self.se = layers.se(spec, rngs=rngs)
        self.drop_path = DropPath(spec.drop_path, rngs=rngs) if spec.drop_path else None

    def residual(self, y: Array, shortcut: Array | None) -> Array:
        if shortcut is None:
            return y
        return (y if self.drop_path is None else self.drop_path(y)) + shortcut

    def _se(self, y: Array) -> Array:
        return y if self.se is None else self.se(y)


class RegBottleneck(_Block):
    """timm's RegNet ``Bottleneck`` (NNX, NHWC), the twin of :class:`se_flax.RegBottleneck`."""

    def __init__(
        self, spec: RegBlockSpec, layers: RegLayers, linear_out: bool = False, *, rngs: nnx.Rngs
    ) -> None:
        super().__init__(spec, layers, rngs=rngs)
        s, L, mid = spec, layers, spec.bottleneck
        self.conv1 = L.conv_norm(s.in_channels, mid, 1, rngs=rngs)
        self.conv2 = L.conv_norm(mid, mid, 3, s.stride, s.dilation, s.groups, rngs=rngs)
        self.conv3 = L.conv_norm(mid, s.out_channels, 1, act=False, last=True, rngs=rngs)
        self.linear_out = linear_out
        if s.shortcut == "conv1x1":
            self.downsample = L.conv_norm(
                s.in_channels, s.out_channels, 1, s.stride, act=False, rngs=rngs
            )
        elif s.shortcut == "avg":
            self.downsample_1 = L.conv_norm(s.in_channels, s.out_channels, 1, act=False, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        s = self.spec
        y = self.conv3(self._se(self.conv2(self.conv1(x))))
        shortcut = None if s.shortcut is None else x
        if s.shortcut == "conv1x1":
            shortcut = self.downsample(x)
        elif s.shortcut == "avg":
            shortcut = self.downsample_1(shortcut_pool(x, s))
        y = self.residual(y, shortcut)
        return y if self.linear_out else self.act_fn(y)


class RegPreBottleneck(_Block):
    """timm's RegNet ``PreBottleneck`` (RegNetV; NNX, NHWC), the twin of
    :class:`se_flax.RegPreBottleneck`."""

    def __init__(
        self, spec: RegBlockSpec, layers: RegLayers, linear_out: bool = False, *, rngs: nnx.Rngs
    ) -> None:
        super().__init__(spec, layers, rngs=rngs)
        s, L, mid = spec, layers, spec.bottleneck
        self.norm1 = L.norm(s.in_channels, rngs=rngs)
        self.conv1 = L.conv(s.in_channels, mid, 1, rngs=rngs)
        self.norm2 = L.norm(mid, rngs=rngs)
        self.conv2 = L.conv(mid, mid, 3, s.stride, s.dilation, s.groups, rngs=rngs)
        self.norm3 = L.norm(mid, rngs=rngs)
        self.conv3 = L.conv(mid, s.out_channels, 1, rngs=rngs)
        if s.shortcut == "conv1x1":
            self.downsample = L.conv(s.in_channels, s.out_channels, 1, s.stride, rngs=rngs)
        elif s.shortcut == "avg":
            self.downsample_1 = L.conv(s.in_channels, s.out_channels, 1, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        s, act = self.spec, self.act_fn
        x = act(self.norm1(x))
        y = self.conv2(act(self.norm2(self.conv1(x))))
        y = self.conv3(act(self.norm3(self._se(y))))
        shortcut = None if s.shortcut is None else x
        if s.shortcut == "conv1x1":
            shortcut = self.downsample(x)
        elif s.shortcut == "avg":
            shortcut = self.downsample_1(shortcut_pool(x, s))
        return self.residual(y, shortcut)


class RegStage(nnx.Module):
    """A stage: blocks ``b1``, ``b2``, ... (timm's ``RegStage``)."""

    def __init__(
        self,
        specs: Sequence[RegBlockSpec],
        layers: RegLayers,
        preact: bool = False,
        linear_out: bool = False,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        block = RegPreBottleneck if preact else RegBottleneck
        self.names = tuple(f"b{s.index}" for s in specs)
        for name, spec in zip(self.names, specs, strict=True):
            setattr(self, name, block(spec, layers, linear_out, rngs=rngs))

    def __call__(self, x: Array) -> Array:
        for name in self.names:
            x = fusion_boundary(getattr(self, name)(x))  # as linen's (se_flax._grouped)
        return x


class _Head(nnx.Module):
    """timm's ``ClassifierHead`` (``head``): the classifier ``fc``."""

    def __init__(self, fc: nnx.Linear) -> None:
        self.fc = fc


class RegNet(nnx.Module):
    """A RegNet described by a :class:`se_common.RegNetConfig` (NNX, NHWC), the twin of
    ``se_torch.RegNet`` and :class:`se_flax.RegNet`.

    Args:
        config: the architecture.
        num_classes: classifier outputs; 0 returns the pooled features.
        in_chans: input channels (checked against the input).
        features_only: return the feature maps of ``out_indices`` (stem, ``s1`` to ``s4``).
        out_indices: feature levels (``config.feature_info()``), default all.
        drop_rate, drop_path_rate: dropout before the classifier and stochastic depth in
            training (block ``i`` of ``n`` at ``drop_path_rate * i / (n - 1)``), from the
            ``dropout`` stream of ``rngs``.
        zero_init_last: initialise each bottleneck's last norm scale to zero; ``None`` takes
            the config's.
        norm_layer: factory of the norms (default :class:`BatchNorm`), called as
            ``nnx.BatchNorm`` is (and with ``scale_init``).
        dtype, param_dtype, precision: of every layer.
        rngs: random streams for initialisation (and ``dropout``).

    Example:
        >>> model = create_model("regnety_016", rngs=nnx.Rngs(0))
        >>> model.eval()
        >>> model(jnp.ones((1, 224, 224, 3))).shape
        (1, 1000)
    """

    pretrained_cfg: PretrainedCfg | None = None  # static: set by from_pretrained

    def __init__(
        self,
        config: RegNetConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool | None = None,
        norm_layer: Any = BatchNorm,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        rngs: nnx.Rngs,
    ) -> None:
        cfg = config
        self.out_indices = check_options(cfg, num_classes, in_chans, out_indices)
        checked_rate("drop_rate", drop_rate)
        specs = cfg.blocks(drop_path_rate)  # checks the rate first
        zero = cfg.zero_init_last if zero_init_last is None else zero_init_last
        L = RegLayers(
            act=cfg.act_layer,
            norm_layer=norm_layer,
            zero_init_last=bool(zero),
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
        )
        self.config, self.in_chans, self.num_classes = cfg, in_chans, num_classes
        self.features_only, self.dtype, self.act_fn = features_only, dtype, L.act_fn
        if cfg.preact:
            self.stem = L.conv(in_chans, cfg.stem_width, 3, 2, rngs=rngs)
        else:
            self.stem = L.conv_norm(in_chans, cfg.stem_width, 3, 2, rngs=rngs)
        for s in range(1, 5):
            stage = [b for b in specs if b.stage == s]
            setattr(self, f"s{s}", RegStage(stage, L, cfg.preact, cfg.linear_out, rngs=rngs))
        self.num_features = self.head_hidden_size = cfg.pooled_features
        self.final_conv = (
            L.conv_norm(cfg.final_width, cfg.num_features, 1, rngs=rngs)
            if cfg.num_features and not features_only
            else None
        )
        self.head_drop = nnx.Dropout(drop_rate, rngs=rngs) if drop_rate else None
        self.head = (
            _Head(
                nnx.Linear(
                    cfg.pooled_features,
                    num_classes,
                    precision=precision,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    kernel_init=classifier_init,
                    rngs=rngs,
                )
            )
            if num_classes and not features_only
            else None
        )

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's ``feature_info`` of every level (of ``out_indices`` with ``features_only``)."""
        return model_feature_info(self.config, self.features_only, self.out_indices)

    def __call__(self, x: Array) -> Array | list[Array]:
        check_input(x, channels=self.in_chans)
        x = self.stem(x)
        features = [x]
        for s in range(1, 5):
            x = getattr(self, f"s{s}")(x)
            features.append(x)
        if self.features_only:
            return [features[i] for i in self.out_indices]
        if self.final_conv is not None:
            x = self.final_conv(x)
        elif self.config.final_act:
            x = self.act_fn(x)
        x = mean(x, (1, 2), compute_dtype(x, self.dtype, held_param_dtype(self)))
        if self.head_drop is not None:
            x = self.head_drop(x)
        return x if self.head is None else self.head.fc(x)
