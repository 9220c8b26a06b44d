"""Bundled example configs, config validation, model presets."""

from __future__ import annotations

from typing import Any

import yaml
from fastapi import APIRouter, HTTPException

from backend.api_errors import declare
from backend.deps import ServicesDep
from backend.errors import Invalid
from backend.models import ConfigValidate
from backend.routing import ApiRoute
from backend.services.runs import check_config
from contract.config import bundled_configs

router = APIRouter(prefix="/api", tags=["configs"], route_class=ApiRoute)
DEFAULT_CONFIG = "cpu-demo"


@router.get("/configs")
def list_configs() -> list[dict[str, Any]]:
    """The example configs shipped with cliplab; `default` marks the one the new-run form starts from."""
    out = []
    for name, path in sorted(bundled_configs().items(), key=lambda item: item[0] != DEFAULT_CONFIG):
        text = path.read_text(encoding="utf-8")
        try:
            config = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            config = None
        out.append({"name": name, "yaml": text, "config": config, "default": name == DEFAULT_CONFIG})
    return out


@router.post("/configs/validate")
def validate_config(body: ConfigValidate, svc: ServicesDep) -> dict[str, Any]:
    try:
        cfg = check_config(svc, body)
    except Invalid as exc:
        return {"valid": False, "errors": exc.errors, "resolved": None}
    return {"valid": True, "errors": [], "resolved": cfg.to_dict()}


@router.get("/presets", responses=declare(503))
def presets() -> list[dict[str, Any]]:
    """Model architectures by name, from the torch-free `contract.presets`."""
    try:
        from contract import presets as p
    except ImportError as exc:
        raise HTTPException(503, f"model presets are unavailable: {exc}") from None
    describe = getattr(p, "preset_descriptions", None)
    if describe is not None:
        return [{"name": name, "description": text} for name, text in describe().items()]
    out = []
    for name in p.available_models():
        args = p.get_preset(name)
        tower = "ResNet" if getattr(args, "is_resnet", False) else f"ViT/{args.vision_patch_size}"
        out.append({"name": name, "description": f"{tower}, {args.image_resolution}px, embed {args.embed_dim}, "
                                                 f"{p.count_parameters(args) / 1e6:.1f}M parameters"})
    return out
