"""``se-convert INPUT OUTPUT``: convert weight files between PyTorch and Flax, safely.

Formats by extension: .pth/.pt/.bin (PyTorch), .safetensors (either framework), .msgpack
(flax.serialization), no extension (an orbax checkpoint directory). The input may also be
timm's pretrained layout: a hub id, or a directory with config.json and model.safetensors.
Exit status 2 on any error, with one message and nothing written.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from se_common import ATTENTION
from se_common._cli import positive
from se_convert._command import convert_file
from se_convert._models import model_names
from se_weights._convert import ConversionError
from se_weights._formats import DEFAULT_MAX_BYTES, MAX_BYTES_ENV, FileError

EPILOG = """\
examples:
  se-convert seresnet18.pth seresnet18.msgpack --model seresnet18 --verify
  se-convert resnet50_eca.pth resnet50_eca.safetensors --model resnet50 --attn eca
  se-convert se_block.pth se_block.safetensors          (a bare SE block needs no --model)
  se-convert seresnet18.msgpack seresnet18.pth --model seresnet18
  se-convert finetuned.pth finetuned.msgpack --model seresnet18   (num_classes and in_chans
                                                from fc.weight and conv1.weight; or pass them)
  se-convert timm/seresnet50.a1_in1k seresnet50.msgpack --verify   (a hub id: its cache, once
                                                downloaded; HF_HUB_OFFLINE=1 reads only the cache)
  se-convert my-seresnet50/ seresnet50.safetensors   (a directory with timm's config.json and
                                                model.safetensors, as save_pretrained writes)
PyTorch files are read with torch.load(weights_only=True): a pickle that would run code is
refused, and nothing in it runs. Hostile files get bounded time and memory: more than
--max-bytes of tensors, a pickle whose objects expand beyond 10**7 nodes, or a tensor whose
storage is smaller than its elements is refused before anything is materialised.
"""
ERROR_LINES = 4  # per category of a conversion error, without --verbose


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="se-convert",
        description="Convert SE block and SE-ResNet weights between PyTorch and Flax files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "input",
        help="checkpoint to read: a file, an orbax directory, a directory in timm's pretrained "
        "layout (config.json + model.safetensors) or a hub id (timm/seresnet50.a1_in1k)",
    )
    p.add_argument("output", help="file (or orbax directory) to write")
    p.add_argument(
        "--model",
        choices=model_names(),
        metavar="NAME",
        help="architecture: a create_model name (seresnet50, ...), or se / selayer for a bare "
        "SE block (timm layout / classic recipe). Needed for Flax -> PyTorch and --verify",
    )
    p.add_argument(
        "--attn",
        choices=sorted(ATTENTION),
        help="the backbone's attention layer when it is not the model's own "
        "(create_model(name, attn=...): resnet50 --attn eca is ECA-ResNet-50)",
    )
    p.add_argument(
        "--num-classes",
        type=_count(0),
        metavar="N",
        help="a backbone's classes, 0 for weights without a classifier (default: what the "
        "file records, else what its classifier's weight shows, else 1000)",
    )
    p.add_argument(
        "--in-chans",
        type=_count(1),
        metavar="N",
        help="a backbone's input channels (default: what the file records, else what its "
        "first convolution's weight shows, else 3)",
    )
    p.add_argument(
        "--framework",
        "--layout",
        dest="framework",
        choices=["torch", "flax"],
        help="whose layout to write in .safetensors (default: the other framework's)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="read the written file back, check every tensor, run both frameworks on one "
        "random input and fail above --tolerance (nothing is written then)",
    )
    p.add_argument(
        "--tolerance",
        type=positive(float),
        default=1e-4,
        help="max abs difference --verify accepts (default 1e-4, float32)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing OUTPUT (a file, or a checkpoint directory se-flax wrote; "
        "never another directory)",
    )
    p.add_argument(
        "--max-bytes",
        type=positive(int),
        help=f"refuse an input holding more bytes of tensors (default {DEFAULT_MAX_BYTES:,}, "
        f"or ${MAX_BYTES_ENV})",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help=f"list every problem of a failed conversion (default: {ERROR_LINES} per kind)",
    )
    return p.parse_args(argv)


def _count(least: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``least``; the message names the bad value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {value}")
        return value

    return parse


@contextmanager
def _quiet_stderr(enabled: bool, restore: bool = True) -> Iterator[TextIO]:
    """Routes file descriptor 2 to a scratch file while converting, and yields a stream to the
    real stderr for the command's own messages: the readers' logging and their background
    threads' tracebacks (tensorstore's, on a corrupted orbax checkpoint) never reach the terminal.
    ``restore=False`` leaves fd 2 on the scratch file (the process is about to exit, and those
    threads may still print). ``--verbose`` lets everything through."""
    if not enabled:
        yield sys.stderr
        return
    sys.stderr.flush()
    saved = os.dup(2)
    scratch = tempfile.TemporaryFile()  # noqa: SIM115 (closed below, or left to the exit)
    os.dup2(scratch.fileno(), 2)
    err = os.fdopen(os.dup(saved), "w")
    try:
        yield err
    finally:
        err.flush()
        err.close()
        sys.stderr.flush()
        if restore:
            os.dup2(saved, 2)
            scratch.close()
        os.close(saved)


def main(argv: list[str] | None = None, *, _exiting: bool = False) -> int:
    args = parse_args(argv)
    messages = io.StringIO()
    with _quiet_stderr(not args.verbose, restore=not _exiting) as real_stderr:
        code = _convert(args, messages)
        if _exiting:
            real_stderr.write(messages.getvalue())
    if not _exiting:
        sys.stderr.write(messages.getvalue())
    return code


def _convert(args: argparse.Namespace, err: TextIO) -> int:
    try:
        report = convert_file(
            args.input,
            args.output,
            args.model,
            attn=args.attn,
            num_classes=args.num_classes,
            in_chans=args.in_chans,
            framework=args.framework,
            verify=args.verify,
            force=args.force,
            tolerance=args.tolerance,
            max_bytes=args.max_bytes,
            log=lambda message: print(f"note: {message}"),
        )
    except ConversionError as e:
        limit = None if args.verbose else ERROR_LINES
        cut = limit is not None and any(
            len(items) > limit for items in (e.missing, e.unexpected, e.mismatched)
        )
        hint = "\n(--verbose lists every problem)" if cut else ""
        print(f"se-convert: error: {e.report(limit)}{hint}", file=err)
        return 2
    except FileError as e:
        print(f"se-convert: error: {e}", file=err)
        return 2
    except Exception as e:  # never a traceback for a bad file: one line, status 2
        print(f"se-convert: error: {type(e).__name__}: {e}", file=err)
        return 2
    model = [report["model"], *report["options"]] if report["model"] else []
    print(
        f"{report['source']} -> {report['output']} ({', '.join([report['direction'], *model])}"
        f"): {report['tensors']} tensors, "
        f"{report['parameters']:,} values, {'/'.join(report['dtypes'])}, "
        f"{report['seconds']:.2f} s"
    )
    if "max_abs_diff" in report:
        print(
            f"verify: max |torch - flax| = {report['max_abs_diff']:.3g} "
            f"(tolerance {report['tolerance']:g}) on one random input, read back from the file"
        )
    return 0


def run() -> None:
    """The console entry point: ``main``, then an immediate exit, so that no reader's background
    thread (tensorstore's, after a failed orbax read) prints into the terminal afterwards."""
    code = main(_exiting=True)
    sys.stdout.flush()
    os._exit(code)
