"""AdamW with CLIP's parameter groups, the warmup + cosine schedule, and the logit-scale clamp.

Weight decay pulls weights towards zero; that is a regulariser for matrices, but for gains, biases,
embeddings and the temperature it only fights the model (a decayed logit_scale drifts back to a soft
softmax). So only >= 2-D weights that are not embeddings decay.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from contract.config import ConfigError, OptimConfig, RunConfig

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the temperature so logits stay <= 100
# Where torch 2.x has the fused AdamW kernel (torch.utils._foreach_utils names the same devices, privately).
FUSED_DEVICE_TYPES = frozenset({"cpu", "cuda", "mps", "xpu"})
FUSED_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})


def param_groups(model: nn.Module, weight_decay: float, no_decay_names: set[str] | None = None) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed matrices and undecayed everything else
    (`no_decay_names`, by default the model's `no_weight_decay_params()`; a model of the same layout from
    another library, such as open_clip's CLIP in bench/gpu_compare.py, passes ours).

    Frozen parameters (requires_grad False, e.g. a locked tower) are left out of the optimizer entirely.
    Each group carries the parameter names (`names`) so tests and logs can say what decays.
    """
    if no_decay_names is None:
        no_decay_names = model.no_weight_decay_params()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name in no_decay_names else decay).append((name, p))
    groups = [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def adamw_implementation(device: torch.device, params: Iterable[torch.Tensor]) -> dict[str, bool]:
    """AdamW's fastest kernel for `params` on `device`: `fused` (one kernel over all tensors; ~5x the
    per-tensor loop on CPU) where torch has it for the device and dtypes, else `foreach` (batched ops)."""
    fusable = device.type in FUSED_DEVICE_TYPES and all(
        p.device.type == device.type and p.dtype in FUSED_DTYPES for p in params)
    return {"fused": True} if fusable else {"foreach": True}


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `param_groups(model)` (already on `device`) with `adamw_implementation`'s kernel."""
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ConfigError("model: no trainable parameters (both towers frozen?)")
    impl = adamw_implementation(device, (p for g in groups for p in g["params"]))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **impl)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, device: torch.device) -> None:
    """Restore a saved optimizer state but keep `adamw_implementation`'s kernel: load_state_dict brings back
    the saved `fused`/`foreach` flags, so a checkpoint from before fused AdamW would quietly turn it off."""
    optimizer.load_state_dict(state)
    impl = adamw_implementation(device, (p for g in optimizer.param_groups for p in g["params"]))
    for group in optimizer.param_groups:
        group.update({"fused": None, "foreach": None, **impl})
        on_param_device = group["fused"] or group.get("capturable")
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if torch.is_tensor(step):  # fused/capturable read a float32 step on the param's device, the rest a CPU one
                optimizer.state[p]["step"] = (step.to(dtype=torch.float32, device=p.device) if on_param_device
                                              else step.to(device="cpu"))


def lr_factor_fn(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The multiplier of optim.lr for update number `i` (0-based), for torch's LambdaLR.

    Linear warmup reaches the peak at update warmup_steps - 1; then cosine from the peak (update
    warmup_steps) down to min_lr at the last update (total_steps - 1), or constant at the peak.
    """
    if cfg.min_lr > cfg.lr:
        raise ConfigError(f"optim.min_lr ({cfg.min_lr}) must not exceed optim.lr ({cfg.lr})")
    warmup = cfg.warmup_steps
    min_ratio = cfg.min_lr / cfg.lr
    decay_span = max(1, total_steps - 1 - warmup)

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (i - warmup) / decay_span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """LambdaLR over `lr_factor_fn`; call .step() once after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(cfg, total_steps))


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Clip the global grad norm to max_norm (None: only measure); returns the pre-clip norm on device.

    The norm stays a device tensor: reading it would sync the GPU, so the loop reads it back only when it logs.
    """
    with_grad = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in with_grad], foreach=True)
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(with_grad, max_norm, norm, foreach=True)
    return norm


@torch.no_grad()
def clamp_logit_scale(model: nn.Module, max_value: float = MAX_LOGIT_SCALE) -> None:
    """Keep the learnable log-temperature in [0, log(100)] after each step, as CLIP does."""
    model.logit_scale.clamp_(0.0, max_value)


def apply_settings_on_resume(optimizer: torch.optim.Optimizer, scheduler, cfg: OptimConfig,
                             no_decay_names: set[str]) -> list[str]:
    """Make a restored optimizer and schedule follow `cfg` (the config the run resumes with).

    `no_decay_names`: the model's `no_weight_decay_params()`, which tell the decayed group from the other.
    Loading train_state.pt brings back the saved lr, betas, eps and weight decay in every param group and
    the saved base lr in the scheduler; warmup, min_lr and the schedule length live in the schedule's
    function, which is rebuilt from `cfg`. Returns a note per setting that changed ("optim.lr 0.001 -> 0.002").
    """
    changes: list[str] = []

    def note(name: str, old: object, new: object) -> None:
        if old != new and f"optim.{name}" not in {c.split(" ")[0] for c in changes}:
            changes.append(f"optim.{name} {old} -> {new}")

    for group in optimizer.param_groups:
        note("lr", group.get("initial_lr", group["lr"]), cfg.lr)
        note("betas", list(group["betas"]), list(cfg.betas))
        note("eps", group["eps"], cfg.eps)
        names = group.get("names", [])
        if names and not any(n in no_decay_names for n in names):
            note("weight_decay", group["weight_decay"], cfg.weight_decay)
            group["weight_decay"] = cfg.weight_decay
        group["betas"], group["eps"], group["initial_lr"] = tuple(cfg.betas), cfg.eps, cfg.lr
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    # The lr of the next update, from the rebuilt schedule at the restored position.
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return changes


def schedule_changes(saved: RunConfig | None, cfg: RunConfig) -> list[str]:
    """Notes ("optim.warmup_steps 25 -> 2") for the schedule settings a resume changes from the `saved`
    run config: warmup_steps, min_lr, schedule and train.steps live in the rebuilt schedule function, not in
    the saved optimizer state, so apply_settings_on_resume cannot see them change."""
    if saved is None:
        return []
    pairs = [(f"optim.{name}", getattr(saved.optim, name), getattr(cfg.optim, name))
             for name in ("warmup_steps", "min_lr", "schedule")]
    pairs.append(("train.steps", saved.train.steps, cfg.train.steps))
    return [f"{name} {old} -> {new}" for name, old, new in pairs if old != new]
