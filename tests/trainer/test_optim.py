import copy
import math

import pytest
import torch

from contract.config import ConfigError, OptimConfig
from contract.presets import get_preset
from trainer.model import build_model
from trainer.training.optim import (
    MAX_LOGIT_SCALE,
    adamw_implementation,
    build_optimizer,
    build_scheduler,
    clamp_logit_scale,
    clip_gradients,
    load_optimizer_state,
    lr_factor_fn,
    param_groups,
)


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return build_model(get_preset("tiny-vit"))


@pytest.fixture(scope="module")
def tiny_rn():
    torch.manual_seed(0)
    return build_model(get_preset("tiny-rn"))


def _groups_by_decay(model, wd=0.2):
    groups = param_groups(model, wd)
    decayed = {n for g in groups if g["weight_decay"] == wd for n in g["names"]}
    plain = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    return decayed, plain


def test_only_matrices_decay_not_biases_norms_embeddings_or_temperature(tiny_vit):
    decayed, plain = _groups_by_decay(tiny_vit)
    names = {n for n, _ in tiny_vit.named_parameters()}
    assert decayed | plain == names and not decayed & plain
    for n in ("token_embedding.weight", "positional_embedding", "visual.class_embedding",
              "visual.positional_embedding", "logit_scale", "ln_final.weight", "ln_final.bias",
              "visual.ln_pre.weight", "transformer.resblocks.0.attn.in_proj_bias"):
        assert n in plain, n
    for n in ("transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.mlp.c_fc.weight",
              "visual.conv1.weight", "visual.proj", "text_projection"):
        assert n in decayed, n
    # Everything left undecayed is < 2-D or one of the named embeddings.
    params = dict(tiny_vit.named_parameters())
    for n in plain:
        assert params[n].ndim < 2 or "embedding" in n, n


def test_resnet_batchnorm_and_attnpool_embedding_do_not_decay(tiny_rn):
    decayed, plain = _groups_by_decay(tiny_rn)
    assert "visual.bn1.weight" in plain and "visual.attnpool.positional_embedding" in plain
    assert "visual.attnpool.q_proj.weight" in decayed and "visual.conv1.weight" in decayed


def test_frozen_parameters_are_left_out_of_the_optimizer(tiny_vit):
    model = build_model(get_preset("tiny-vit"))
    for p in model.visual.parameters():
        p.requires_grad_(False)
    opt = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for p in model.visual.parameters())
    assert id(model.logit_scale) in in_opt and id(model.token_embedding.weight) in in_opt


def test_warmup_rises_linearly_to_the_peak_then_cosine_reaches_min_lr_at_the_last_step():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="cosine")
    total = 110
    f = lr_factor_fn(cfg, total)
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)  # peak
    mid = 10 + (total - 1 - 10) / 2
    assert f(int(mid)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 99)))
    assert f(total - 1) == pytest.approx(0.1)  # min_lr / lr
    values = [f(i) for i in range(10, total)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_scheduler_drives_the_optimizer_lr_step_by_step():
    model = torch.nn.Linear(2, 2)
    cfg = OptimConfig(lr=2e-3, warmup_steps=4, schedule="constant")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = build_scheduler(opt, cfg, total_steps=20)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3])


def test_no_warmup_starts_at_the_peak_and_min_lr_above_lr_is_refused():
    f = lr_factor_fn(OptimConfig(lr=1.0, warmup_steps=0), 5)
    assert f(0) == 1.0 and f(4) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="optim.min_lr"):
        lr_factor_fn(OptimConfig(lr=1e-4, min_lr=1e-3), 10)


def test_logit_scale_is_clamped_to_log_100():
    model = build_model(get_preset("tiny-vit"))
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    assert model.logit_scale.exp().item() == pytest.approx(100.0)
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(2.0)


def test_grad_clipping_reports_the_preclip_norm_and_scales_to_max_norm():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(4))
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    norm = clip_gradients([a, b], max_norm=1.0)
    assert norm.item() == pytest.approx(5.0)
    total = torch.cat([a.grad, b.grad]).norm().item()
    assert total == pytest.approx(1.0, rel=1e-5)
    a.grad = torch.tensor([0.3, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 0.4, 0.0, 0.0])
    assert clip_gradients([a, b], max_norm=None).item() == pytest.approx(0.5)
    assert a.grad[0].item() == pytest.approx(0.3)  # measured, not clipped


def _train_copies(implementations, steps=8, scaler_for=None, inf_at=None):
    """Run the same AdamW steps (decay and no-decay groups) on copies of tiny-vit, one per implementation.

    Every copy gets the same seeded gradients at each step: real gradients would make the copies drift apart
    chaotically (Adam turns the ~1e-9 noise on a parameter without signal, e.g. the key bias, into +-lr).
    `scaler_for`: a GradScaler factory (the fp16 path: scaled gradients, unscale_, scaler.step, update);
    `inf_at`: a step whose gradients hold an inf, which the scaler must skip alike in every implementation.
    """
    torch.manual_seed(0)
    base = build_model(get_preset("tiny-vit"))
    cfg = OptimConfig(lr=1e-2, weight_decay=0.2)
    results = []
    for impl in implementations:
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                                eps=cfg.eps, **impl)
        scaler = scaler_for() if scaler_for else None
        g = torch.Generator().manual_seed(1)
        for step in range(steps):
            scale = scaler.scale(torch.ones(())).item() if scaler else 1.0  # as scaler.scale(loss) scales grads
            for p in model.parameters():
                p.grad = (torch.randn(p.shape, generator=g) * 1e-3 + 1e-4) * scale
            if step == inf_at:
                model.visual.proj.grad[0, 0] = float("inf")
            if scaler:
                scaler.unscale_(opt)
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return base, results


def _max_diff(a, b):
    return max((a[n] - b[n]).abs().max().item() for n in a)


def test_cpu_and_cuda_get_the_fused_adamw_and_other_devices_foreach():
    model = build_model(get_preset("tiny-vit"))
    opt = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    assert opt.defaults["fused"] is True and not opt.defaults["foreach"]
    params = list(model.parameters())
    assert adamw_implementation(torch.device("cuda", 0), [torch.zeros(1, device="meta")]) == {"foreach": True}
    assert adamw_implementation(torch.device("meta"), params) == {"foreach": True}
    assert adamw_implementation(torch.device("cpu"), [torch.zeros(1, dtype=torch.int64)]) == {"foreach": True}


@pytest.mark.slow  # many optimizer steps, three ways
def test_fused_adamw_ends_where_the_per_tensor_loop_and_foreach_end():
    base, (loop, foreach, fused) = _train_copies([{"foreach": False}, {"foreach": True}, {"fused": True}])
    moved = _max_diff(loop, {n: p.detach() for n, p in base.named_parameters()})
    assert moved > 1e-2  # the steps really changed the weights (decayed and undecayed groups alike)
    assert _max_diff(loop, foreach) < 1e-5 and _max_diff(loop, fused) < 1e-5


@pytest.mark.slow  # many optimizer steps, three ways
def test_fused_adamw_under_a_grad_scaler_matches_the_loop_and_skips_the_inf_step_alike():
    def scaler():
        return torch.amp.GradScaler("cpu", init_scale=2.0**10)

    _, (loop, fused) = _train_copies([{"foreach": False}, {"fused": True}], scaler_for=scaler, inf_at=2)
    _, (unskipped,) = _train_copies([{"foreach": False}], scaler_for=scaler)
    assert _max_diff(loop, fused) < 1e-5
    assert _max_diff(loop, unskipped) > 1e-3  # the inf step was skipped, so the runs differ


@pytest.mark.slow  # two training runs
def test_resuming_a_checkpoint_saved_before_fused_adamw_trains_on_with_the_fused_kernel():
    cpu, cfg = torch.device("cpu"), OptimConfig(lr=1e-2, weight_decay=0.2)
    torch.manual_seed(0)
    saved_model = build_model(get_preset("tiny-vit"))
    saved_opt = build_optimizer(saved_model, cfg, cpu)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p in saved_model.parameters():
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
        saved_opt.step()
    state = copy.deepcopy(saved_opt.state_dict())
    old = copy.deepcopy(state)  # as the checkpoint of a run started before fused AdamW holds it
    for group in old["param_groups"]:
        group["fused"], group["foreach"] = False, True
    for s in old["state"].values():
        s["step"] = s["step"].to(torch.float64)  # a step the foreach path keeps but fused would not create

    def resumed(optimizer_state):
        model = copy.deepcopy(saved_model)
        opt = build_optimizer(model, cfg, cpu)
        load_optimizer_state(opt, optimizer_state, cpu)
        return model, opt

    (old_model, old_opt), (plain_model, plain_opt) = resumed(old), resumed(state)
    assert all(g["fused"] is True and not g["foreach"] for g in old_opt.param_groups)
    for p in old_model.parameters():
        step = old_opt.state[p]["step"]
        assert step.dtype == torch.float32 and step.device == p.device and step.item() == 3
    for _ in range(2):
        grads = [torch.randn(p.shape, generator=g) * 1e-3 for p in old_model.parameters()]
        for model, opt in ((old_model, old_opt), (plain_model, plain_opt)):
            for p, grad in zip(model.parameters(), grads):
                p.grad = grad.clone()
            opt.step()
    for (name, a), b in zip(old_model.named_parameters(), plain_model.parameters()):
        assert torch.equal(a, b), name
