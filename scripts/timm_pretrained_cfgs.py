"""Writes se_common/pretrained_cfgs.json: timm's pretrained configs of every registered name.

Run with timm installed (the cross-check venv): ``python scripts/timm_pretrained_cfgs.py``.
``--ranges`` writes nothing: it prints the span of each field over all of timm's pretrained
configs (every architecture, not only those registered here) and lists any that
``se_common.PretrainedCfg`` would refuse (its ``LIMITS``).
Each name maps its tags, timm's default first, to the ``pretrained_cfg`` entries timm writes
into a ``config.json`` (sources, file names and empty entries left out) plus ``hf_hub_id``
where weights are published. ``tests/test_model_registry.py`` checks the committed table
against timm where timm is installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# timm's filter_pretrained_cfg(remove_source=True) drops these before writing config.json
SOURCES = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "architecture", "custom_load")


def timm_table(names: list[str]) -> dict[str, dict[str, dict]]:
    """name -> tag -> entries, as timm 1.0 registers them."""
    from timm.models import _registry

    table = {}
    for name in names:
        tags = {}
        for full, cfg in _registry.get_arch_pretrained_cfgs(name).items():
            entries = {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in cfg.to_dict().items()
                if k not in SOURCES and v not in (None, "", [], ())
            }
            if cfg.hf_hub_id:
                entries["hf_hub_id"] = cfg.hf_hub_id
            tags[full.split(".", 1)[1]] = entries
        table[name] = tags
    return table


def ranges() -> None:
    """The span of timm's pretrained config fields, and the configs PretrainedCfg refuses."""
    import timm
    from timm.models import _registry

    from se_common import PretrainedCfg
    from se_common._pretrained import _FIELDS as FIELDS

    cfgs = _registry._model_pretrained_cfgs
    spans: dict[str, list[float]] = {}
    refused = []
    for full, cfg in cfgs.items():
        d = cfg.to_dict()
        for key in ("num_classes", "crop_pct", "test_crop_pct"):
            if d.get(key) is not None:
                spans.setdefault(key, []).append(d[key])
        for key in ("input_size", "test_input_size"):
            if d.get(key):
                spans.setdefault(f"{key} channels", []).append(d[key][0])
                spans.setdefault(f"{key} sides", []).extend(d[key][1:])
        for key in ("mean", "std"):
            spans.setdefault(key, []).extend(d[key])
        if d.get("tag"):
            spans.setdefault("tag length", []).append(len(d["tag"]))
        fields = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in d.items()
            if k in FIELDS and v is not None
        }
        try:
            PretrainedCfg(d["architecture"] or full.split(".")[0], **fields)
        except ValueError as e:
            refused.append(f"{full}: {e}")
    print(f"timm {timm.__version__}: {len(cfgs):,} pretrained configs")
    for key, values in spans.items():
        print(f"  {key}: {min(values):g} - {max(values):g}")
    print(f"refused by PretrainedCfg: {len(refused)}")
    for line in refused:
        print(f"  {line}")


def main() -> None:
    if sys.argv[1:] == ["--ranges"]:
        ranges()
        return
    import timm

    import se_common

    table = timm_table(se_common.list_models())
    lines = [
        f"{json.dumps(n)}: {{"
        + ",".join(f"\n  {json.dumps(t)}: {json.dumps(c)}" for t, c in tags.items())
        + "}"
        for n, tags in table.items()
    ]
    out = ROOT / "se_common" / "pretrained_cfgs.json"
    out.write_text(
        f'{{"timm": {json.dumps(timm.__version__)}, "models": {{\n' + ",\n".join(lines) + "}}\n"
    )
    json.loads(out.read_text())  # well-formed
    published = sum("hf_hub_id" in c for tags in table.values() for c in tags.values())
    print(
        f"{out.relative_to(ROOT)}: {len(table)} names, {published} published tags "
        f"(timm {timm.__version__})"
    )


if __name__ == "__main__":
    main()
