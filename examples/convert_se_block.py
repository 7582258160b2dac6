"""Builds PyTorch SE layers and an SE backbone, converts their weights to Flax, runs both on the
same input and prints the largest difference, then checks that the weights survive
torch -> flax -> torch bit for bit.

    ./scripts/demo.sh [--channels 256] [--batch 8] [--size 14] [--seed 0] [--model seresnet18]
"""

from __future__ import annotations

import argparse
import sys

import jax

jax.config.update("jax_enable_x64", True)  # for the float64 rows
jax.config.update("jax_default_matmul_precision", "highest")  # no TF32 on GPUs

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import se_flax  # noqa: E402
import se_torch  # noqa: E402
from se_common import list_models  # noqa: E402
from se_common._cli import positive  # noqa: E402
from se_convert import flax_to_torch, torch_to_flax  # noqa: E402


def layers(channels: int):
    """(name, PyTorch module factory, the Flax twin) for each flavour of SE layer."""
    hs = {"gate_layer": torch.nn.Hardsigmoid}
    return [
        (
            f"classic SELayer({channels}, 16)",
            lambda: se_torch.SELayer(channels, 16),
            lambda dt: se_flax.SELayer(16, param_dtype=dt),
        ),
        (
            f"SqueezeExcite({channels}) (timm SEModule)",
            lambda: se_torch.SqueezeExcite(channels),
            lambda dt: se_flax.SqueezeExcite(param_dtype=dt),
        ),
        (
            f"SqueezeExcite({channels}, hard-sigmoid)",
            lambda: se_torch.SqueezeExcite(channels, **hs),
            lambda dt: se_flax.SqueezeExcite(gate_fn=jax.nn.hard_sigmoid, param_dtype=dt),
        ),
    ]


def compare(name, make_torch, make_flax, x: np.ndarray) -> bool:
    """Prints one row per dtype; returns whether every round trip was bit-exact."""
    for tdtype, jdtype in ((torch.float64, jnp.float64), (torch.float32, jnp.float32)):
        tmodule = make_torch().to(tdtype).eval()
        variables = torch_to_flax(tmodule)
        with torch.no_grad():
            y_torch = tmodule(torch.from_numpy(x).to(tdtype)).numpy()
        x_nhwc = jnp.asarray(np.moveaxis(x, 1, -1), jdtype)
        y_flax = np.asarray(make_flax(jdtype).apply(variables, x_nhwc))
        diff = np.abs(np.moveaxis(y_flax, -1, 1) - y_torch).max()
        back = flax_to_torch(variables, make_torch().to(tdtype))
        exact = all(
            torch.equal(a, b)
            for a, b in zip(tmodule.state_dict().values(), back.state_dict().values(), strict=True)
        )
        verdict = "bit-exact" if exact else "DIFFERS"
        print(f"{name:<40} {jdtype.dtype!s:<8} {diff:>19.3e}  {verdict}")
        if not exact:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=positive(int), default=256)
    parser.add_argument("--batch", type=positive(int), default=8)
    parser.add_argument("--size", type=positive(int), default=14, help="height and width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model",
        default="seresnet18",
        choices=[*list_models(), "none"],
        help="backbone to convert as well (64x64 inputs, batch 2), or none",
    )
    args = parser.parse_args(argv)
    if args.channels < 16:
        parser.error(
            f"--channels must be >= 16 for the classic SELayer(C, 16), got {args.channels}"
        )

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch, args.channels, args.size, args.size))
    print(f"input: {x.shape} NCHW for PyTorch, {np.moveaxis(x, 1, -1).shape} NHWC for Flax")
    print(f"jax {jax.__version__} on {jax.default_backend()}, torch {torch.__version__}\n")
    print(f"{'layer':<40} {'dtype':<8} {'max |torch - flax|':>19}  round trip")
    ok = all(compare(name, t, f, x) for name, t, f in layers(args.channels))
    if ok and args.model != "none":
        x = rng.standard_normal((2, 3, 64, 64))
        ok = compare(
            f"{args.model} (timm layout), logits",
            lambda: se_torch.create_model(args.model),
            lambda dt: se_flax.create_model(args.model, param_dtype=dt),
            x,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
