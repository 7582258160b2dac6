"""The model table of docs/models.md, generated from the registry (no hand-written rows).

``docs/models.md`` holds two markers that the docs build (``scripts/docs_hooks.py``) replaces:

* ``<!-- model-table:built -->``: every registered architecture (``se_common.list_models()``):
  its family, parameter count (planned framework-free by its config), attention, front-ends
  and the published weight tags it loads, each linked to its hub repository.
* ``<!-- model-table:timm -->``: timm's architectures with SE-style attention and published
  weights that are not registered here, grouped by timm's model module, from the committed
  ``se_common/timm_se_architectures.json`` (``scripts/timm_pretrained_cfgs.py
  --se-architectures`` writes it where timm is installed).

``python scripts/model_table.py`` prints the page as the build renders it. Nothing here imports
torch, jax or timm.
"""

from __future__ import annotations

import html
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import se_common  # noqa: E402

TIMM_SE = ROOT / "se_common" / "timm_se_architectures.json"
MARKERS = {
    "<!-- model-table:built -->": "built_table",
    "<!-- model-table:timm -->": "timm_table",
}
HUB = "https://huggingface.co"
# BatchNorm's running statistics are float buffers, not parameters
BUFFERS = (".running_mean", ".running_var")


def parameter_count(name: str, num_classes: int = 1000, in_chans: int = 3) -> int:
    """The trainable parameters of ``name`` as its config plans them, framework-free: the
    float tensors of its state_dict plan less BatchNorm's running statistics (and the int64
    ``num_batches_tracked`` counters), i.e. ``sum(p.numel() for p in model.parameters())``."""
    plan = se_common.get_model(name).config.state_dict(num_classes, in_chans)
    return sum(
        math.prod(spec.shape)
        for key, spec in plan.items()
        if spec.dtype == "float" and not key.endswith(BUFFERS)
    )


def hub_url(name: str, tag: str) -> str:
    """The hub repository of ``name.tag`` (timm's ``hf_hub_id``, ``timm/<name>.<tag>``)."""
    hub_id = se_common.get_model(name).pretrained[tag].get("hf_hub_id") or f"timm/{name}.{tag}"
    return f"{HUB}/{hub_id}"


SELECTIVE_KERNEL = (
    "Selective Kernel unit (Li et al., CVPR 2019) in place of the 3x3 convolutions: paths of "
    "3x3 convolutions (dilations 1 and 2) fused by a softmax attention over pooled features "
    "(timm's SelectiveKernel; the config's sk)"
)


def attention_of(config: Any) -> list[tuple[str, str]]:
    """(short name, what it is in this config) of each attention a config places: what its
    ``attention()`` says where it has one (the EfficientNet family's block SE), else its
    ``attn`` (:data:`se_common.ATTENTION`) and its Selective Kernel unit (``sk``), if any."""
    if hasattr(config, "attention"):
        return list(config.attention())
    found = []
    attn = getattr(config, "attn", None)
    if attn is not None:
        found.append((attn, se_common.ATTENTION[attn].description))
    sk = getattr(config, "sk", None)
    if sk is not None:
        inputs = "each path a slice of the input" if sk.split_input else "each path all inputs"
        found.append(
            (
                "sk",
                f"Selective Kernel unit: kernels {', '.join(map(str, sk.kernel_size))}, "
                f"attention width {sk.rd_ratio:g} x channels (divisor {sk.rd_divisor}), {inputs}",
            )
        )
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def built_table() -> str:
    """The registered architectures, one row each, then the attention types' legend."""
    rows = [
        "| Name | Family | Parameters | Attention | Front-ends | Published weights (timm tags) |",
        "|---|---|--:|---|---|---|",
    ]
    for name in se_common.list_models():
        arch = se_common.get_model(name)
        attn = (
            " + ".join(
                f'<abbr title="{html.escape(desc)}">`{short}`</abbr>'
                for short, desc in attention_of(arch.config)
            )
            or "none"
        )
        fronts = ", ".join(f"`{front_end}`" for front_end in arch.family.builders)
        tags = ", ".join(f"[`{tag}`]({hub_url(name, tag)})" for tag in arch.tags) or "none"
        rows.append(
            f"| `{name}` | `{arch.family.name}` | {parameter_count(name):,} | {attn} | "
            f"{fronts} | {tags} |"
        )
    published = len(se_common.list_models(pretrained=True))
    lines = [
        f"{len(se_common.list_models())} architectures, {published} published weight files "
        "(parameters with 1000 classes and 3 input channels, BatchNorm statistics excluded).",
        "",
        *rows,
        "",
        "Front-ends: `torch` (se_torch), `linen` (se_flax), `nnx` (se_flax.nnx). "
        "Attention: the layers of `se_common.ATTENTION`, which every ResNet also takes as an "
        'option (`create_model("resnet50", attn="eca")`), and the Selective Kernel unit:',
        "",
    ]
    lines += [f"- `{short}`: {_cell(a.description)}" for short, a in se_common.ATTENTION.items()]
    lines += [f"- `sk`: {SELECTIVE_KERNEL}", f"- `mb_se`: {_cell(se_common.MB_SE)}"]
    lines += ["- none: a plain backbone, no attention layer"]
    return "\n".join(lines) + "\n"


def timm_se_architectures() -> dict[str, Any]:
    """The committed list of timm's SE-style architectures with published weights."""
    return json.loads(TIMM_SE.read_text())


def unbuilt() -> dict[str, dict[str, Any]]:
    """timm's SE-style architectures with published weights that no registered name builds."""
    registered = set(se_common.list_models())
    archs = timm_se_architectures()["architectures"]
    return {name: row for name, row in archs.items() if name not in registered}


def timm_table() -> str:
    """timm's SE-style architectures not built here: a count per timm module, then each
    module's architectures (collapsed)."""
    data = timm_se_architectures()
    labels = data["attention"]
    registered = set(se_common.list_models())
    built = [n for n in data["architectures"] if n in registered]
    todo = unbuilt()
    groups: dict[str, list[str]] = defaultdict(list)
    for name, row in todo.items():
        groups[row["module"]].append(name)
    order = sorted(groups, key=lambda m: (-len(groups[m]), m))
    tags = sum(len(row["tags"]) for row in todo.values())
    lines = [
        f"timm {data['timm']} publishes weights on the hub for {data['published']} "
        "architectures; "
        f"{len(data['architectures'])} of them have SE-style attention. "
        f"{len(built)} are built here ({', '.join(f'`{n}`' for n in built)}); "
        f"**{len(todo)} are not yet**, with {tags} published weight files, in "
        f"{len(groups)} of timm's model modules:",
        "",
        "| timm module | Architectures | Weight files | Attention |",
        "|---|--:|--:|---|",
    ]
    for module in order:
        names = groups[module]
        kinds = sorted({a for n in names for a in todo[n]["attention"]})
        lines.append(
            f"| [`{module}`](#timm-{module}) | {len(names)} | "
            f"{sum(len(todo[n]['tags']) for n in names)} | "
            f"{', '.join(labels[k] for k in kinds)} |"
        )
    found = {a for row in data["architectures"].values() for a in row["attention"]}
    lines += ["", "Attention, by the timm class found in a model:", ""]
    for a in labels:
        if a in found:
            n_todo = sum(a in row["attention"] for row in todo.values())
            n_built = sum(a in data["architectures"][n]["attention"] for n in built)
            lines.append(f"- {labels[a]}: `{a}` ({n_todo} not built, {n_built} built here)")
    absent = [f"{label} (`{a}`)" for a, label in labels.items() if a not in found]
    if absent:
        lines += [
            "",
            f"Looked for, in no architecture with published weights: {', '.join(absent)}.",
        ]
    for module in order:
        names = groups[module]
        lines += [
            "",
            f"### `{module}`: {len(names)} {{ #timm-{module} }}",
            "",
            f'??? note "{len(names)} architectures of timm.models.{module}"',
            "",
            "    | Name | Parameters | Attention | Published weights |",
            "    |---|--:|---|---|",
        ]
        for name in names:
            row = todo[name]
            attn = ", ".join(labels[a] for a in row["attention"])
            weights = ", ".join(f"[`{t}`]({HUB}/{hub})" for t, hub in row["tags"].items())
            lines.append(f"    | `{name}` | {_millions(row['parameters'])} | {attn} | {weights} |")
    return "\n".join(lines) + "\n"


def render(markdown: str) -> str:
    """``markdown`` with each marker replaced by its generated table."""
    for marker, function in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, globals()[function]())
    return markdown


def main() -> None:
    print(render((ROOT / "docs" / "models.md").read_text()), end="")


if __name__ == "__main__":
    main()
