"""Writes tests/data/regnet_widths.json: timm's RegNet width and group table, every registered
RegNet as timm builds it.

Run with timm installed (the cross-check venv): ``python scripts/timm_regnet_widths.py``.
Each name maps to the per-block widths of timm's ``generate_regnet`` and, per block of the
built model (on PyTorch's meta device: no memory), its input, bottleneck and output widths, the
groups of its 3x3 conv and its SE width (0: none). ``tests/test_regnet.py`` checks
se_common's plans against the committed table always, and the table against timm where timm is
installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "tests" / "data" / "regnet_widths.json"


def _conv(module):
    """The conv of timm's ConvNormAct, or a bare conv (pre-activation blocks)."""
    return getattr(module, "conv", module)


def timm_table(names: list[str]) -> dict[str, dict[str, list]]:
    """name -> {"widths": [...], "blocks": [[in, bottleneck, out, groups, se], ...]}."""
    import timm
    import torch
    from timm.models import regnet

    table = {}
    for name in names:
        cfg = regnet.model_cfgs[name]
        widths, _, _ = regnet.generate_regnet(cfg.wa, cfg.w0, cfg.wm, cfg.depth, cfg.group_size)
        with torch.device("meta"):
            model = timm.create_model(name)
        blocks = []
        for s in range(1, 5):
            for block in getattr(model, f"s{s}").children():
                conv1, conv2, conv3 = (_conv(getattr(block, f"conv{i}")) for i in (1, 2, 3))
                se = getattr(block.se, "fc1", None)
                blocks.append(
                    [
                        conv1.in_channels,
                        conv2.out_channels,
                        conv3.out_channels,
                        conv2.groups,
                        0 if se is None else se.out_channels,
                    ]
                )
        table[name] = {"widths": widths, "blocks": blocks}
    return table


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import se_common

    table = timm_table(se_common.list_models("regnet*"))
    lines = [f"  {json.dumps(name)}: {json.dumps(row)}" for name, row in table.items()]
    TABLE.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {TABLE.relative_to(ROOT)}: {len(table)} RegNets")


if __name__ == "__main__":
    main()
