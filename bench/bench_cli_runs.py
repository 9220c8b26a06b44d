"""`cliplab runs` over a folder of many runs: seconds to list them, with libyaml's parser (what the command uses
where PyYAML has it) and with PyYAML's pure-Python one (the baseline), measured in one run.

    python bench/bench_cli_runs.py --runs 2000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract.config import RunConfig  # noqa: E402
from trainer import run_summary  # noqa: E402
from trainer.commands.runs import folder_rows  # noqa: E402


def make_runs(root: Path, n: int) -> None:
    """n finished runs, each with the resolved config.yaml and the events a short run writes."""
    first = root / "run-0"
    first.mkdir(parents=True)
    events = [{"seq": 0, "time": 1000.0, "kind": "status", "status": "starting", "total_steps": 8},
              *({"seq": i, "time": 1000.0 + i, "kind": "metric", "step": i, "values": {"loss": 1.0 / i}}
                for i in range(1, 50)),
              {"seq": 50, "time": 1060.0, "kind": "eval", "step": 49, "values": {"val/loss": 2.0}},
              {"seq": 51, "time": 1061.0, "kind": "status", "status": "finished", "step": 49, "total_steps": 49}]
    (first / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (first / "config.yaml").write_text(RunConfig().to_yaml())
    for i in range(1, n):
        shutil.copytree(first, root / f"run-{i}")


def seconds_to_list(root: Path, loader: type, reps: int) -> float:
    run_summary._YAML_LOADER = loader
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        rows = folder_rows(root, time.time())
        times.append(time.perf_counter() - start)
        assert all(r["status"] == "finished" for r in rows)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_runs(Path(tmp), args.runs)
        fast = seconds_to_list(Path(tmp), getattr(yaml, "CSafeLoader", yaml.SafeLoader), args.reps)
        plain = seconds_to_list(Path(tmp), yaml.SafeLoader, args.reps)
    print(f"cliplab runs over {args.runs} runs (best of {args.reps}): libyaml {fast:.2f} s, "
          f"pure-Python YAML {plain:.2f} s ({plain / fast:.1f}x)")


if __name__ == "__main__":
    main()
