"""Prepared datasets: list, preview pairs, preview images (only files the dataset's CSV lists)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from backend.deps import ServicesDep
from backend.routing import ApiRoute
from backend.services import datasets

router = APIRouter(prefix="/api/datasets", tags=["datasets"], route_class=ApiRoute)


@router.get("")
def list_datasets(svc: ServicesDep) -> list[dict[str, Any]]:
    return datasets.list_datasets(svc.settings.datasets_dir)


@router.get("/{name}/preview")
def preview(svc: ServicesDep, name: str, n: Annotated[int, Query(ge=1, le=64)] = 8,
            split: str = "val") -> list[dict[str, Any]]:
    return datasets.preview(svc.settings.datasets_dir, name, n, split)


@router.get("/{name}/images/{split}/{row}")
def preview_image(svc: ServicesDep, name: str, split: str, row: int) -> FileResponse:
    path = datasets.preview_image(svc.settings.datasets_dir, name, split, row,
                                  readable=svc.settings.readable_roots)
    return FileResponse(path, headers={"Cache-Control": "max-age=3600"})
