"""Trains a small SE-ResNet on scikit-learn's handwritten digits in Flax and in PyTorch, from the
same converted initialisation and the same batches, and plots both frameworks' curves.

    python examples/train_digits.py [--epochs 12] [--batch-size 64] [--lr 0.05] [--size 16]
                                    [--out DIR]

An example above both twins (it imports ``se_flax`` and ``se_torch``), not part of either
package. Needs torch, scikit-learn, matplotlib and tqdm (``pip install 'se-flax[train]'``). Writes
``DIR/log.json`` (settings, machine, versions, per-epoch metrics) and ``DIR/curves.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from se_common._cli import positive

MODEL = "SE-ResNet-10: ResNetConfig('basic', (1, 1, 1, 1), attn='se')"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python examples/train_digits.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--epochs", type=positive(int), default=12)
    parser.add_argument("--batch-size", type=positive(int), default=64)
    parser.add_argument("--lr", type=positive(float), default=0.05, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument(
        "--size",
        type=int,
        default=16,
        choices=(8, 16, 24, 32),
        help="image side: the 8x8 digits are upsampled by repetition",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=positive(int), help="stop early (smoke tests)")
    parser.add_argument("--out", type=Path, default=Path("runs/digits"), help="output directory")
    args = parser.parse_args(argv)
    if args.weight_decay < 0:
        parser.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    return args


def load_data(size: int, seed: int) -> dict[str, np.ndarray]:
    """Digits split 80/20 (stratified), upsampled, standardised with the training statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.kron(digits.images, np.ones((size // 8, size // 8))).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=seed, stratify=digits.target
    )
    mean, std = x_train.mean(), x_train.std()
    return {
        "x_train": ((x_train - mean) / std)[..., None],  # NHWC, one channel
        "y_train": y_train.astype(np.int64),
        "x_test": ((x_test - mean) / std)[..., None],
        "y_test": y_test.astype(np.int64),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    import se_flax
    import se_torch
    from se_common import ResNetConfig
    from se_convert import torch_to_flax
    from se_flax import optim
    from se_flax.training import TrainState, eval_step, train_step
    from se_torch import optim as torch_optim
    from se_torch import training as torch_training

    torch.manual_seed(args.seed)
    data = load_data(args.size, args.seed)
    steps_per_epoch = len(data["y_train"]) // args.batch_size  # full batches: one compiled shape
    if steps_per_epoch < 1:
        sys.exit(
            f"error: --batch-size {args.batch_size} exceeds the {len(data['y_train'])} "
            f"training images"
        )
    total = args.epochs * steps_per_epoch
    rng = np.random.default_rng(args.seed)
    order = [rng.permutation(len(data["y_train"])) for _ in range(args.epochs)]
    schedule = {"lr": args.lr, "warmup_steps": steps_per_epoch, "total_steps": total + 1}

    config = ResNetConfig("basic", (1, 1, 1, 1), attn="se")
    tmodel = se_torch.ResNet(config, num_classes=10, in_chans=1)
    variables = torch_to_flax(tmodel)  # the one initialisation both frameworks start from
    fmodel = se_flax.ResNet(config, num_classes=10, in_chans=1)
    state = TrainState.create(
        apply_fn=fmodel.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=optim.sgd(
            optim.warmup_cosine_lr(**schedule), momentum=0.9, weight_decay=args.weight_decay
        ),
    )
    optimizer = torch.optim.SGD(
        tmodel.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay
    )
    scheduler = torch_optim.warmup_cosine_lr(optimizer, schedule["warmup_steps"], total + 1)

    def flax_step(x, y):
        nonlocal state
        state, metrics = train_step(state, x, y)
        return metrics

    def flax_eval(x, y):
        return eval_step(state, x, y)

    def torch_step(x, y):
        return torch_training.train_step(tmodel, optimizer, x, y, scheduler)

    def torch_eval(x, y):
        return torch_training.eval_step(tmodel, x, y)

    # Each framework's own layout, made once: NHWC arrays for Flax, NCHW tensors for PyTorch.
    torch_data = {
        k: torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, -1, 1)) if k[0] == "x" else v)
        for k, v in data.items()
    }

    log = {
        "model": MODEL,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jax_backend": jax.default_backend(),
        },
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "flax": _version("flax"),
            "optax": _version("optax"),
            "torch": torch.__version__,
        },
        "epochs": [],
        "seconds": {},
    }
    frameworks = {
        "flax": (flax_step, flax_eval, data),
        "torch": (torch_step, torch_eval, torch_data),
    }
    for name, (step_fn, eval_fn, arrays) in frameworks.items():
        start, done = time.perf_counter(), 0
        with tqdm(total=min(total, args.max_steps or total), desc=f"{name:>5}", unit="step") as bar:
            for epoch in range(args.epochs):
                losses, accs = [], []
                for i in range(steps_per_epoch):
                    if args.max_steps and done >= args.max_steps:
                        break
                    idx = order[epoch][i * args.batch_size : (i + 1) * args.batch_size]
                    m = step_fn(arrays["x_train"][idx], arrays["y_train"][idx])
                    losses.append(float(m["loss"]))
                    accs.append(float(m["accuracy"]))
                    done += 1
                    bar.update()
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if not losses:
                    break
                test = eval_fn(arrays["x_test"], arrays["y_test"])
                log["epochs"].append(
                    {
                        "framework": name,
                        "epoch": epoch + 1,
                        "train_loss": float(np.mean(losses)),
                        "train_accuracy": float(np.mean(accs)),
                        "test_loss": float(test["loss"]),
                        "test_accuracy": float(test["accuracy"]),
                    }
                )
        log["seconds"][name] = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "log.json").write_text(json.dumps(log, indent=2) + "\n")
    plot(log, args.out / "curves.png")
    for name in frameworks:
        last = [e for e in log["epochs"] if e["framework"] == name][-1]
        print(
            f"{name:>5}: test accuracy {last['test_accuracy']:.4f} after {last['epoch']} "
            f"epochs, {log['seconds'][name]:.1f} s"
        )
    print(f"wrote {args.out / 'log.json'} and {args.out / 'curves.png'}")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def plot(log: dict, path: Path) -> None:
    """Loss and accuracy per epoch, both frameworks overlaid (train dashed, test solid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, color in (("flax", "tab:blue"), ("torch", "tab:orange")):
        rows = [e for e in log["epochs"] if e["framework"] == name]
        epochs = [e["epoch"] for e in rows]
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            ax.plot(
                epochs,
                [e[f"train_{metric}"] for e in rows],
                "--",
                color=color,
                label=f"{name} train",
            )
            ax.plot(
                epochs, [e[f"test_{metric}"] for e in rows], "-", color=color, label=f"{name} test"
            )
    for ax, metric in zip(axes, ("cross-entropy loss", "accuracy"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_yscale("log")
    fig.suptitle(f"{MODEL.split(':')[0]} on scikit-learn digits, same initialisation and batches")
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
