"""timm's pretrained layout: a Hugging Face hub repo (``timm/seresnet50.a1_in1k``) or a directory
holding ``config.json`` and ``model.safetensors``, as timm's ``save_for_hf`` and
``push_to_hf_hub`` write them.

    >>> pretrained = read_pretrained("timm/seresnet50.a1_in1k")   # or a local directory
    >>> pretrained.architecture, pretrained.cfg.tag, len(pretrained.tensors)
    ('seresnet50', 'a1_in1k', 320)

Reading needs NumPy and safetensors only (no torch); a hub id also ``huggingface_hub``, with its
cache (``HF_HOME``, ``HF_HUB_CACHE``), its download progress bar and ``HF_HUB_OFFLINE=1``. The
framework front-ends (``se_flax.from_pretrained``, ``se_flax.nnx.from_pretrained``,
``se_torch.from_pretrained``) build their model from what this returns.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from se_common import Architecture, architecture_of, get_model, list_models, pooled_features
from se_common._pretrained import PretrainedCfg, shown
from se_weights._arrays import is_floating
from se_weights._formats import FORMATS, FileError, _atomic, read_file

__all__ = [
    "CONFIG_FILE",
    "HUB_PREFIX",
    "WEIGHTS_FILE",
    "Pretrained",
    "check_state_dict",
    "is_hub_id",
    "misfits",
    "read_pretrained",
    "report",
    "write_pretrained",
]

HUB_PREFIX = "hf-hub:"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MAX_CONFIG_BYTES = 64 * 2**20  # a config with 21k label descriptions is a few MB
MAX_NUMBER_CHARS = 100  # a number in a config: no field needs more digits


# timm factory arguments that change training only (no tensor): ignored, with a note
TRAINING_ONLY = ("drop_rate", "drop_path_rate", "drop_block_rate", "pretrained_strict")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def is_hub_id(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a hub repo: ``hf-hub:owner/name[@revision]``, or
    ``owner/name[@revision]`` where no such local path exists."""
    if not isinstance(source, str):
        return False
    if source.startswith(HUB_PREFIX):
        return True
    files = {e for extensions, _ in FORMATS.values() for e in extensions if e}
    path = Path(source.split("@", 1)[0])
    if path.suffix.lower() in files:  # a weight file's path, not a repo
        return False
    if Path(source).exists() or (path.parent.is_dir() and str(path.parent) != "."):
        return False  # a local path (a typo under an existing folder stays local)
    return bool(_HUB_ID.match(source))


@dataclass
class Pretrained:
    """What a pretrained repo or directory holds, read and checked.

    Attributes:
        cfg: the data config (:class:`se_common.PretrainedCfg`), ``source`` set.
        tensors: the state_dict, PyTorch keys -> NumPy arrays, exactly as stored.
        model_kwargs: ``create_model`` options from ``config.json``'s ``model_args``.
        directory: where ``config.json`` and ``model.safetensors`` are (a snapshot of the
            hub cache for a hub id).
        notes: what loading changed or noticed (a new classifier, ...), for the report.
        stored: the floating dtype(s) of the file.
    """

    cfg: PretrainedCfg
    tensors: dict[str, np.ndarray]
    model_kwargs: dict[str, Any]
    directory: Path
    notes: list[str] = field(default_factory=list)
    stored: str = field(init=False)  # the floating dtype(s) as stored, for the report
    new_classifier: bool = field(default=False, init=False)  # set by options()

    @property
    def architecture(self) -> str:
        return self.cfg.architecture

    @property
    def arch(self) -> Architecture:
        """The registered architecture (its family, config and head)."""
        return get_model(self.cfg.architecture)

    def __post_init__(self) -> None:
        """Weights stored in several floating dtypes are widened to one, exactly (float32, or
        float64 if any is), and the notes say so."""
        floats = {v.dtype for v in self.tensors.values() if is_floating(v.dtype)}
        if not floats:
            raise FileError(f"{self.directory}: {WEIGHTS_FILE} holds no floating tensors")
        if len(floats) > 1:
            wide = np.dtype(np.float64 if np.float64 in floats else np.float32)
            self.tensors = {
                k: v.astype(wide) if is_floating(v.dtype) else v for k, v in self.tensors.items()
            }
            names = ", ".join(sorted(d.name for d in floats))
            self.notes.append(f"stored in {names}: widened to {wide.name} (exact)")
        self.stored = ", ".join(sorted(d.name for d in floats))

    @property
    def float_dtype(self) -> np.dtype:
        """The weights' floating dtype (after widening mixed ones)."""
        return next(v.dtype for v in self.tensors.values() if is_floating(v.dtype))

    def options(
        self, num_classes: int | None, features_only: bool, **kwargs: Any
    ) -> dict[str, Any]:
        """The ``create_model`` options of the model asked for (``kwargs`` on top); drops the
        weights' classifier from :attr:`tensors` (saying so in :attr:`notes`) where it is not
        kept.

        Args:
            num_classes: ``None`` keeps the weights' classifier; another count builds a new,
                initialised one (0: none, the pooled features).
            features_only: feature maps, no classifier.
        """
        head = self._head(num_classes, features_only)
        return {**self.model_kwargs, **head, **kwargs, "features_only": features_only}

    def _head(self, num_classes: int | None, features_only: bool) -> dict[str, Any]:
        kept = self.cfg.num_classes
        if num_classes is not None and (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, numbers.Integral)
            or num_classes < 0
        ):
            raise ValueError(f"num_classes must be an integer >= 0 or None, got {num_classes!r}")
        if features_only and num_classes is not None:
            raise ValueError(
                f"features_only=True builds no classifier: num_classes={num_classes} would be "
                f"ignored; pass one or the other"
            )
        family = self.arch.family
        held = family.head_keys(self.tensors, features_only)
        if features_only:
            why = "features_only=True"
        elif num_classes is None or num_classes == kept:
            return {"num_classes": kept}
        elif num_classes == 0:
            why = "num_classes=0: the model returns pooled features"
        else:
            why = f"a new classifier for {num_classes} classes is initialised"
        if held:
            for k in held:
                del self.tensors[k]
            self.notes.append(
                f"the weights' classifier {family.classifier} ({kept} classes) is dropped: {why}"
            )
        elif num_classes:  # headless weights: the classifier is new all the same
            self.notes.append(f"the weights have no classifier: {why}")
        self.new_classifier = bool(num_classes) and not features_only
        return {"num_classes": kept if num_classes is None else int(num_classes)}

    def check(self, options: dict[str, Any]) -> None:
        """The tensors against the plan of the model ``options`` build (``config.state_dict``,
        framework-free), before any front-end builds it: every stored tensor has its key, shape
        and kind (floating, int64), and every planned one is stored but a new classifier's. So a
        config's sizes (``num_classes``, ``in_chans``) never allocate more than the weights
        hold.

        A family whose config has no plan (``ValueError``), or options its config refuses, are
        left to the front-end, which checks after building.

        Raises:
            ConversionError: every missing, unexpected and mis-shaped key at once.
        """
        from se_weights._convert import ConversionError

        arch, opts = self.arch, dict(options)
        features_only = bool(opts.get("features_only"))
        try:
            config = arch.family.configure(arch.config, opts)
            classes = 0 if features_only else opts.get("num_classes", self.cfg.num_classes)
            plan = config.state_dict(classes, opts.get("in_chans", self.cfg.input_size[0]))
        except (ValueError, TypeError):
            return
        if features_only:
            plan = {k: v for k, v in plan.items() if k not in arch.family.head_keys(plan, True)}
        new = set(arch.family.head_keys(plan, False)) if self.new_classifier else set()
        missing = [k for k in plan if k not in self.tensors and k not in new]
        unexpected = [k for k in self.tensors if k not in plan]
        mismatched = [
            f"{k}: stored {tuple(v.shape)} {v.dtype}, {arch.name} needs {plan[k].shape}"
            + ("" if plan[k].dtype == "float" else f" {plan[k].dtype}")
            for k, v in self.tensors.items()
            if k in plan and misfits(v.shape, v.dtype, plan[k])
        ]
        if missing or unexpected or mismatched:
            title = f"{self.cfg.source}: the weights do not fit {arch.name}"
            head = arch.family.head_keys(missing, False)
            if head and not arch.family.head_keys(self.tensors, False):
                title += (
                    f" (the weights have no classifier {arch.family.classifier}, the config "
                    f"says {self.cfg.num_classes} classes: pass num_classes=0 for pooled "
                    f"features, or num_classes=N for a new classifier)"
                )
            raise ConversionError(title, missing, unexpected, mismatched)


def _resolve(source: str | os.PathLike, revision: str | None) -> tuple[Path, Path, str]:
    """The config and weights files (for a hub id, as the cache holds them), and a label for
    messages (the hub id or the path)."""
    if not is_hub_id(source):
        path = Path(source)
        if not path.exists():
            raise FileError(
                f"{source}: no such directory, and not a hub id (owner/name, e.g. "
                f"timm/seresnet50.a1_in1k, or hf-hub:owner/name)"
            )
        if not path.is_dir():
            raise FileError(
                f"{source}: expected a directory holding {CONFIG_FILE} and {WEIGHTS_FILE} "
                f"(timm's save_for_hf layout) or a hub id"
            )
        if revision is not None:
            raise FileError(f"{source}: revision= applies to hub ids, not local directories")
        return path / CONFIG_FILE, path / WEIGHTS_FILE, str(path)
    repo = str(source).removeprefix(HUB_PREFIX)
    if "@" in repo:
        if revision is not None:
            raise FileError(f"{source}: a revision in the id and revision={revision!r}: give one")
        repo, revision = repo.split("@", 1)
    if not _HUB_ID.match(repo):
        raise FileError(f"{source}: not a hub id (owner/name, e.g. timm/seresnet50.a1_in1k)")
    label = repo if revision is None else f"{repo}@{revision}"
    # a typo in a local path reads as a hub id: say that no such directory exists either
    local = "" if str(source).startswith(HUB_PREFIX) else f" (no local directory {source} either)"
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub import errors as hub_errors
    except ImportError:
        raise FileError(f"{label}: loading from the hub needs huggingface_hub") from None
    paths = []
    for filename in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            paths.append(Path(hf_hub_download(repo, filename, revision=revision)))
        except hub_errors.LocalEntryNotFoundError:
            where = f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
            if constants.HF_HUB_OFFLINE:
                raise FileError(
                    f"{label}: {filename} is not in {where}{local}, and HF_HUB_OFFLINE=1 allows no "
                    f"download. Download it once online (hf download {repo}"
                    f"{'' if revision is None else f' --revision {revision}'}), point HF_HOME or "
                    f"HF_HUB_CACHE at a cache that holds it, or pass a local directory with "
                    f"{CONFIG_FILE} and {WEIGHTS_FILE}"
                ) from None
            raise FileError(
                f"{label}: cannot download {filename} (no connection to the hub?) and it is not "
                f"in {where}{local}. Retry online, or pass a local directory with "
                f"{CONFIG_FILE} and {WEIGHTS_FILE}"
            ) from None
        except hub_errors.GatedRepoError:
            raise FileError(
                f"{label}: a gated repo: accept its terms on the hub, then log in with "
                f"hf auth login"
            ) from None
        except hub_errors.RepositoryNotFoundError:
            raise FileError(
                f"{label}: no such repo on the hub{local} (or it is private: log in with "
                f"hf auth login)"
            ) from None
        except hub_errors.RevisionNotFoundError:
            raise FileError(f"{label}: the repo has no revision {revision!r}") from None
        except hub_errors.EntryNotFoundError:
            raise FileError(
                f"{label}: the repo has no {filename}"
                + (
                    " (only PyTorch pickles? se-flax reads safetensors only; convert the .bin "
                    "with se-convert first)"
                    if filename == WEIGHTS_FILE
                    else " (not a timm model repo)"
                )
            ) from None
        except hub_errors.HfHubHTTPError as e:
            raise FileError(f"{label}: the hub answered {str(e).splitlines()[0][:200]}") from None
    return paths[0], paths[1], label


class _Refused:
    """A JSON value the config reader refuses (a number no field needs), named once the path
    to it is known."""

    def __init__(self, why: str) -> None:
        self.why = why


def _number(text: str, kind: type) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        digits = len(text.lstrip("-"))
        return _Refused(f"a number of {digits:,} characters (at most {MAX_NUMBER_CHARS})")
    value = kind(text)
    return value if kind is int or math.isfinite(value) else _Refused(f"{text} is not finite")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FileError(f"duplicate key {shown(key)}: JSON keeps the last, silently")
        out[key] = value
    return out


def _refused(tree: Any) -> tuple[str, str] | None:
    """The first refused value in ``tree`` and its path (``pretrained_cfg.input_size[1]``)."""
    stack: list[tuple[str, Any]] = [("", tree)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, _Refused):
            return path or "(the top)", node.why
        if isinstance(node, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(node))
    return None


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        what = f"{CONFIG_FILE} is not a regular file" if path.exists() else f"no {CONFIG_FILE}"
        raise FileError(
            f"{path.parent}: {what}: a timm model directory holds {CONFIG_FILE} "
            f"(architecture, pretrained_cfg) and {WEIGHTS_FILE}, as timm's save_for_hf writes them"
        )
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise FileError(f"{path}: {size:,} bytes, more than a config holds ({MAX_CONFIG_BYTES:,})")
    with path.open("rb") as stream:  # never more than the bound, whatever the file does
        data = stream.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise FileError(f"{path}: more than a config holds ({MAX_CONFIG_BYTES:,} bytes)")
    try:
        config = json.loads(
            data,
            parse_int=lambda t: _number(t, int),
            parse_float=lambda t: _number(t, float),
            parse_constant=lambda t: _Refused(f"{t} is not a number JSON allows"),
            object_pairs_hook=_unique,
        )
    except FileError as e:
        raise FileError(f"{path}: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise FileError(f"{path}: not valid JSON: {str(e)[:200]}") from None
    refused = _refused(config)
    if refused is not None:
        raise FileError(f"{path}: {refused[0]}: {refused[1]}")
    if not isinstance(config, dict):
        raise FileError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _model_kwargs(config: dict[str, Any], path: Path, notes: list[str], family: Any) -> dict:
    """``create_model`` options from ``model_args``, each checked against the family's
    :class:`se_common.ModelArg` (type, range, choices); training-only arguments (dropout
    rates) are ignored with a note; any other is a FileError."""
    args = config.get("model_args")
    args = {} if args is None else args
    if not isinstance(args, dict):
        raise FileError(f"{path}: model_args must be an object, got {shown(args)}")
    accepted = family.model_args
    ignored = sorted(k for k in args if k in TRAINING_ONLY)
    if ignored:
        notes.append(f"model_args {', '.join(ignored)} ignored (training only; no weights)")
    unknown = sorted(set(args) - set(accepted) - set(TRAINING_ONLY))
    if unknown:
        known = ", ".join(f"{k} ({v.description})" for k, v in accepted.items())
        raise FileError(
            f"{path}: model_args {', '.join(map(shown, unknown[:5]))} are not options of "
            f"se-flax's {config.get('architecture')}; it reads {known}, and ignores "
            f"{', '.join(TRAINING_ONLY)}"
        )
    kwargs = {}
    for name, value in args.items():
        if name in TRAINING_ONLY:
            continue
        try:
            value = accepted[name].check(name, value)
        except ValueError as e:
            raise FileError(f"{path}: {e}") from None
        if accepted[name].option:
            kwargs[name] = value
    return kwargs


def _check_top_level(config: dict[str, Any], cfg: PretrainedCfg, arch: Any, path: Path, kwargs):
    """What else ``config.json`` says of the model must be true of the one built: model_args'
    num_classes, the top-level global_pool and num_features, the classifier and first conv."""
    family = arch.family
    if "num_classes" in kwargs and kwargs.pop("num_classes") != cfg.num_classes:
        raise FileError(
            f"{path}: model_args num_classes {config['model_args']['num_classes']} but the "
            f"config's num_classes is {cfg.num_classes}"
        )
    if "global_pool" in config and config["global_pool"] != "avg":
        raise FileError(
            f"{path}: global_pool {shown(config['global_pool'])}: se-flax pools by 'avg'"
        )
    if "num_features" in config:
        try:
            wanted = pooled_features(family.configure(arch.config, dict(kwargs)))
        except (ValueError, TypeError):
            wanted = None  # options the builder refuses, with its own message
        if wanted is not None and config["num_features"] != wanted:
            raise FileError(
                f"{path}: num_features {shown(config['num_features'])}, but {arch.name} has "
                f"{wanted} features before its classifier"
            )
    for key, own in (("classifier", family.classifier), ("first_conv", family.first_conv)):
        value = cfg.extra.get(key)
        if value is not None and value != own:
            raise FileError(f"{path}: {key} {shown(value)}, but {arch.name}'s is {own!r}")


def read_pretrained(source: str | os.PathLike, *, revision: str | None = None) -> Pretrained:
    """Reads a timm model repo or directory: ``config.json`` and ``model.safetensors``.

    Args:
        source: a hub id (``timm/seresnet50.a1_in1k``, ``hf-hub:timm/...``, ``...@revision``),
            downloaded through ``huggingface_hub``'s cache; or a local directory.
        revision: a hub branch, tag or commit.

    Raises:
        FileError: a missing file, an unreadable config, an architecture se-flax does not
            build, a repo not in the cache while offline; each says what to do.
    """
    config_path, weights, label = _resolve(source, revision)
    directory = config_path.parent
    config = _read_config(config_path)
    try:
        cfg = PretrainedCfg.from_config(config, source=label)
    except ValueError as e:
        raise FileError(f"{config_path}: {e}") from None
    try:
        arch = get_model(cfg.architecture)
    except ValueError:
        raise FileError(
            f"{config_path}: architecture {shown(cfg.architecture)} is not one se-flax builds; "
            f"it builds {', '.join(list_models())}"
        ) from None
    notes: list[str] = []
    kwargs = _model_kwargs(config, config_path, notes, arch.family)
    _check_top_level(config, cfg, arch, config_path, kwargs)
    if kwargs.get("in_chans", cfg.input_size[0]) != cfg.input_size[0]:
        raise FileError(
            f"{config_path}: model_args in_chans {kwargs['in_chans']} but input_size "
            f"{cfg.input_size}"
        )
    kwargs["in_chans"] = cfg.input_size[0]
    if weights.exists() and not weights.is_file():
        raise FileError(f"{weights}: not a regular file (a FIFO, device or directory): refused")
    if not weights.is_file():
        others = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pth"))
        raise FileError(
            f"{directory}: no {WEIGHTS_FILE}"
            + (
                f" (it has {', '.join(others)}: se-flax reads safetensors only; convert with "
                f"se-convert first)"
                if others
                else ""
            )
        )
    stored = read_file(weights)
    if stored.framework != "torch":
        raise FileError(f"{weights}: holds Flax paths, not timm's PyTorch state_dict keys")
    return Pretrained(cfg, stored.tensors, kwargs, directory, notes)


def report(pretrained: Pretrained, parameters: int, dtype: Any, verbose: bool) -> None:
    """Prints (to stderr, with ``verbose``) what was loaded: one line, then the notes."""
    if not verbose:
        return
    cfg = pretrained.cfg
    tag = f", tag {cfg.tag}" if cfg.tag else ""
    print(
        f"loaded {cfg.source}: {cfg.architecture}{tag}, {parameters:,} parameters, "
        f"{np.dtype(dtype).name} (stored {pretrained.stored})",
        file=sys.stderr,
    )
    for note in pretrained.notes:
        print(f"  note: {note}", file=sys.stderr)


def misfits(shape: tuple[int, ...], dtype: Any, spec: Any) -> bool:
    """Whether a tensor of ``shape`` and ``dtype`` is not what its plan entry ``spec`` (a
    :class:`se_common.TensorSpec`) says: another shape, a floating tensor where the plan has an
    integer counter or the reverse, or another integer dtype."""
    return (
        tuple(shape) != tuple(spec.shape)
        or (spec.dtype == "float") != is_floating(dtype)
        or (spec.dtype != "float" and np.dtype(dtype) != np.dtype(spec.dtype))
    )


def check_state_dict(
    tensors: dict[str, np.ndarray], config: Any, num_classes: int, in_chans: int, what: str
) -> None:
    """``tensors`` against the framework-free plan of ``config`` (keys, shapes, one floating
    dtype, int64 counters): a ConversionError listing every difference."""
    from se_weights._convert import ConversionError

    plan = config.state_dict(num_classes, in_chans)
    missing = [k for k in plan if k not in tensors]
    unexpected = [k for k in tensors if k not in plan]
    floats = {np.dtype(v.dtype) for v in tensors.values() if is_floating(v.dtype)}
    mismatched = [
        f"{k}: {tuple(v.shape)} {np.dtype(v.dtype)}, the plan has {plan[k].shape} {plan[k].dtype}"
        for k, v in tensors.items()
        if k in plan and misfits(v.shape, v.dtype, plan[k])
    ]
    if len(floats) > 1:
        mismatched.append(f"floating dtypes {', '.join(sorted(d.name for d in floats))}: one only")
    if missing or unexpected or mismatched:
        raise ConversionError(what, missing, unexpected, mismatched)


def write_pretrained(
    directory: str | os.PathLike,
    tensors: dict[str, np.ndarray],
    config: Any,
    *,
    in_chans: int,
    num_classes: int,
    pretrained_cfg: PretrainedCfg | None,
    force: bool = False,
) -> Path:
    """Writes timm's layout for a registered architecture: ``model.safetensors`` (the
    state_dict ``tensors``, metadata ``format: pt``) and ``config.json``, each atomically.

    The architecture is the registered name of ``config`` (:func:`se_common.architecture_of`),
    and ``tensors`` must be exactly its state_dict plan; the data config is ``pretrained_cfg``,
    else timm's ResNet-style defaults. Other files in ``directory`` are left alone; an existing
    ``config.json`` or ``model.safetensors`` is replaced only with ``force``.
    """
    from safetensors.numpy import save_file

    try:
        arch = architecture_of(config)
    except ValueError as e:
        raise FileError(f"save_pretrained: {e}") from None
    architecture, family = arch.name, arch.family
    what = f"save_pretrained: the weights are not {architecture}'s"
    check_state_dict(tensors, config, num_classes, in_chans, what)
    if pretrained_cfg is None:
        if in_chans != 3:
            raise FileError(
                f"save_pretrained: a model of {in_chans} input channels needs pretrained_cfg= "
                f"with its mean and std (the defaults are ImageNet's, for 3 channels)"
            )
        pretrained_cfg = PretrainedCfg(architecture, num_classes=num_classes)
    if not isinstance(pretrained_cfg, PretrainedCfg):
        raise TypeError(
            f"pretrained_cfg must be a se_common.PretrainedCfg, got {type(pretrained_cfg).__name__}"
        )
    if pretrained_cfg.architecture != architecture:
        raise FileError(
            f"save_pretrained: pretrained_cfg is for {pretrained_cfg.architecture!r}, the model "
            f"is {architecture!r}"
        )
    if pretrained_cfg.input_size[0] != in_chans:
        raise FileError(
            f"save_pretrained: pretrained_cfg input_size {pretrained_cfg.input_size} but the "
            f"model takes {in_chans} channels"
        )
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileError(f"{directory}: exists and is not a directory")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if (directory / name).exists() and not force:
            raise FileError(f"{directory / name} exists; pass force=True to overwrite it")
    cfg = {**pretrained_cfg.to_dict(), "num_classes": num_classes}
    cfg.setdefault("first_conv", family.first_conv)
    cfg.setdefault("classifier", family.classifier)
    if num_classes != pretrained_cfg.num_classes:  # timm: labels describe the old classifier
        for key in ("label_names", "label_descriptions", "label_offset"):
            cfg.pop(key, None)
    labels = {k: cfg.pop(k) for k in ("label_names", "label_descriptions") if k in cfg}
    text = json.dumps(
        {
            "architecture": architecture,
            "num_classes": num_classes,
            "num_features": pooled_features(config),
            "global_pool": "avg",
            **labels,  # at the top, as timm's save_config_for_hf writes them
            "model_args": {"in_chans": in_chans, "num_classes": num_classes, "global_pool": "avg"},
            "pretrained_cfg": cfg,
        },
        indent=2,
    )
    with _atomic(directory / WEIGHTS_FILE, force) as tmp:
        arrays = {k: np.asarray(v, order="C") for k, v in tensors.items()}
        save_file(arrays, tmp, metadata={"format": "pt"})
    with _atomic(directory / CONFIG_FILE, force) as tmp:
        tmp.write_text(text + "\n")
    return directory
