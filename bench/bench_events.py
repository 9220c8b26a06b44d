"""Cost of the trainer's per-step event emission: EventWriter.emit("metric", ...) into a temporary run dir.
Not a test; it prints microseconds per event (best and median of several rounds).

    python bench/bench_events.py                 # 10k metric events x 7 rounds
    python bench/bench_events.py --events 50000 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from trainer.events import EventWriter  # noqa: E402


def metric_values(step: int) -> dict[str, float]:
    """The scalars a training step reports (trainer/training's metric event), nudged per step."""
    x = 1.0 / (step + 1)
    return {"loss": 2.0 + x, "acc": 0.5 - x / 10, "similarity": 0.3 + x, "grad_norm": 1.5 * x, "lr": 1e-4 * x,
            "logit_scale": 14.28, "samples_per_s": 900.0 + step, "samples_per_s_per_device": 900.0 + step,
            "step_time": 0.05 + x / 100, "tflops_per_device": 1.2, "mfu": 0.04}


def one_round(events: int) -> float:
    """Seconds per emitted event over `events` metric events in a fresh run dir."""
    values = [metric_values(step) for step in range(events)]  # built outside the timed loop
    with tempfile.TemporaryDirectory() as run_dir, EventWriter(run_dir, server="", token="") as writer:
        start = time.perf_counter()
        for step in range(events):
            writer.emit("metric", step=step, values=values[step])
        return (time.perf_counter() - start) / events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    times = [one_round(args.events) for _ in range(args.rounds)]
    print(f"emit(metric) over {args.events} events x {args.rounds} rounds: "
          f"best {min(times) * 1e6:.2f} us, median {statistics.median(times) * 1e6:.2f} us per event")


if __name__ == "__main__":
    main()
