"""How pretrained weights expect their images: timm's ``pretrained_cfg``, and its eval transform.

:class:`PretrainedCfg` is what ``from_pretrained`` attaches to every model it builds, as
``model.pretrained_cfg`` (linen, NNX and PyTorch alike), and what ``save_pretrained`` writes to
``config.json``. Framework-free: NumPy, and Pillow to resize (as torchvision does).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "LIMITS", "PretrainedCfg"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # Pillow's
CROP_MODES = ("center", "squash")  # of timm's eval transform; "border" is not implemented here
# The keys PretrainedCfg reads into its fields; the rest of a config's pretrained_cfg is kept in
# ``extra`` and written back unchanged.
_FIELDS = (
    "tag",
    "num_classes",
    "input_size",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "mean",
    "std",
    "test_input_size",
    "test_crop_pct",
)


# The sane range of each pretrained_cfg field, checked whenever a PretrainedCfg is made (a
# config.json is untrusted input). timm 1.0.31's 3,394 pretrained configs span: 3 channels,
# sides 106-1,024 px, crop_pct 0.875-1.15 (test 0.9-1.0), mean 0-0.5, std 0.143-1.0, up to
# 115,217 classes, tags of up to 37 characters (scripts/timm_pretrained_cfgs.py --ranges).
LIMITS: dict[str, tuple[float, float]] = {
    "num_classes": (0, 1_000_000),
    "channels": (1, 64),
    "side": (1, 4096),  # input_size's height and width, in pixels
    "values": (1, 2**26),  # C * H * W of one image: 256 MB in float32
    "crop_pct": (0.25, 2.0),
    "mean": (0.0, 1.0),
    "std": (0.01, 10.0),
}
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")  # timm's tags: a1_in1k, fb_swsl_ig1b_...


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: an untrusted value in a message (repr escapes
    control characters; a megabyte of text stays a line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def _in(name: str, value: Any, kind: str, what: str) -> None:
    low, high = LIMITS[kind]
    if not low <= value <= high:
        raise ValueError(
            f"pretrained_cfg {name} must be {what} in [{low:g}, {high:g}], got {value!r}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _size(name: str, value: Any) -> tuple[int, int, int]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 3
        or not all(_is_int(v) for v in value)
        or min(value) < 1
    ):
        raise ValueError(
            f"pretrained_cfg {name} must be 3 positive integers (C, H, W), got {shown(value)}"
        )
    channels, height, width = (int(v) for v in value)
    _in(f"{name} channels", channels, "channels", "an integer")
    _in(f"{name} height", height, "side", "an integer")
    _in(f"{name} width", width, "side", "an integer")
    _in(f"{name} C * H * W", channels * height * width, "values", "a count")
    return channels, height, width


def _floats(name: str, value: Any, channels: int) -> tuple[float, ...]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != channels
        or not all(_is_real(v) for v in value)
    ):
        raise ValueError(
            f"pretrained_cfg {name} must be {channels} finite numbers, got {shown(value)}"
        )
    for v in value:
        _in(name, v, name, "numbers")
    return tuple(float(v) for v in value)


def _fraction(name: str, value: Any) -> float:
    if not _is_real(value):
        raise ValueError(f"pretrained_cfg {name} must be a finite number, got {shown(value)}")
    _in(name, value, "crop_pct", "a number")
    return float(value)


def _check_extra(extra: Mapping[str, Any], num_classes: int) -> None:
    """timm's other pretrained_cfg entries that se-flax writes back or reads: their types (and
    the labels' count); entries it does not know are kept as they are."""

    def strings(v: Any) -> bool:
        return isinstance(v, str) or (
            isinstance(v, Sequence) and all(isinstance(s, str) for s in v)
        )

    for key, value in extra.items():
        if not isinstance(key, str):
            raise ValueError(f"pretrained_cfg keys must be strings, got {shown(key)}")
        if key == "label_names" and (
            not isinstance(value, Sequence)
            or isinstance(value, str)
            or not all(isinstance(s, str) for s in value)
            or len(value) != num_classes
        ):
            count = len(value) if isinstance(value, Sequence) else "?"
            raise ValueError(
                f"pretrained_cfg label_names must be {num_classes} strings (one per class), got "
                f"{count} entries: {shown(value)}"
            )
        if key == "label_descriptions" and (
            not isinstance(value, Mapping)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            raise ValueError(
                f"pretrained_cfg label_descriptions must map strings to strings, got {shown(value)}"
            )
        if key in ("first_conv", "classifier", "license", "hf_hub_id", "url") and not (
            value is None or strings(value)
        ):
            raise ValueError(f"pretrained_cfg {key} must be a name, got {shown(value)}")
        if key in ("fixed_input_size", "custom_load") and not isinstance(value, bool):
            raise ValueError(f"pretrained_cfg {key} must be true or false, got {shown(value)}")
        if key == "min_input_size" and value is not None:
            _size(key, value)
        if (
            key == "label_offset"
            and value is not None
            and not (_is_int(value) and 0 <= value <= num_classes)
        ):
            raise ValueError(
                f"pretrained_cfg label_offset must be an integer in [0, {num_classes}], got "
                f"{shown(value)}"
            )
        if (
            key == "pool_size"
            and value is not None
            and not (
                isinstance(value, Sequence)
                and len(value) == 2
                and all(_is_int(v) and 1 <= v <= LIMITS["side"][1] for v in value)
            )
        ):
            raise ValueError(
                f"pretrained_cfg pool_size must be 2 sides in pixels, got {shown(value)}"
            )


@dataclass(frozen=True)
class PretrainedCfg:
    """The pretrained weights' data config, as timm's ``pretrained_cfg`` (``config.json``).

    Attributes:
        architecture: the timm model name, e.g. ``"seresnet50"``.
        tag: the weights' tag (``"a1_in1k"`` of ``timm/seresnet50.a1_in1k``), if any.
        num_classes: classes the published classifier was trained for.
        input_size: ``(C, H, W)`` images the weights were evaluated at (timm's order).
        interpolation: Pillow resampling of the resize: one of :data:`INTERPOLATIONS`.
        crop_pct: the center crop's share of the resized image (timm's ``crop_pct``).
        crop_mode: ``"center"`` (resize the short side, crop the center) or ``"squash"``.
        mean, std: per-channel normalisation of pixels scaled to [0, 1].
        test_input_size, test_crop_pct: timm's larger test-time size and its crop, if any.
        source: where the weights came from (a hub id or a directory); not compared.
        extra: the config's other ``pretrained_cfg`` entries (``license``, ``label_names``, ...),
            kept to be written back; not compared.

    Example:
        >>> model, variables = se_flax.from_pretrained("timm/seresnet50.a1_in1k")
        >>> x = model.pretrained_cfg.preprocess([Image.open("cat.jpg").convert("RGB")])
        >>> x.shape                                   # NHWC float32, normalised
        (1, 224, 224, 3)
    """

    architecture: str
    tag: str | None = None
    num_classes: int = 1000
    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    test_input_size: tuple[int, int, int] | None = None
    test_crop_pct: float | None = None
    source: str | None = field(default=None, compare=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or not self.architecture:
            raise ValueError(f"architecture must be a model name, got {shown(self.architecture)}")
        if self.tag is not None and not (isinstance(self.tag, str) and _TAG.fullmatch(self.tag)):
            raise ValueError(
                f"pretrained_cfg tag must be a name of letters, digits and _ . + - (at most 128), "
                f"got {shown(self.tag)}"
            )
        if not _is_int(self.num_classes):
            raise ValueError(f"num_classes must be an integer >= 0, got {shown(self.num_classes)}")
        low, high = LIMITS["num_classes"]
        if not low <= self.num_classes <= high:
            raise ValueError(
                f"num_classes must be an integer >= 0 (at most {high:,}), got {self.num_classes!r}"
            )
        set_ = object.__setattr__  # frozen: normalised once, while constructing
        set_(self, "num_classes", int(self.num_classes))
        set_(self, "input_size", _size("input_size", self.input_size))
        channels = self.input_size[0]
        if not isinstance(self.interpolation, str) or self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"pretrained_cfg interpolation {shown(self.interpolation)} is not one of "
                f"{', '.join(INTERPOLATIONS)}"
            )
        set_(self, "crop_pct", _fraction("crop_pct", self.crop_pct))
        if not isinstance(self.crop_mode, str) or self.crop_mode not in (*CROP_MODES, "border"):
            raise ValueError(
                f"pretrained_cfg crop_mode {shown(self.crop_mode)} is not one of center, squash, "
                f"border"
            )
        set_(self, "mean", _floats("mean", self.mean, channels))
        set_(self, "std", _floats("std", self.std, channels))
        if self.test_input_size is not None:
            set_(self, "test_input_size", _size("test_input_size", self.test_input_size))
            if self.test_input_size[0] != channels:
                raise ValueError(
                    f"pretrained_cfg test_input_size {self.test_input_size} has other channels "
                    f"than input_size {self.input_size}"
                )
        if self.test_crop_pct is not None:
            set_(self, "test_crop_pct", _fraction("test_crop_pct", self.test_crop_pct))
        if not isinstance(self.extra, Mapping):
            raise ValueError(f"pretrained_cfg extra must be a mapping, got {shown(self.extra)}")
        _check_extra(self.extra, self.num_classes)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str | None = None) -> PretrainedCfg:
        """Reads timm's ``config.json`` (a dict): ``architecture`` and ``num_classes`` at the
        top, the rest under ``pretrained_cfg`` (or, in timm's older files, all at the top).

        Raises:
            ValueError: naming the entry that is missing or of the wrong type.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a JSON object, got {type(config).__name__}")
        if "architecture" not in config:
            raise ValueError("config has no 'architecture' (the timm model name)")
        if "pretrained_cfg" in config:
            cfg = config["pretrained_cfg"]
            if not isinstance(cfg, Mapping):
                raise ValueError(f"config's pretrained_cfg must be an object, got {cfg!r}")
        else:  # timm's legacy single-dict layout
            cfg = {k: v for k, v in config.items() if k not in ("architecture", "num_features")}
        cfg = dict(cfg)
        for key in ("num_classes", "label_names", "label_descriptions"):
            if key in config:  # timm writes these at the top level too: both must agree
                if key in cfg and cfg[key] != config[key] and "pretrained_cfg" in config:
                    raise ValueError(
                        f"config's {key} {shown(config[key])} but its pretrained_cfg's "
                        f"{shown(cfg[key])}: which one holds?"
                    )
                cfg[key] = config[key]
        known = {k: cfg.pop(k) for k in _FIELDS if cfg.get(k) is not None}
        for key in ("tag", "input_size", "test_input_size"):  # JSON gives lists
            if isinstance(known.get(key), list):
                known[key] = tuple(known[key])
        cfg.pop("architecture", None)
        return cls(config["architecture"], **known, source=source, extra=cfg)

    def to_dict(self) -> dict[str, Any]:
        """timm's ``pretrained_cfg`` dict (JSON-ready): the fields, then ``extra``; e.g. for
        ``timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("architecture", "source", "extra") or value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    def replace(self, **changes: Any) -> PretrainedCfg:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def preprocess(
        self,
        images: Any,
        *,
        layout: Literal["NHWC", "NCHW"] = "NHWC",
        use_test_size: bool = False,
    ) -> np.ndarray:
        """A batch as timm's eval transform makes it: resize (the short side to
        ``size / crop_pct``, Pillow's ``interpolation``), center crop to ``input_size``, scale
        to [0, 1], normalise with ``mean`` and ``std``.

        Args:
            images: a ``PIL.Image``, a uint8 array ``(H, W, C)`` or ``(N, H, W, C)``, or a
                sequence of them (sizes may differ); with ``input_size[0]`` channels (convert
                others first, e.g. ``image.convert("RGB")``).
            layout: ``"NHWC"`` for Flax, ``"NCHW"`` for PyTorch.
            use_test_size: use ``test_input_size`` and ``test_crop_pct`` where the config has
                them (timm's ``use_test_size``).

        Returns:
            float32 array ``(N, H, W, C)`` (or ``(N, C, H, W)``), equal to stacking timm's
            ``create_transform(**resolve_data_config(...), is_training=False)`` outputs.
        """
        from PIL import Image

        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(
                f"crop_mode {self.crop_mode!r} is not implemented; preprocess does "
                f"{', '.join(CROP_MODES)}"
            )
        size, crop_pct = self.input_size, self.crop_pct
        if use_test_size:  # as timm's resolve_data_config(use_test_size=True): each on its own
            size = self.test_input_size or size
            crop_pct = self.test_crop_pct or crop_pct
        channels, height, width = size
        if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, Sequence) or isinstance(images, str) or not images:
            raise ValueError(
                f"images must be a PIL image, a uint8 array (H, W, C) or (N, H, W, C), or a "
                f"non-empty sequence of them; got {type(images).__name__}"
            )
        scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
        if self.crop_mode == "center" and scale[0] != scale[1]:
            raise ValueError(
                f"crop_mode 'center' with a non-square input_size {size} is not implemented "
                f"(timm's ResizeKeepRatio)"
            )
        resample = getattr(Image.Resampling, self.interpolation.upper())
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        shape = (len(images), height, width, channels)
        try:
            x = np.empty(shape, np.float32)
        except MemoryError:
            raise ValueError(
                f"preprocess: {len(images)} images of {size} need {math.prod(shape) * 4:,} bytes "
                f"of float32, more than this machine can hold: pass fewer at a time"
            ) from None
        for i, image in enumerate(images):
            image = _as_pil(image, i, channels)
            if self.crop_mode == "squash":
                target = (scale[1], scale[0])
            else:  # torchvision's Resize(int): the short side to scale, the long side floored
                w, h = image.size
                short, long = (w, h) if w <= h else (h, w)
                new_long = int(scale[0] * long / short)
                target = (scale[0], new_long) if w <= h else (new_long, scale[0])
            bound = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb bound (None: none)
            if bound is not None and target[0] * target[1] > bound:
                raise ValueError(
                    f"image {i}: {image.size[0]} x {image.size[1]} would be resized to "
                    f"{target[0]} x {target[1]} (input_size {size}, crop_pct {crop_pct}), more "
                    f"than PIL.Image.MAX_IMAGE_PIXELS ({bound:,} pixels): crop it first"
                )
            if image.size != target:
                image = image.resize(target, resample)
            pixels = _center_crop(
                np.asarray(image).reshape(target[1], target[0], -1), height, width
            )
            x[i] = (pixels.astype(np.float32) / np.float32(255) - mean) / std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "NCHW" else x


def _as_pil(image: Any, index: int, channels: int) -> Any:
    """An RGB (or L) Pillow image from a Pillow image or a uint8 array, checked."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(
                f"image {index}: arrays must be uint8 (H, W, C), got {image.dtype} {image.shape}"
            )
        if image.shape[-1] != channels:
            raise ValueError(
                f"image {index} has {image.shape[-1]} channels, the weights take {channels}"
            )
        return Image.fromarray(image[..., 0] if channels == 1 else image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"image {index}: expected a PIL image or a uint8 array, got {image!r}")
    bands = len(image.getbands())
    if bands != channels or image.mode not in ("RGB", "L"):
        want = "RGB" if channels == 3 else "L"
        raise ValueError(
            f"image {index} has mode {image.mode!r} ({bands} channel(s)), the weights take "
            f"{channels}: convert it first, image.convert({want!r})"
        )
    return image


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """torchvision's ``center_crop``: zero padding where the image is smaller than the crop."""
    h, w = pixels.shape[:2]
    if height > h or width > w:
        top, left = max(height - h, 0) // 2, max(width - w, 0) // 2
        bottom, right = max(height - h, 0) - top, max(width - w, 0) - left
        # torchvision pads (width - w) // 2 on the left and (width - w + 1) // 2 on the right
        pixels = np.pad(pixels, ((top, bottom), (left, right), (0, 0)))
        h, w = pixels.shape[:2]
    top, left = round((h - height) / 2.0), round((w - width) / 2.0)  # as torchvision rounds
    return pixels[top : top + height, left : left + width]
