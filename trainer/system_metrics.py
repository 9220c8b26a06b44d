"""System metrics: CPU, memory and GPU use of a training run, sampled by a background thread.

Torch-free and never on the training step's path: `SystemMonitor` wakes every `train.system_every_s`
seconds, reads psutil (CPU, memory) and NVML (`pynvml`, from nvidia-ml-py: utilisation, memory, power) and
hands the values to a callback, which emits a `system` event. Only rank 0 runs it. It reports:

- `sys/cpu_percent`: the trainer process and its child processes (data-loader workers); 100 = one core.
- `sys/rss_gib`: resident memory of the trainer process; `sys/workers_rss_gib` of its children
  (pages they share with the trainer are counted in both).
- `sys/host_cpu_percent`, `sys/host_memory_used_gib`, `sys/host_memory_available_gib`: the machine.
- `sys/gpu<N>/util` (%), `sys/gpu<N>/memory_used_gib`, `sys/gpu<N>/power_w` for every GPU the run can
  see on rank 0's node: N is the CUDA index inside the run (the order of CUDA_VISIBLE_DEVICES), so under
  torchrun on one node gpu<N> is local rank N's GPU. Other nodes' GPUs are not reported.

A missing library, no NVML driver or no GPU just leaves those fields out; a failing read is skipped.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

SYSTEM_PREFIX = "sys/"
GIB = float(2**30)


class HostProbe:
    """psutil readings of this process, its children and the machine."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call only starts the measurement
        psutil.cpu_percent(None)
        self._children: dict[int, Any] = {}

    def _current_children(self) -> list[Any]:
        """Children (kept across reads: a Process object measures CPU since its previous call)."""
        found = {}
        for child in self.process.children(recursive=True):
            known = self._children.get(child.pid)
            if known is None:
                child.cpu_percent(None)
                known = child
            found[child.pid] = known
        self._children = found
        return list(found.values())

    def read(self) -> dict[str, float]:
        ps = self.psutil
        values = {"cpu_percent": self.process.cpu_percent(None), "rss_gib": self.process.memory_info().rss / GIB}
        workers_rss = 0.0
        for child in self._current_children():
            try:
                values["cpu_percent"] += child.cpu_percent(None)
                workers_rss += child.memory_info().rss
            except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess):
                continue  # a worker that ended between the listing and the read
        if self._children:
            values["workers_rss_gib"] = workers_rss / GIB
        memory = ps.virtual_memory()
        values.update(host_cpu_percent=ps.cpu_percent(None), host_memory_used_gib=(memory.total - memory.available) / GIB,
                      host_memory_available_gib=memory.available / GIB)
        return values


def visible_gpu_ids(cuda_visible_devices: str | None, count: int) -> list[int | str]:
    """NVML handles to look up, in the run's CUDA order: indices or UUIDs from CUDA_VISIBLE_DEVICES, or
    every device when it is unset. CUDA stops at the first entry it cannot parse, and so do we."""
    if cuda_visible_devices is None:
        return list(range(count))
    ids: list[int | str] = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if entry.isdigit():
            ids.append(int(entry))
        elif entry.startswith(("GPU-", "MIG-")):
            ids.append(entry)
        else:
            break
    return ids


class GpuProbe:
    """NVML readings of the GPUs this run can see; `handles` is empty without NVML or GPUs."""

    def __init__(self) -> None:
        import pynvml

        self.nvml = pynvml
        pynvml.nvmlInit()
        self.handles = []
        for ident in visible_gpu_ids(os.environ.get("CUDA_VISIBLE_DEVICES"), pynvml.nvmlDeviceGetCount()):
            try:
                self.handles.append(pynvml.nvmlDeviceGetHandleByUUID(ident) if isinstance(ident, str)
                                    else pynvml.nvmlDeviceGetHandleByIndex(ident))
            except pynvml.NVMLError:
                continue

    def read(self) -> dict[str, float]:
        nvml = self.nvml
        values: dict[str, float] = {}
        for i, handle in enumerate(self.handles):
            readers = {  # each on its own: a GPU without power readings still reports the others
                "util": lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                "memory_used_gib": lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used / GIB,
                "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            }
            for name, read in readers.items():
                try:
                    values[f"gpu{i}/{name}"] = float(read())
                except nvml.NVMLError:
                    continue
        return values

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass


def _probe(cls: type) -> Any:
    """The probe, or None when its library, driver or devices are missing."""
    try:
        return cls()
    except Exception:  # ImportError, NVMLError (no driver), psutil errors: that part is simply not reported
        return None


class SystemMonitor:
    """Calls `emit(values)` every `interval_s` seconds from a daemon thread until `stop()`.

    `values` maps `sys/...` names to floats. Nothing it does can fail or block the caller: probes are built
    on the thread, every read is guarded, and `stop()` waits at most `timeout_s`.
    """

    def __init__(self, emit: Callable[[dict[str, float]], Any], interval_s: float,
                 warn: Callable[[str], Any] | None = None):
        self.emit = emit
        self.interval_s = interval_s
        self.warn = warn or (lambda message: None)
        self.samples = 0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cliplab-system-metrics", daemon=True)

    def start(self) -> "SystemMonitor":
        if self.interval_s > 0:
            self._thread.start()
        return self

    def _loop(self) -> None:
        probes = [p for p in (_probe(HostProbe), _probe(GpuProbe)) if p is not None]
        warned = False
        try:
            while probes and not self._halt.wait(self.interval_s):
                try:
                    values: dict[str, float] = {}
                    for probe in probes:
                        values.update(probe.read())
                    self.emit({SYSTEM_PREFIX + k: v for k, v in values.items()})
                    self.samples += 1
                except Exception as exc:  # a failed read must never reach the training loop
                    if not warned:
                        self.warn(f"system metrics: a reading failed ({type(exc).__name__}: {exc}); "
                                  "skipping it and trying again at the next interval")
                        warned = True
        finally:
            for probe in probes:
                if isinstance(probe, GpuProbe):
                    probe.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
