"""How pretrained weights expect their images: timm's ``pretrained_cfg``, and its eval transform.

:class:`PretrainedCfg` is what ``from_pretrained`` attaches to every model it builds, as
``model.pretrained_cfg`` (linen, NNX and PyTorch alike), and what ``save_pretrained`` writes to
``config.json``. Framework-free: NumPy, and Pillow to resize (as torchvision does).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "PretrainedCfg"]

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


def _size(name: str, value: Any) -> tuple[int, int, int]:
    if (
        not isinstance(value, Sequence)
        or len(value) != 3
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
        or min(value) < 1
    ):
        raise ValueError(
            f"pretrained_cfg {name} must be 3 positive integers (C, H, W), got {value!r}"
        )
    return tuple(int(v) for v in value)


def _floats(name: str, value: Any, channels: int) -> tuple[float, ...]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != channels
        or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"pretrained_cfg {name} must be {channels} numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 4:
        raise ValueError(f"pretrained_cfg {name} must be a number in (0, 4], got {value!r}")
    return float(value)


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
            raise ValueError(f"architecture must be a model name, got {self.architecture!r}")
        if self.tag is not None and not isinstance(self.tag, str):
            raise ValueError(f"pretrained_cfg tag must be a string, got {self.tag!r}")
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, numbers.Integral)
            or self.num_classes < 0
        ):
            raise ValueError(f"num_classes must be an integer >= 0, got {self.num_classes!r}")
        set_ = object.__setattr__  # frozen: normalised once, while constructing
        set_(self, "num_classes", int(self.num_classes))
        set_(self, "input_size", _size("input_size", self.input_size))
        channels = self.input_size[0]
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"pretrained_cfg interpolation {self.interpolation!r} is not one of "
                f"{', '.join(INTERPOLATIONS)}"
            )
        set_(self, "crop_pct", _fraction("crop_pct", self.crop_pct))
        if self.crop_mode not in (*CROP_MODES, "border"):
            raise ValueError(
                f"pretrained_cfg crop_mode {self.crop_mode!r} is not one of center, squash, border"
            )
        set_(self, "mean", _floats("mean", self.mean, channels))
        set_(self, "std", _floats("std", self.std, channels))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"pretrained_cfg std must be positive, got {self.std!r}")
        if self.test_input_size is not None:
            set_(self, "test_input_size", _size("test_input_size", self.test_input_size))
        if self.test_crop_pct is not None:
            set_(self, "test_crop_pct", _fraction("test_crop_pct", self.test_crop_pct))

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
            if key in config:  # timm: the top level overrides
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
        batch = []
        for i, image in enumerate(images):
            image = _as_pil(image, i, channels)
            if self.crop_mode == "squash":
                target = (scale[1], scale[0])
            else:  # torchvision's Resize(int): the short side to scale, the long side floored
                w, h = image.size
                short, long = (w, h) if w <= h else (h, w)
                new_long = int(scale[0] * long / short)
                target = (scale[0], new_long) if w <= h else (new_long, scale[0])
            if image.size != target:
                image = image.resize(target, resample)
            pixels = _center_crop(
                np.asarray(image).reshape(target[1], target[0], -1), height, width
            )
            batch.append((pixels.astype(np.float32) / np.float32(255) - mean) / std)
        x = np.stack(batch)
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
