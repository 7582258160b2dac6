"""Argument types shared by the project's commands (examples, benchmarks)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["positive"]


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, which must be > 0; the message names the bad value."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a value > 0, got {text}")
        return value

    return parse
