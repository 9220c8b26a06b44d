"""Contrastive losses: CLIP's symmetric cross-entropy and SigLIP's pairwise sigmoid loss.

Both take L2-normalised features and the *exponentiated* temperature (`CLIP.forward` returns
`logit_scale.exp()`; the seed multiplied by the raw log-parameter, which trains a different model).

Across ranks, features are gathered so every image is contrasted with the captions of the whole global
batch. The gradient convention is DDP's: each rank backpropagates its own loss, DDP *averages* parameter
gradients over ranks, and the result equals one process on the concatenated batch. For that, the gradient
a rank receives for its own features is world_size times the single-process gradient of those rows
(`all_gather_with_grad` sums over ranks; see tests/trainer/test_loss_distributed.py).

Logits are computed in fp32 even under bf16 autocast: at logit_scale 100 a bf16 cosine (8 mantissa bits)
would be off by up to ~0.2 in the logits, and the B x N matmul is cheap next to the towers.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from trainer.distributed import all_gather_no_grad, all_gather_with_grad


def _no_autocast(device: torch.device):
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 stay as they are (tests run the maths in fp64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def contrastive_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits_per_image [B, M], logits_per_text [M, B]) = scale * cosine similarities (features normalised).

    `logit_scale` is the exponentiated temperature. Computed outside autocast, in at least fp32.
    """
    with _no_autocast(image_features.device):
        image_features, text_features = _upcast(image_features), _upcast(text_features)
        if isinstance(logit_scale, torch.Tensor):
            logit_scale = _upcast(logit_scale)
        logits_per_image = logit_scale * image_features @ text_features.T
    return logits_per_image, logits_per_image.T


def pair_ids(caption_ids: torch.Tensor | None, image_ids: torch.Tensor | None, n: int, device: torch.device,
             first: int = 0) -> torch.Tensor:
    """[n, 2] (caption id, image id) of pairs first..first+n-1 of a batch, on `device`.

    Equal caption ids = identical captions; equal image ids = the same image. A kind left out (None) is each
    pair's own position in the (global) batch, which matches no other pair.
    """
    own = torch.arange(first, first + n, device=device)
    columns = [own if ids is None else ids.to(device, non_blocking=True) for ids in (caption_ids, image_ids)]
    return torch.stack(columns, dim=1)


def positive_mask(row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """[R, C] bool: pair j is a positive of pair i when they share an id of any kind.

    ids are [N] (one kind, e.g. caption ids) or [N, K] (K kinds: `pair_ids`' caption and image ids). The kinds
    are compared one at a time, so memory stays R x C (no R x C x K intermediate at large global batches).
    """
    row_ids, col_ids = (ids[:, None] if ids.dim() == 1 else ids for ids in (row_ids, col_ids))
    same = row_ids[:, 0, None] == col_ids[None, :, 0]
    for kind in range(1, row_ids.shape[1]):
        same |= row_ids[:, kind, None] == col_ids[None, :, kind]
    return same


def positive_targets(row_ids: torch.Tensor, col_ids: torch.Tensor, dtype: torch.dtype = torch.float32
                     ) -> torch.Tensor:
    """Soft targets [R, C]: row i spreads probability 1 evenly over its positive columns (`positive_mask`:
    the same caption or, with [N, 2] `pair_ids`, the same image).

    Every row must have at least one positive (its own pair), which holds when `col_ids` contains `row_ids`.
    """
    same = positive_mask(row_ids, col_ids).to(dtype)
    return same / same.sum(dim=1, keepdim=True)


def gathered_pair_ids(caption_ids: torch.Tensor | None, image_ids: torch.Tensor | None, b: int, rank: int,
                      world_size: int, device: torch.device) -> torch.Tensor:
    """[world_size * b, 2] `pair_ids` of the global batch in rank order (one all-gather for both kinds)."""
    local = pair_ids(caption_ids, image_ids, b, device, first=rank * b)
    return all_gather_no_grad(local) if world_size > 1 else local


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j targets_ij * log softmax(logits)_ij (one-hot targets give plain cross-entropy)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by a constant in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def _insert_local(gathered: torch.Tensor, local: torch.Tensor, rank: int) -> torch.Tensor:
    """`gathered` (no grad) with this rank's rows replaced by `local` (which carries the gradient)."""
    b = local.shape[0]
    return torch.cat([gathered[: rank * b], local, gathered[(rank + 1) * b:]], dim=0)


class ClipLoss(nn.Module):
    """CLIP's symmetric contrastive loss: mean of the image->text and text->image cross-entropies.

    local_loss=False: every rank builds the full [N, N] logits of the global batch (N = world_size * B) and
      computes the same loss as one process would.
    local_loss=True: each rank scores only its own B rows against all N columns (open_clip's local loss:
      [B, N] logits, labels offset by rank * B); the mean over ranks is the full loss, memory is B x N.
    gather_with_grad=True: gradients flow through the gather (exact for both modes).
    gather_with_grad=False: the gather carries no gradient; this rank's own rows are put back with theirs.
      Without local loss this is still exact: every rank computes the same loss, so the gradient of the
      local rows is the single-process one, and we scale it by world_size so that DDP's averaging lands on
      the single-process gradient (open_clip leaves it 1/world_size of that). With local loss it is an
      approximation: the gradient that other ranks' rows would send through the columns is missing.
    multi_positive=True and caption_ids and/or image_ids given: a caption is a positive of every image it
      describes: pairs i and j are positives when their caption ids are equal (identical captions) or their
      image ids are (one image listed with several captions, as COCO-style data gives). The targets are
      those row-normalised positive matrices (soft cross-entropy), so such pairs in the global batch are not
      pushed apart as negatives. With all ids distinct it equals the one-hot loss (to the last bit of float
      rounding).
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = True, multi_positive: bool = True,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ClipLoss: rank={rank} must be in [0, world_size={world_size})")
        self.local_loss, self.gather_with_grad, self.multi_positive = local_loss, gather_with_grad, multi_positive
        self.rank, self.world_size = rank, world_size

    def gather(self, image_features: torch.Tensor, text_features: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ranks' features [N, D] in rank order (this rank's own rows always carry their gradient)."""
        if self.world_size == 1:
            return image_features, text_features
        if self.gather_with_grad:
            return all_gather_with_grad(image_features), all_gather_with_grad(text_features)
        # Exact only for the full loss (see the class docstring); the local loss gets the plain local grad.
        image_local, text_local = image_features, text_features
        if not self.local_loss:
            image_local = _ScaleGrad.apply(image_features, float(self.world_size))
            text_local = _ScaleGrad.apply(text_features, float(self.world_size))
        return (_insert_local(all_gather_no_grad(image_features), image_local, self.rank),
                _insert_local(all_gather_no_grad(text_features), text_local, self.rank))

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                caption_ids: torch.Tensor | None = None, image_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss. Features [B, D] L2-normalised; logit_scale = exp(learned log temperature);
        caption_ids [B] (equal ids = identical captions) and image_ids [B] (equal ids = the same image)
        enable multi-positive targets."""
        if image_features.shape != text_features.shape:
            raise ValueError(f"ClipLoss: image_features {list(image_features.shape)} and text_features "
                             f"{list(text_features.shape)} must have the same shape [B, D]")
        b = image_features.shape[0]
        with _no_autocast(image_features.device):
            image_features, text_features = _upcast(image_features), _upcast(text_features)
            logit_scale = _upcast(logit_scale)
            all_images, all_texts = self.gather(image_features, text_features)
            if self.local_loss and self.world_size > 1:
                logits_per_image = logit_scale * image_features @ all_texts.T
                logits_per_text = logit_scale * text_features @ all_images.T
                first_row = self.rank * b
            else:
                logits_per_image = logit_scale * all_images @ all_texts.T
                logits_per_text = logits_per_image.T
                first_row = 0

            if self.multi_positive and (caption_ids is not None or image_ids is not None):
                all_ids = gathered_pair_ids(caption_ids, image_ids, b, self.rank, self.world_size,
                                            image_features.device)
                row_ids = all_ids[first_row:first_row + logits_per_image.shape[0]]
                targets = positive_targets(row_ids, all_ids, logits_per_image.dtype)
                return (soft_cross_entropy(logits_per_image, targets)
                        + soft_cross_entropy(logits_per_text, targets)) / 2

            labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device) + first_row
            return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


class SigLipLoss(nn.Module):
    """SigLIP's sigmoid loss (Zhai et al. 2023): every image-caption pair is a binary classification.

    loss = -1/|images| * sum_ij log sigmoid(z_ij * (logit_scale * <x_i, y_j> + logit_bias)), with z_ij = +1
    for a positive pair (same index; with multi_positive, also equal caption ids or equal image ids when
    given, as for ClipLoss) and -1 otherwise.
    Across ranks each rank scores its own images against the captions of all ranks (gathered with gradient,
    instead of the paper's ring exchange: same loss, simpler); normalised by the local batch, so the mean
    over ranks is the single-process loss on the global batch.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, multi_positive: bool = True):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"SigLipLoss: rank={rank} must be in [0, world_size={world_size})")
        self.rank, self.world_size, self.multi_positive = rank, world_size, multi_positive

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, caption_ids: torch.Tensor | None = None,
                image_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss. logit_scale is exponentiated; logit_bias is used as it is (init -10 in the paper);
        caption_ids / image_ids [B] as for ClipLoss."""
        b = image_features.shape[0]
        with _no_autocast(image_features.device):
            image_features, text_features = _upcast(image_features), _upcast(text_features)
            all_texts = all_gather_with_grad(text_features) if self.world_size > 1 else text_features
            logits = _upcast(logit_scale) * image_features @ all_texts.T + _upcast(logit_bias)
            if self.multi_positive and (caption_ids is not None or image_ids is not None):
                all_ids = gathered_pair_ids(caption_ids, image_ids, b, self.rank, self.world_size,
                                            image_features.device)
                positive = positive_mask(all_ids[self.rank * b:(self.rank + 1) * b], all_ids)
            else:
                cols = torch.arange(all_texts.shape[0], device=logits.device)
                rows = torch.arange(b, device=logits.device) + self.rank * b
                positive = rows[:, None] == cols[None, :]
            signs = positive.to(logits.dtype) * 2 - 1
            return -F.logsigmoid(signs * logits).sum() / b


def build_loss(kind: str, local_loss: bool = False, gather_with_grad: bool = True, multi_positive: bool = True,
               rank: int = 0, world_size: int = 1) -> nn.Module:
    """The loss named by `loss.kind` in the run config ("clip" or "siglip")."""
    if kind == "clip":
        return ClipLoss(local_loss, gather_with_grad, multi_positive, rank, world_size)
    if kind == "siglip":
        return SigLipLoss(rank, world_size, multi_positive)
    raise ValueError(f"loss.kind {kind!r} is not one of 'clip', 'siglip'")
