"""What the machine has: GPUs (nvidia-smi, when present), CPU count and load, memory, disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

GPU_FIELDS = ("index", "name", "memory.total", "memory.used", "utilization.gpu")
_cache: dict[str, Any] = {"at": 0.0, "gpus": []}


def query_gpus(max_age_s: float = 2.0) -> list[dict[str, Any]]:
    """GPUs as nvidia-smi reports them (memory in MiB), [] without nvidia-smi or a driver."""
    if time.monotonic() - _cache["at"] < max_age_s:
        return [dict(g) for g in _cache["gpus"]]
    exe = shutil.which("nvidia-smi")
    gpus: list[dict[str, Any]] = []
    if exe:
        try:
            out = subprocess.run(
                [exe, f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout
            gpus = parse_gpu_csv(out)
        except (OSError, subprocess.SubprocessError):
            gpus = []
    _cache.update(at=time.monotonic(), gpus=gpus)
    return [dict(g) for g in gpus]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]" on some boards


def parse_gpu_csv(out: str) -> list[dict[str, Any]]:
    gpus = []
    for line in out.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(GPU_FIELDS) or not cells[0].isdigit():
            continue
        gpus.append({"index": int(cells[0]), "name": cells[1], "memory_total": _number(cells[2]),
                     "memory_used": _number(cells[3]), "utilization": _number(cells[4])})
    return gpus


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return {"total": out.get("MemTotal"), "available": out.get("MemAvailable")}


def system_info(data_dir: Path, holders: dict[int, str]) -> dict[str, Any]:
    """GPUs (with the run holding each, from the launcher's assignments), CPU, memory, disk of data_dir."""
    gpus = query_gpus()
    for gpu in gpus:
        gpu["run_id"] = holders.get(gpu["index"])
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    disk_path = data_dir if data_dir.exists() else Path(data_dir.anchor or "/")
    disk = shutil.disk_usage(disk_path)
    return {
        "gpus": gpus,
        "cpu": {"count": os.cpu_count(), "load": load},
        "memory": _meminfo(),
        "disk": {"path": str(data_dir), "total": disk.total, "used": disk.used, "free": disk.free},
    }
