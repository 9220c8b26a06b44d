"""Building a run's pieces from its config: the model (preset or pretrained), frozen towers, the loss, and
distribution + compilation applied in one place."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from contract.config import ConfigError, RunConfig
from contract.table import DataError
from trainer.distributed import DistInfo
from trainer.model import CLIP


@contextlib.contextmanager
def naming_field(field: str) -> Iterator[None]:
    """Data errors raised inside name the config field whose value caused them."""
    try:
        yield
    except DataError as exc:
        raise DataError(f"{field}: {exc}") from None


def build_model(cfg: RunConfig, resume_from: Path | None = None) -> nn.Module:
    """The CLIP to train, on the CPU: model.preset randomly initialised, or model.pretrained's weights.

    model.pretrained is a checkpoint path in any format trainer.checkpoint reads, or a preset name whose
    weights are on this machine (trainer.checkpoint.find_local_weights). A resume (`resume_from`, a step
    directory) whose pretrained weights are gone (a cleaned scratch disk) builds from the step's own weights,
    which replace them anyway; only WiSE-FT still needs them. SigLIP needs a logit_bias; one is added
    (SigLIP's init, -10) when the architecture lacks it.
    """
    from contract.presets import get_preset, resolve_preset_name
    from trainer.checkpoint import CheckpointError, find_local_weights, load_model
    from trainer.model import build_model as build_clip

    if cfg.model.pretrained:
        path = Path(cfg.model.pretrained).expanduser()
        if not path.exists():
            preset = resolve_preset_name(cfg.model.pretrained)
            local = find_local_weights(preset) if preset else None
            if local is None and resume_from is not None and cfg.checkpoint.wise_ft_alpha is None:
                local = resume_from
            if local is None:
                wise_ft = " (WiSE-FT interpolates with them, so a resume needs them too)" if resume_from else ""
                raise ConfigError(f"model.pretrained: {cfg.model.pretrained!r} is not an existing checkpoint "
                                  "file or directory" + (f", and no local weights for preset {preset} were found"
                                                         if preset else "") + f"; set it to the weights' path{wise_ft}")
            path = local
        try:
            model = load_model(path, device="cpu")
        except CheckpointError as exc:  # name the field, as every other config error does
            raise ConfigError(f"model.pretrained: {exc}") from None
    else:
        try:
            args = get_preset(cfg.model.preset)
        except KeyError as exc:
            raise ConfigError(f"model.preset: {exc.args[0]}") from None
        if cfg.loss.kind == "siglip" and args.init_logit_bias is None:
            args = dataclasses.replace(args, init_logit_bias=-10.0)
        model = build_clip(args)
    if cfg.loss.kind == "siglip" and getattr(model, "logit_bias", None) is None:
        model.logit_bias = nn.Parameter(torch.tensor(-10.0))
    return model


def freeze_towers(model: CLIP, freeze_image: bool, freeze_text: bool) -> None:
    """Lock a tower (LiT): its parameters get no gradients, so build_optimizer leaves them out."""
    for tower in _frozen(freeze_image, freeze_text):
        for _, p in model.tower_parameters(tower):
            p.requires_grad_(False)


def set_train_mode(model: CLIP, cfg: RunConfig) -> None:
    """Train mode, except frozen towers stay in eval mode so BatchNorm statistics are locked too."""
    model.train()
    for tower in _frozen(cfg.model.freeze_image, cfg.model.freeze_text):
        for module in model.tower_modules(tower):
            module.eval()


def _frozen(freeze_image: bool, freeze_text: bool) -> list[str]:
    return [tower for tower, frozen in (("image", freeze_image), ("text", freeze_text)) if frozen]


def build_loss(cfg: RunConfig, dist: DistInfo) -> nn.Module:
    """The contrastive loss loss.kind names, set up for this rank's place among the ranks."""
    from trainer.loss import build_loss as build

    pairs = cfg.train.batch_size * cfg.train.accum_steps * dist.world_size
    if pairs < 2:  # one pair has no negatives: the loss is constant and nothing is learned
        raise ConfigError(f"train.batch_size: a contrastive loss needs at least 2 pairs per step, got a global "
                          f"batch of {pairs} ({cfg.train.batch_size} x {cfg.train.accum_steps} accumulation steps "
                          f"x {dist.world_size} ranks)")
    return build(cfg.loss.kind, local_loss=cfg.loss.local_loss, gather_with_grad=cfg.loss.gather_with_grad,
                 multi_positive=cfg.loss.multi_positive, rank=dist.rank, world_size=dist.world_size)


def parallelize(model: nn.Module, cfg: RunConfig, dist: DistInfo, device: torch.device) -> tuple[nn.Module, Any]:
    """The one place distribution and compilation are applied: DDP when world_size > 1, then torch.compile.

    Returns (module the training step calls, the DDP wrapper or None for no_sync)."""
    ddp = None
    wrapped = model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        wrapped = ddp
    if cfg.model.compile:
        wrapped = torch.compile(wrapped)
    return wrapped, ddp
