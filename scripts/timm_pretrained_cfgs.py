"""Writes se_common/pretrained_cfgs.json: timm's pretrained configs of every registered name.

Run with timm installed (the cross-check venv): ``python scripts/timm_pretrained_cfgs.py``.
``--ranges`` writes nothing: it prints the span of each field over all of timm's pretrained
configs (every architecture, not only those registered here) and lists any that
``se_common.PretrainedCfg`` would refuse (its ``LIMITS``).
Each name maps its tags, timm's default first, to the ``pretrained_cfg`` entries timm writes
into a ``config.json`` (sources, file names and empty entries left out) plus ``hf_hub_id``
where weights are published. ``tests/test_model_registry.py`` checks the committed table
against timm where timm is installed.

``--se-architectures`` writes se_common/timm_se_architectures.json instead: every architecture
timm publishes weights for on the hub (a tag with ``hf_hub_id``) that has SE-style attention
(:data:`SE_STYLE`, the modules looked for), found by building each one on PyTorch's meta device
(no memory, no initialisation: about 3 minutes for timm 1.0's 1,151 on 2 cores) and listing its
attention modules, with its timm module, parameter count and hub ids. ``docs/models.md`` lists
those not registered here (``scripts/model_table.py``).
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


# timm's SE-style attention modules (channel gates computed from pooled context), by class
# path -> a short label; the classes an installed timm lacks are skipped, an alias of a class
# listed before it counts as that class. Self-attention
# (non-local, halo, bottleneck attention) and plain spatial attention are not SE-style.
SE_STYLE = {
    "timm.layers.squeeze_excite.SEModule": "SE",
    "timm.layers.squeeze_excite.SqueezeExcite": "SE (squeeze_excite.SqueezeExcite)",
    "timm.layers.squeeze_excite.SqueezeExciteCl": "SE, channels-last",
    "timm.models._efficientnet_blocks.SqueezeExcite": "SE (EfficientNet blocks)",
    "timm.models.senet.SEModule": "SE (legacy SENet)",
    "timm.layers.squeeze_excite.EffectiveSEModule": "effective SE",
    "timm.models.hgnet.EseModule": "effective SE (HGNet)",
    "timm.layers.eca.EcaModule": "ECA",
    "timm.layers.eca.CecaModule": "circular ECA",
    "timm.layers.cbam.CbamModule": "CBAM",
    "timm.layers.cbam.LightCbamModule": "light CBAM",
    "timm.layers.selective_kernel.SelectiveKernel": "Selective Kernel",
    "timm.layers.split_attn.SplitAttn": "split attention (ResNeSt)",
    "timm.layers.gather_excite.GatherExcite": "gather-excite",
    "timm.layers.global_context.GlobalContext": "global context (GCNet)",
    "timm.layers.coord_attn.CoordAttn": "coordinate attention",
    "timm.layers.coord_attn.SimpleCoordAttn": "simple coordinate attention",
    "timm.layers.coord_attn.EfficientLocalAttn": "efficient local attention",
    "timm.layers.coord_attn.StripAttn": "strip attention",
}


def se_architectures() -> None:
    """Writes se_common/timm_se_architectures.json (see the module's docstring)."""
    import importlib
    import time
    import warnings

    import timm
    import torch
    from timm.models import _registry

    classes = {}
    for path, label in SE_STYLE.items():
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name, None)
        if cls is not None and cls not in classes:  # squeeze_excite.SqueezeExcite is SEModule
            classes[cls] = (path, label)
    start = time.perf_counter()
    hub: dict[str, dict[str, str]] = {}
    for full in timm.list_models(pretrained=True):
        cfg = _registry.get_pretrained_cfg(full)
        if cfg is not None and cfg.hf_hub_id:
            name, _, tag = full.partition(".")
            hub.setdefault(name, {})[tag] = cfg.hf_hub_id
    found = {}
    for name, tags in hub.items():
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False)
        kinds = {classes[type(m)][0] for m in model.modules() if type(m) in classes}
        if kinds:
            found[name] = {
                "module": _registry._model_to_module[name],
                "attention": [p for p in SE_STYLE if p in kinds],
                "parameters": sum(p.numel() for p in model.parameters()),
                "tags": tags,
            }
    seconds = time.perf_counter() - start
    out = ROOT / "se_common" / "timm_se_architectures.json"
    rows = ",\n".join(f"{json.dumps(n)}: {json.dumps(row)}" for n, row in found.items())
    used = {p: label for cls, (p, label) in classes.items()}
    out.write_text(
        f'{{"timm": {json.dumps(timm.__version__)}, "torch": {json.dumps(torch.__version__)}, '
        f'"published": {len(hub)},\n"attention": {json.dumps(used)},\n'
        f'"architectures": {{\n{rows}}}}}\n'
    )
    json.loads(out.read_text())  # well-formed
    print(
        f"{out.relative_to(ROOT)}: {len(found)} of {len(hub)} architectures with published "
        f"weights have SE-style attention (timm {timm.__version__}, {seconds:.0f} s)"
    )


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
    if sys.argv[1:] == ["--se-architectures"]:
        se_architectures()
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
