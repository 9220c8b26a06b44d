"""`cliplab <command>`: each command lives in its own module, imported only when it runs.

A command module provides `add_arguments(parser)` and `run(args) -> int`. Importing lazily keeps
`cliplab serve` torch-free and `cliplab --help` instant.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("trainer.commands.train", "train or fine-tune CLIP from a YAML config or a bundled one by name (also under torchrun)"),
    "configs": ("trainer.configs_cli", "list the bundled configs (`cliplab train cpu-demo` runs one from any folder)"),
    "runs": ("trainer.runs_cli", "list the runs of a runs folder, or of a server, with status and key metrics"),
    "eval": ("trainer.evaluate_cli", "evaluate a checkpoint on a val set (accuracy, retrieval, zero-shot)"),
    "embed": ("trainer.embed", "print embeddings of images and/or texts, and their similarity table"),
    "prepare": ("dataset.prepare", "prepare a dataset (ImageNet-val, class folders, CSV, shards, --demo)"),
    "serve": ("backend.serve", "start the dashboard and REST API"),
    "sync": ("trainer.sync", "upload a run directory's events to a dashboard (a run trained while it was away)"),
}


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_SYNTAX = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _version() -> str:
    """The installed package's version, else the source tree's pyproject.toml version (a plain checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cliplab")
    except PackageNotFoundError:
        pass
    try:
        pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    except OSError:
        return "unknown"
    project = pyproject.split("[project]", 1)[-1].split("\n[", 1)[0]  # only the [project] table's own keys
    found = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    return found.group(1) if found else "unknown"


def device_flag(spec: str) -> str:
    """argparse type of --device: checks the spelling without importing torch (see resolve_device_flag)."""
    if not _DEVICE_SYNTAX.fullmatch(spec):
        raise argparse.ArgumentTypeError(f"{spec!r} is not a device; use {DEVICE_CHOICES}")
    return spec


def resolve_device_flag(spec: str) -> "torch.device":
    """--device (as device_flag accepted it) -> torch.device; auto is cuda when available, else cpu.

    Raises ValueError naming --device when the device is not on this machine.
    """
    from trainer.devices import resolve_device

    return resolve_device(spec, name="--device")


def non_negative_int(text: str) -> int:
    """argparse type for counts such as --workers."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _top_level_help() -> str:
    width = max(len(c) for c in COMMANDS)
    rows = "\n".join(f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items())
    return (
        "usage: cliplab <command> [options]\n\n"
        "CLIP training and fine-tuning with a live dashboard.\n\n"
        f"commands:\n{rows}\n\n"
        "Run `cliplab <command> --help` for a command's options; `cliplab --version` prints the version."
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0
    if argv[0] == "--version":
        print(f"cliplab {_version()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"cliplab: unknown command {command!r}\n\n{_top_level_help()}", file=sys.stderr)
        return 2
    module_name, description = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"cliplab {command}", description=description)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
