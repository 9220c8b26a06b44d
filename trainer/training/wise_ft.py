"""WiSE-FT (Wortsman et al., 2022): the fine-tuned weights interpolated with the pretrained ones."""

from __future__ import annotations

import copy

import torch
from torch import nn

from contract.config import RunConfig
from trainer.events import EventWriter


def wise_ft_reference(cfg: RunConfig, model: nn.Module, events: EventWriter) -> dict[str, torch.Tensor] | None:
    """A CPU copy of the pretrained weights, kept only when a WiSE-FT checkpoint will be written."""
    if cfg.checkpoint.wise_ft_alpha is None:
        return None
    if not cfg.model.pretrained:
        events.log("checkpoint.wise_ft_alpha is set but model.pretrained is not: WiSE-FT needs initial weights "
                   "to interpolate with, so no wise_ft checkpoint will be written", level="warning")
        return None
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def interpolated_copy(model: nn.Module, initial: dict[str, torch.Tensor], alpha: float) -> nn.Module:
    """A CPU copy of `model` holding alpha * its weights + (1 - alpha) * `initial` (non-float entries as tuned)."""
    tuned = model.state_dict()
    mixed = {k: (alpha * v.detach().cpu().float() + (1 - alpha) * initial[k].float()).to(v.dtype)
             if v.is_floating_point() else v.detach().cpu() for k, v in tuned.items()}
    copied = copy.deepcopy(model).cpu()
    copied.load_state_dict(mixed)
    return copied
