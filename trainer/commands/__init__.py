"""`cliplab <command>`: the dispatcher. Each command is a module of this package, imported only when it runs.

A command module provides `add_arguments(parser)` and `run(args) -> int`. Importing lazily keeps
`cliplab serve` torch-free and `cliplab --help` instant. The library (`trainer.load`, the model, tokenizer
and formats) never imports this package; only `python -m trainer` (trainer/__main__.py) and the `cliplab`
script do.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from contract.version import package_version

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("trainer.commands.train", "train or fine-tune CLIP from a YAML config or a bundled one by name (also under torchrun)"),
    "configs": ("trainer.commands.configs", "list the bundled configs (`cliplab train cpu-demo` runs one from any folder)"),
    "runs": ("trainer.commands.runs", "list the runs of a runs folder, or of a server, with status and key metrics"),
    "eval": ("trainer.commands.eval", "evaluate a checkpoint on a val set (accuracy, retrieval, zero-shot)"),
    "embed": ("trainer.commands.embed", "print embeddings of images and/or texts, and their similarity table"),
    "prepare": ("trainer.commands.prepare", "prepare a dataset (ImageNet-val, class folders, CSV, JSON/COCO captions, shards, --demo)"),
    "serve": ("trainer.commands.serve", "start the dashboard and REST API"),
    "sweep": ("trainer.commands.sweep", "launch a hyperparameter sweep on a dashboard (every combination, or --random N)"),
    "sync": ("trainer.commands.sync", "upload a run directory's events to a dashboard (a run trained while it was away)"),
}


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
        print(f"cliplab {package_version()}")
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
    try:
        code = int(module.run(args) or 0)
        sys.stdout.flush()  # a reader that left shows up here, not as a traceback at interpreter exit
    except BrokenPipeError:  # `cliplab runs | head`: the reader has all it wanted; no traceback for that
        from trainer.training.progress import silence_stdout

        silence_stdout()
        return 128 + 13  # as if killed by SIGPIPE, like other command-line tools
    return code
