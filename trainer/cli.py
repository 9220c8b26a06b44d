"""`cliplab <command>`: each command lives in its own module, imported only when it runs.

A command module provides `add_arguments(parser)` and `run(args) -> int`. Importing lazily keeps
`cliplab serve` torch-free and `cliplab --help` instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("trainer.train", "train or fine-tune CLIP from a YAML config (also under torchrun)"),
    "eval": ("trainer.evaluate_cli", "evaluate a checkpoint on a val set (accuracy, retrieval, zero-shot)"),
    "embed": ("trainer.embed", "print the image-text similarity table for images and texts"),
    "prepare": ("dataset.prepare", "prepare a dataset (ImageNet-val, class folders, CSV, shards, --demo)"),
    "serve": ("backend.serve", "start the dashboard and REST API"),
}


def _top_level_help() -> str:
    width = max(len(c) for c in COMMANDS)
    rows = "\n".join(f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items())
    return (
        "usage: cliplab <command> [options]\n\n"
        "CLIP training and fine-tuning with a live dashboard.\n\n"
        f"commands:\n{rows}\n\n"
        "Run `cliplab <command> --help` for a command's options."
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
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
