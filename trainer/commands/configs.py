"""`cliplab configs [NAME]`: the bundled configs `cliplab train NAME` runs from any folder; with a name, its YAML
(to copy and edit)."""

from __future__ import annotations

import argparse
import re
import sys

from contract.config import bundled_configs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="print this bundled config's YAML instead of the list")


def describe(text: str, width: int = 100) -> str:
    """The first sentence of a config's leading comment (the lines before the first indented example)."""
    words = []
    for line in text.splitlines():
        if not line.startswith("#") or line.startswith("#  "):
            break
        words.append(line.lstrip("# ").strip())
    first = re.split(r"(?<=[.;])\s", " ".join(words), maxsplit=1)[0].rstrip(";")
    return first if len(first) <= width else first[: width - 1].rstrip() + "…"


def run(args: argparse.Namespace) -> int:
    configs = bundled_configs()
    if args.name:
        path = configs.get(args.name.removesuffix(".yaml"))
        if path is None:
            print(f"cliplab configs: no bundled config {args.name!r}; bundled: {', '.join(configs)}", file=sys.stderr)
            return 2
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return 0
    width = max(len(name) for name in configs)
    for name, path in configs.items():
        print(f"{name:<{width}}  {describe(path.read_text(encoding='utf-8'))}")
    print(f"\nRun one with `cliplab train NAME [--set key=value ...]`; `cliplab configs NAME` prints it. "
          f"Files: {next(iter(configs.values())).parent}")
    return 0
