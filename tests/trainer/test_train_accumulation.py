"""Gradient accumulation must be exact for a contrastive loss: k micro-batches of b == one batch of k*b."""

import copy

import pytest
import torch

from contract.config import OptimConfig
from contract.presets import ModelArgs
from trainer.loss import ClipLoss
from trainer.model import build_model
from trainer.training.optim import build_optimizer, clamp_logit_scale
from trainer.training.precision import Precision
from trainer.training.step import forward_backward

from tests.train_support import one_torch_thread

EOT = 49407
SMALL = ModelArgs(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                  context_length=16, vocab_size=EOT + 1, transformer_width=64, transformer_heads=2,
                  transformer_layers=2)
FP32_CPU = Precision("fp32", torch.device("cpu"))


def _batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, SMALL.context_length, dtype=torch.long)
    lengths = torch.randint(3, SMALL.context_length, (n,), generator=g)
    for i, length in enumerate(lengths.tolist()):
        tokens[i, 0] = EOT - 1
        tokens[i, 1:length - 1] = torch.randint(1, 40000, (length - 2,), generator=g)
        tokens[i, length - 1] = EOT
    caption_ids = torch.arange(n)
    caption_ids[3] = caption_ids[5]  # one duplicated caption: multi-positive targets span micro-batches
    tokens[3] = tokens[5]
    return {"image": torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64), "text": tokens,
            "caption_id": caption_ids}


def _split(batch: dict[str, torch.Tensor], k: int) -> list[dict[str, torch.Tensor]]:
    n = batch["image"].shape[0] // k
    return [{key: v[i * n:(i + 1) * n] for key, v in batch.items()} for i in range(k)]


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference relative to the reference's largest entry (the model's LayerNorm runs in fp32,
    so even a float64 model agrees only to ~1e-7, not 1e-15)."""
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(SMALL).double()
    with torch.no_grad():
        m.logit_scale.fill_(2.0)  # away from the init so its gradient is not special
    return m


@pytest.mark.parametrize("k", [2, 4])
def test_k_micro_batches_give_the_gradient_of_one_batch_of_k_times_b(model, k):
    batch = _batch(8, seed=1)
    full, accum = copy.deepcopy(model), copy.deepcopy(model)
    out_full = forward_backward(full, ClipLoss(), [batch], FP32_CPU)
    out_acc = forward_backward(accum, ClipLoss(), _split(batch, k), FP32_CPU)
    g_full, g_acc = _grads(full), _grads(accum)
    assert g_full.keys() == g_acc.keys() and "logit_scale" in g_full
    errors = {name: _rel_err(g_acc[name], g_full[name]) for name in g_full}
    assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    assert _rel_err(out_acc.loss, out_full.loss) < 1e-7
    assert _rel_err(out_acc.image_features, out_full.image_features) < 1e-6


def test_summing_micro_batch_losses_would_not_match_so_the_comparison_can_fail(model):
    # The naive accumulation (each micro-batch its own contrastive problem) gives different gradients:
    # this is what the cached-features method exists to avoid, and proves the test above discriminates.
    batch = _batch(8, seed=1)
    full, naive = copy.deepcopy(model), copy.deepcopy(model)
    forward_backward(full, ClipLoss(), [batch], FP32_CPU)
    for mb in _split(batch, 2):
        forward_backward(naive, ClipLoss(), [mb], FP32_CPU)
    errors = {n: _rel_err(naive.get_parameter(n).grad, g) for n, g in _grads(full).items()}
    assert min(errors.values()) > 1e-2 and errors["logit_scale"] > 1e-2


def test_one_accumulated_optimizer_step_updates_weights_like_one_big_batch(model):
    batch = _batch(8, seed=2)
    results = []
    for micro in ([batch], _split(batch, 4)):
        m = copy.deepcopy(model)
        opt = build_optimizer(m, OptimConfig(lr=1e-3, weight_decay=0.1), torch.device("cpu"))
        opt.zero_grad()
        forward_backward(m, ClipLoss(), micro, FP32_CPU)
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        clamp_logit_scale(m)
        results.append(m.state_dict())
    before = model.state_dict()
    for name, value in results[0].items():
        if value.is_floating_point() and not torch.equal(value, before[name]):
            # The update, not the weights, is what must agree (weights share their large initial part).
            assert _rel_err(results[1][name] - before[name], value - before[name]) < 1e-4, name
