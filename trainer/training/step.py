"""One optimizer step's forward and backward, with gradient accumulation.

Gradient accumulation uses open_clip's cached-features method, because a contrastive loss over k
micro-batches is NOT the sum of k micro-batch losses: every image is scored against every caption of the
whole accumulated batch. So (1) all k micro-batches are encoded under no_grad and their features cached;
(2) each micro-batch is encoded again with grad, its cached features are swapped for the live ones, the loss
over the whole batch is computed and back-propagated. Features of the other micro-batches are constants in
pass j, so the k backward passes sum to exactly the gradient of the full-batch loss, at the cost of one
extra forward. The temperature (logit_scale, and SigLIP's logit_bias) enters the loss directly, so it gets
its gradient from one pass only (the last, which DDP synchronises); the other passes see it detached.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer.training.precision import Precision


@dataclass
class StepOutput:
    """Detached results of one optimizer step's forward/backward, all on the device."""

    loss: torch.Tensor
    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor
    caption_ids: torch.Tensor | None
    image_ids: torch.Tensor | None


def _loss(loss_fn: nn.Module, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
          bias: torch.Tensor | None, ids: dict[str, torch.Tensor | None]) -> torch.Tensor:
    # The losses leave autocast and upcast bf16/fp16 themselves: logits up to 100 need fp32's precision.
    if bias is None:
        return loss_fn(img, txt, scale, **ids)
    return loss_fn(img, txt, scale, bias, **ids)


def _batch_ids(micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor | None]:
    """{"caption_ids", "image_ids"} of the whole accumulated batch (None where a micro-batch lacks them)."""
    ids = {}
    for kind in ("caption", "image"):
        parts = [mb.get(f"{kind}_id") for mb in micro_batches]
        ids[f"{kind}_ids"] = None if any(p is None for p in parts) else torch.cat(parts)
    return ids


def forward_backward(model: nn.Module, loss_fn: nn.Module, micro_batches: list[dict[str, torch.Tensor]],
                     precision: Precision, scaler: torch.amp.GradScaler | None = None,
                     ddp: Any = None, logit_bias: nn.Parameter | None = None) -> StepOutput:
    """Accumulate into .grad the gradient of the contrastive loss over the union of `micro_batches`.

    One micro-batch: a plain forward and backward. Several: open_clip's cached-features method (module
    docstring): the result equals one batch of all micro-batches together, up to floating-point rounding.
    `ddp` (the DDP wrapper) skips the gradient all-reduce for all but the last backward.
    """
    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    ids = _batch_ids(micro_batches)  # pairs of different micro-batches can be positives of each other
    if len(micro_batches) == 1:
        mb = micro_batches[0]
        with precision.autocast():
            img, txt, scale = model(mb["image"], mb["text"])
        loss = _loss(loss_fn, img, txt, scale, logit_bias, ids)
        backward(loss)
        return StepOutput(loss.detach(), img.detach(), txt.detach(), scale.detach(), **ids)

    with torch.no_grad(), precision.autocast():
        cached = [model(mb["image"], mb["text"])[:2] for mb in micro_batches]
    cached_img = [c[0] for c in cached]
    cached_txt = [c[1] for c in cached]
    last = len(micro_batches) - 1
    for j, mb in enumerate(micro_batches):
        with (ddp.no_sync() if ddp is not None and j < last else nullcontext()):
            with precision.autocast():
                img, txt, scale = model(mb["image"], mb["text"])
            bias = logit_bias
            if j < last:  # the temperature's gradient comes from one pass only
                scale = scale.detach()
                bias = bias.detach() if bias is not None else None
            all_img = torch.cat(cached_img[:j] + [img] + cached_img[j + 1:])
            all_txt = torch.cat(cached_txt[:j] + [txt] + cached_txt[j + 1:])
            loss = _loss(loss_fn, all_img, all_txt, scale, bias, ids)
            backward(loss)
    return StepOutput(loss.detach(), torch.cat(cached_img), torch.cat(cached_txt), scale.detach(), **ids)
