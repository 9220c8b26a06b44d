"""Health and machine state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from backend.deps import ServicesDep
from backend.routing import ApiRoute
from backend.services.container import Services
from backend.services.system import system_info
from contract.version import package_version

router = APIRouter(prefix="/api", tags=["system"], route_class=ApiRoute)


@router.get("/health")
def health() -> dict[str, Any]:
    return {"ok": True, "version": package_version()}


@router.get("/system")
def system(svc: ServicesDep) -> dict[str, Any]:
    """GPUs (memory in MiB, the run holding each), CPU count and load, memory and disk (bytes)."""
    info = system_info(svc.settings.data_dir, svc.launcher.holders())
    info["launcher"] = {"gpu_indices": svc.launcher.gpu_indices, "max_cpu_runs": svc.settings.max_cpu_runs,
                        "auth": svc.access_token is not None}
    info["executors"] = executors_info(svc)
    return info


def executors_info(svc: Services) -> dict[str, Any]:
    """The executors new runs may use (the first is the default) and what each reports (SLURM: sinfo)."""
    enabled = svc.settings.executors
    return {"default": enabled[0], "enabled": enabled,
            "details": {name: svc.launcher.executors[name].describe() for name in enabled}}
