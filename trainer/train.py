"""`cliplab train [CONFIG] [--set k=v ...] [--run-dir DIR] [--resume PATH|latest]`: the training program.

The same entry point runs alone (`python -m trainer train`) and under `torchrun --nproc_per_node N -m trainer
train`. `run()` parses the config, builds a Trainer and calls `trainer.train()`; the loop reads like a table
of contents: train step -> log -> eval -> checkpoint.

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

import argparse
import contextlib
import copy
import dataclasses
import math
import os
import random
import signal
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from contract.config import ConfigError, RunConfig, load_config
from trainer.checkpoint import CheckpointError
from contract.table import DataError
from trainer.evaluate import batch_accuracy_similarity
from trainer.attach import ENV_ACCESS_TOKEN, AttachError, Attachment, ServerClient
from contract.events import ENV_RUN_ID, ENV_SERVER
from trainer.events import EventWriter
from trainer.model import trim_tokens
from trainer.optim import (
    apply_settings_on_resume,
    build_optimizer,
    build_scheduler,
    clamp_logit_scale,
    clip_gradients,
    load_optimizer_state,
)
from trainer.precision import Precision, resolve_device, resolve_precision
from trainer.system_metrics import SystemMonitor
from trainer.train_metrics import LogWindow, MetricsCsv, peak_flops, train_flops_per_sample
from trainer.train_state import (Checkpointer, capture_rng_state, load_train_state, restore_rng_state,
                                 resolve_resume, run_dir_of)

HEARTBEAT_S = 10.0
LOG_WINDOW = ("loss", "acc", "similarity", "grad_norm")
TEXT_TOWER = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


# --------------------------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (default: the run dir's config.yaml when "
                        "resuming, else the built-in defaults = the CPU demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--run-dir", help="run directory (default: <output_dir>/<name>-<timestamp>)")
    parser.add_argument("--resume", metavar="PATH|latest",
                        help="continue step-exactly from a checkpoint: a step directory, a run directory, "
                        "or 'latest' of --run-dir")
    parser.add_argument("--server", metavar="URL", default=os.environ.get(ENV_SERVER),
                        help="attach the run to the dashboard at URL (default $CLIPLAB_SERVER): it shows up "
                        "live there and can be stopped from there; the server's access token comes from "
                        "$CLIPLAB_TOKEN. An unreachable server only warns: `cliplab sync` uploads later")


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 finished or stopped (SIGTERM/SIGINT, checkpoint saved), 1 failed, 2 bad config/arguments."""
    from trainer.distributed import cleanup, init_distributed

    dist = init_distributed()
    started = time.monotonic()
    events: EventWriter | None = None
    stop: StopRequest | None = None
    try:
        try:
            cfg, run_dir, resume_from = _resolve_run(args, dist)
        except (ConfigError, FileNotFoundError) as exc:
            print(f"cliplab train: {exc}", file=sys.stderr)
            _report_to_launcher(args.run_dir, str(exc), dist)
            return 2
        # By hand, nothing is written until the run has been built: bad input leaves no trace in the run dir
        # (a typo must not mark a stopped run failed). A launched run reports at once, for its page.
        launched = bool(os.environ.get(ENV_RUN_ID))
        try:
            events, stop = _events_and_stop(None if launched else args.server, cfg, run_dir, dist, launched)
        except AttachError as exc:
            print(f"cliplab train: {exc}", file=sys.stderr)
            return 2
        trainer = None
        try:
            try:
                trainer = Trainer(cfg, run_dir, dist, events, stop, resume_from)
            except (ConfigError, DataError, CheckpointError) as exc:  # bad input found while building
                if launched:
                    events.status("failed", reason=str(exc))
                else:
                    events.discard()
                print(f"cliplab train: {exc}", file=sys.stderr)
                return 2
            status = trainer.train()
            if dist.is_main:
                _print_summary(run_dir, time.monotonic() - started)
            return 0 if status in ("finished", "stopped") else 1
        except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint now, but the run still gets a last word
            step = trainer.step if trainer is not None else 0
            events.status("stopped", reason=f"interrupted at step {step} before a checkpoint was saved; "
                          "resume continues from the latest checkpoint", step=step)
            print(f"cliplab train: interrupted at step {step}", file=sys.stderr)
            return 130
        except Exception as exc:  # the run's last word: a failed status with the reason, and the traceback
            reason = f"{type(exc).__name__}: {exc}"
            events.log(traceback.format_exc(), level="error")
            events.status("failed", reason=reason)
            print(f"cliplab train: failed: {reason}", file=sys.stderr)
            traceback.print_exc()
            return 1
        finally:
            if trainer is not None:
                trainer.close()
    finally:
        if stop is not None:
            stop.uninstall()
        if events is not None:
            events.close()
        cleanup()


def _resolve_run(args: argparse.Namespace, dist) -> tuple[RunConfig, Path, Path | None]:
    """Config, run directory (the same on every rank) and the checkpoint to resume from (or None)."""
    resume_from = None
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.resume:
        resume_from = resolve_resume(args.resume, run_dir)
        run_dir = run_dir or run_dir_of(resume_from)
    elif run_dir is not None:
        # Rank 0 looks before any rank writes, so the ranks cannot disagree about what was there.
        earlier = _broadcast(previous_run_files(run_dir) if dist.is_main else None, dist)
        if earlier:
            raise ConfigError(f"run directory {run_dir} already holds a run ({', '.join(earlier)}); continue it "
                              "with --resume latest, or choose a new --run-dir")
    config_path = args.config
    if config_path is None and run_dir is not None and (run_dir / "config.yaml").is_file():
        config_path = run_dir / "config.yaml"  # resuming a run: its own resolved config
    cfg = load_config(config_path, args.overrides)
    if run_dir is None:
        stamp = _broadcast(datetime.now().strftime("%Y%m%d-%H%M%S"), dist)  # ranks must agree on one dir
        run_dir = Path(cfg.output_dir) / f"{cfg.name}-{stamp}"
    return cfg, run_dir, resume_from


def _events_and_stop(server: str | None, cfg: RunConfig, run_dir: Path, dist,
                     launched: bool) -> tuple[EventWriter, "StopRequest"]:
    """The run's event writer and stop flag. With a dashboard to attach to (`server`), rank 0 registers the run
    once it is built, and the dashboard's stop request sets the same flag SIGTERM does."""
    attachment = _attachment(server, cfg, run_dir, dist)
    stop = StopRequest.install()
    if attachment is not None:
        attachment.on_stop = stop.request
    events = EventWriter(run_dir, enabled=dist.is_main, hold=not launched,
                         connect=attachment.connect if attachment is not None else None)
    return events, stop


def _attachment(server: str | None, cfg: RunConfig, run_dir: Path, dist) -> Attachment | None:
    """Rank 0's link to the dashboard at `server` (None without one, and on other ranks). A wrong address
    or token raises AttachError on every rank before anything is built; an unreachable server only warns."""
    if not server:
        return None
    problem, attachment = None, None
    if dist.is_main:
        try:
            client = ServerClient(server, os.environ.get(ENV_ACCESS_TOKEN))
            on_gpus = cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and dist.device.type == "cuda")
            attachment = Attachment(client, run_dir, cfg.to_dict(), dist.world_size, dist.world_size if on_gpus else 0)
            attachment.check()
        except AttachError as exc:
            problem = str(exc)
    problem = _broadcast(problem, dist)
    if problem:
        raise AttachError(problem)
    return attachment


def previous_run_files(run_dir: Path) -> list[str]:
    """What in `run_dir` a new run would overwrite: its events, metrics or checkpoints. The launcher's own
    files (config.yaml, stdout.log) written before it starts a fresh run are not a previous run."""
    found = [name for name in ("events.jsonl", "metrics.csv")
             if (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0]
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        found.append("checkpoints/")
    return found


def _print_summary(run_dir: Path, wall_s: float) -> None:
    """The closing lines: how the run ended, its directory, wall time, final and best metrics, best checkpoint."""
    from trainer.run_summary import format_summary, summarize_run_dir

    try:
        print(format_summary(summarize_run_dir(run_dir), wall_s), flush=True)
    except Exception as exc:  # the run is over and recorded: a summary that cannot be read must not fail it
        print(f"(no summary: {type(exc).__name__}: {exc})", flush=True)


def _report_to_launcher(run_dir: str | None, reason: str, dist) -> None:
    """A run the backend launched records why it could not start, so its page says so. A run started by
    hand gets only the message: a typo must not mark an existing run failed or create a directory."""
    if run_dir and dist.is_main and os.environ.get(ENV_RUN_ID) and Path(run_dir).is_dir():
        with EventWriter(run_dir) as ev:
            ev.status("failed", reason=reason)


def _broadcast(obj: Any, dist) -> Any:
    """Rank 0's value of `obj` on every rank."""
    if dist.world_size == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves a checkpoint and exits with `stopped`.

    A second SIGINT (Ctrl-C twice) interrupts at once.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.reason: str | None = None  # what the `stopped` status event says

    @classmethod
    def install(cls) -> "StopRequest":
        req = cls()
        req._previous = {s: signal.signal(s, req._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return req

    def uninstall(self) -> None:
        """Put back the handlers that were there before (run() may be called in-process, e.g. by tests)."""
        for signum, handler in getattr(self, "_previous", {}).items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = f"received {signal.Signals(signum).name}"
        self.signal = signum

    def request(self, reason: str) -> None:
        """A stop without a signal (an attached run's dashboard asked): the same path as SIGTERM."""
        if self.signal is None:
            self.reason = reason
            self.signal = signal.SIGTERM

    @property
    def requested(self) -> bool:
        return self.signal is not None


# ------------------------------------------------------------------------------------- building the pieces

@contextlib.contextmanager
def _naming_field(field: str) -> Iterator[None]:
    """Data errors raised inside name the config field whose value caused them."""
    try:
        yield
    except DataError as exc:
        raise DataError(f"{field}: {exc}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: RunConfig) -> nn.Module:
    """The CLIP to train, on the CPU: model.preset randomly initialised, or model.pretrained's weights.

    model.pretrained is a checkpoint path in any format trainer.checkpoint reads, or a preset name whose
    weights are on this machine (trainer.checkpoint.find_local_weights). SigLIP needs a logit_bias; one is
    added (SigLIP's init, -10) when the architecture lacks it.
    """
    from trainer.checkpoint import CheckpointError, find_local_weights, load_model
    from trainer.model import build_model as build_clip
    from contract.presets import get_preset, resolve_preset_name

    if cfg.model.pretrained:
        path = Path(cfg.model.pretrained).expanduser()
        if not path.exists():
            preset = resolve_preset_name(cfg.model.pretrained)
            local = find_local_weights(preset) if preset else None
            if local is None:
                raise ConfigError(f"model.pretrained: {cfg.model.pretrained!r} is not an existing checkpoint "
                                  "file or directory" + (f", and no local weights for preset {preset} were found"
                                                         if preset else "") + "; set it to the weights' path")
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


def freeze_towers(model: nn.Module, freeze_image: bool, freeze_text: bool) -> None:
    """Lock a tower (LiT): its parameters get no gradients, so build_optimizer leaves them out."""
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        if (freeze_image and top == "visual") or (freeze_text and top in TEXT_TOWER):
            p.requires_grad_(False)


def set_train_mode(model: nn.Module, cfg: RunConfig) -> None:
    """Train mode, except frozen towers stay in eval mode so BatchNorm statistics are locked too."""
    model.train()
    if cfg.model.freeze_image:
        model.visual.eval()
    if cfg.model.freeze_text:
        for name in TEXT_TOWER:
            child = getattr(model, name, None)
            if isinstance(child, nn.Module):
                child.eval()


def build_loss(cfg: RunConfig, dist) -> nn.Module:
    from trainer.loss import build_loss as build

    return build(cfg.loss.kind, local_loss=cfg.loss.local_loss, gather_with_grad=cfg.loss.gather_with_grad,
                 multi_positive=cfg.loss.multi_positive, rank=dist.rank, world_size=dist.world_size)


def parallelize(model: nn.Module, cfg: RunConfig, dist, device: torch.device) -> tuple[nn.Module, Any]:
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


# ------------------------------------------------------------------------------------------ one train step

@dataclass
class StepOutput:
    """Detached results of one optimizer step's forward/backward, all on the device."""

    loss: torch.Tensor
    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor
    caption_ids: torch.Tensor | None


def _loss(loss_fn: nn.Module, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
          bias: torch.Tensor | None, caption_ids: torch.Tensor | None) -> torch.Tensor:
    # The losses leave autocast and upcast bf16/fp16 themselves: logits up to 100 need fp32's precision.
    if bias is None:
        return loss_fn(img, txt, scale, caption_ids=caption_ids)
    return loss_fn(img, txt, scale, bias, caption_ids=caption_ids)


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

    ids = [mb.get("caption_id") for mb in micro_batches]
    caption_ids = None if any(i is None for i in ids) else torch.cat(ids)
    if len(micro_batches) == 1:
        mb = micro_batches[0]
        with precision.autocast():
            img, txt, scale = model(mb["image"], mb["text"])
        loss = _loss(loss_fn, img, txt, scale, logit_bias, caption_ids)
        backward(loss)
        return StepOutput(loss.detach(), img.detach(), txt.detach(), scale.detach(), caption_ids)

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
            loss = _loss(loss_fn, all_img, all_txt, scale, bias, caption_ids)
            backward(loss)
    return StepOutput(loss.detach(), torch.cat(cached_img), torch.cat(cached_txt), scale.detach(), caption_ids)


# ------------------------------------------------------------------------------------------------ the loop

class Trainer:
    """Builds model, optimizer, data, loss and bookkeeping from a RunConfig, then `train()` runs the loop."""

    def __init__(self, cfg: RunConfig, run_dir: Path, dist, events: EventWriter, stop: StopRequest,
                 resume_from: Path | None = None):
        self.cfg, self.run_dir, self.dist, self.events, self.stop = cfg, Path(run_dir), dist, events, stop
        self.total_steps = cfg.train.steps
        self.step = 0
        self.best: dict[str, Any] | None = None  # {"metric", "value", "step"}
        self.total_skipped = 0
        self._progress = None  # the tqdm bar while train() runs on a terminal
        self._system: SystemMonitor | None = None  # the system-metrics thread while train() runs
        self._saved_step = -1
        self._skipped_window: list[tuple[str, str]] = []
        self._skipped_count = 0
        events.status("starting", total_steps=self.total_steps)

        self.device = resolve_device(cfg.train.device, dist.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        seed_everything(cfg.train.seed)  # same on every rank: identical initial weights
        self._build_model()
        self._build_optimizer()
        self.loss_fn = build_loss(cfg, dist)
        seed_everything(cfg.train.seed + dist.rank)  # per-rank randomness from here on (augmentation)
        self._build_data()
        self.window = LogWindow(LOG_WINDOW, self.device)
        self.checkpointer = Checkpointer(self.run_dir, cfg.checkpoint.keep_last)
        if resume_from is not None:
            self._load(resume_from)
        # Built: the input is usable. Only now does the run directory change (a failed attempt to resume
        # with bad overrides must leave the run's config.yaml as it ran).
        events.release()
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
            self.checkpointer.clean_partial()
        self.metrics_csv = (MetricsCsv(self.run_dir / "metrics.csv", resume_step=self.step if resume_from else None)
                            if dist.is_main else None)
        self.train_model, self.ddp = parallelize(self.model, cfg, dist, self.device)
        self.flops_per_sample: float | None = None
        self.peak_flops = peak_flops(self.device)
        self._describe()

    # -- building -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the system-metrics thread and shut the data-loader workers down now, not at interpreter exit."""
        self._stop_system_monitor()
        self.loader.close()

    def _start_system_monitor(self) -> None:
        """Rank 0 samples CPU, memory and its node's GPUs from a thread (trainer/system_metrics.py)."""
        if not self.dist.is_main:
            return
        emit = (lambda values: self.events.emit("system", step=self.step, values=values))
        warn = (lambda message: self.events.log(message, level="warning"))
        self._system = SystemMonitor(emit, self.cfg.train.system_every_s, warn).start()

    def _stop_system_monitor(self) -> None:
        if self._system is not None:
            self._system.stop()
            self._system = None

    def _build_model(self) -> None:
        cfg = self.cfg
        self.model = build_model(cfg)
        self._check_preset_matches_weights()
        self.initial_weights = self._wise_ft_reference()
        freeze_towers(self.model, cfg.model.freeze_image, cfg.model.freeze_text)
        self.model.to(self.device)
        if cfg.model.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    def _check_preset_matches_weights(self) -> None:
        """model.pretrained decides the architecture; say so when model.preset names another one."""
        from contract.presets import count_parameters, get_preset, preset_of, same_architecture

        args = getattr(self.model, "args", None)
        if not self.cfg.model.pretrained or args is None or same_architecture(args, get_preset(self.cfg.model.preset)):
            return
        found = preset_of(args) or "an architecture no preset has"
        self._say(f"model.pretrained holds {found} ({count_parameters(args) / 1e6:.1f}M parameters), not "
                  f"model.preset {self.cfg.model.preset}: training the checkpoint's architecture (set model.preset "
                  "to match it to silence this)", level="warning")

    def _build_optimizer(self) -> None:
        self.optimizer = build_optimizer(self.model, self.cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.optim, self.total_steps)
        self.scaler = self.precision.grad_scaler()

    def _build_data(self) -> None:
        from trainer.data import build_train_loader, build_val_dataset

        res = self.model.image_resolution
        log = (lambda message: self._say(f"[data] {message}"))
        with _naming_field("data.train"):
            self.loader = build_train_loader(self.cfg.data, self.cfg.train.batch_size, res, self.dist.rank,
                                             self.dist.world_size, self.cfg.train.seed, device=self.device, log=log)
        self.val_dataset = None
        if self.cfg.data.val:
            with _naming_field("data.val"):
                self.val_dataset = build_val_dataset(self.cfg.data, res, log=log)
                if len(self.val_dataset) < 2:  # in-batch metrics compare each pair with the others
                    raise DataError(f"{self.cfg.data.val} lists {len(self.val_dataset)} pair(s); evaluation needs "
                                    "at least 2 (or set data.val to null to train without evaluation)")
        # Ranks exchange batch sizes (a skipped image shortens a batch) over a CPU group: no GPU sync.
        self._cpu_group = None
        if self.dist.world_size > 1:
            backend = torch.distributed.get_backend()
            self._cpu_group = torch.distributed.new_group(backend="gloo") if backend != "gloo" else None

    def _wise_ft_reference(self) -> dict[str, torch.Tensor] | None:
        """A CPU copy of the pretrained weights, kept only when a WiSE-FT checkpoint will be written."""
        if self.cfg.checkpoint.wise_ft_alpha is None:
            return None
        if not self.cfg.model.pretrained:
            self.events.log("checkpoint.wise_ft_alpha is set but model.pretrained is not: WiSE-FT needs "
                            "initial weights to interpolate with, so no wise_ft checkpoint will be written",
                            level="warning")
            return None
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def _describe(self) -> None:
        n_train = sum(p.numel() for p in self.trainable)
        n_all = sum(p.numel() for p in self.model.parameters())
        batch = self.cfg.train.batch_size * self.cfg.train.accum_steps * self.dist.world_size
        self._say(f"model {self.cfg.model.pretrained or self.cfg.model.preset}: {n_all / 1e6:.2f}M parameters "
                  f"({n_train / 1e6:.2f}M trainable); {self.precision.name} on {self.device}; "
                  f"world size {self.dist.world_size}; global batch {batch} "
                  f"({self.cfg.train.batch_size} x {self.cfg.train.accum_steps} accumulation steps x "
                  f"{self.dist.world_size} ranks); run dir {self.run_dir}")

    def _say(self, message: str, level: str = "info") -> None:
        """A line on stdout (rank 0) and a `log` event."""
        self._print(message)
        self.events.log(message, level=level)

    def _print(self, message: str) -> None:
        if not self.dist.is_main:
            return
        if self._progress is not None:
            self._progress.write(message)  # above the bar instead of through it
        else:
            print(message, flush=True)

    # -- the loop -----------------------------------------------------------------------------------------

    def train(self) -> str:
        """Run until train.steps (or a stop request); returns the final status (finished/stopped)."""
        self.events.status("running", step=self.step, total_steps=self.total_steps)
        set_train_mode(self.model, self.cfg)
        self._progress = self._progress_bar()
        self._start_system_monitor()
        self._train_start, self._first_step = time.perf_counter(), self.step
        self._tput_start, self._tput_steps = time.perf_counter(), 0
        self._last_heartbeat = time.monotonic()
        stopped = False
        while self.step < self.total_steps:
            if self._stop_agreed():
                stopped = True
                break
            self.train_step()
            self.step += 1
            row: dict[str, Any] = {}
            self.maybe_log(row)
            self.maybe_eval(row)
            self.maybe_checkpoint()
            if row and self.metrics_csv is not None:
                self.metrics_csv.write({"time": time.time(), "step": self.step, **row})
            self.heartbeat()
            if self._progress is not None:
                self._progress.update(1)
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._stop_system_monitor()  # no system event after the final status
        return self._finish(stopped)

    def train_step(self) -> None:
        """One optimizer step over train.accum_steps micro-batches; metrics stay on the device."""
        micro = [self._next_batch() for _ in range(self.cfg.train.accum_steps)]
        if self.flops_per_sample is None:
            self.flops_per_sample = self._count_flops(micro[0]) or 0.0
        self.optimizer.zero_grad(set_to_none=True)
        out = forward_backward(self.train_model, self.loss_fn, micro, self.precision, self.scaler, self.ddp,
                               getattr(self.model, "logit_bias", None))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(self.trainable, self.cfg.optim.grad_clip)
        self._lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        clamp_logit_scale(self.model)
        acc, sim = batch_accuracy_similarity(out.image_features, out.text_features, out.logit_scale, out.caption_ids)
        self.window.add(loss=out.loss, acc=acc, similarity=sim, grad_norm=grad_norm)
        self._tput_steps += 1

    def _next_batch(self) -> dict[str, torch.Tensor]:
        batch = self._equal_across_ranks(next(self.loader))
        skipped = batch.get("skipped") or []
        if skipped:
            self._skipped_count += len(skipped)
            self._skipped_window.extend(skipped[: max(0, 5 - len(self._skipped_window))])
        text = batch["text"]
        if self.cfg.model.trim_text:
            text = trim_tokens(text)  # on the CPU copy, before the transfer: no device sync
        out = {"image": batch["image"].to(self.device, non_blocking=True),
               "text": text.to(self.device, non_blocking=True)}
        if batch.get("caption_id") is not None:  # the loss uses them only with loss.multi_positive
            out["caption_id"] = batch["caption_id"].to(self.device, non_blocking=True)
        return out

    def _equal_across_ranks(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Cut the batch to the smallest batch of any rank: gathering features needs equal shapes, and a
        skipped image makes one rank's batch shorter."""
        if self.dist.world_size == 1:
            return batch
        n = batch["text"].shape[0]
        size = torch.tensor([n], dtype=torch.int64)
        torch.distributed.all_reduce(size, op=torch.distributed.ReduceOp.MIN, group=self._cpu_group)
        m = int(size)
        if m == n:
            return batch
        return {k: (v[:m] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n else v)
                for k, v in batch.items()}

    def _count_flops(self, mb: dict[str, torch.Tensor]) -> float | None:
        # Eval mode so BatchNorm statistics are not touched by this extra forward.
        self.model.eval()
        try:
            return train_flops_per_sample(self.model, mb["image"], mb["text"])
        finally:
            set_train_mode(self.model, self.cfg)

    # -- reporting ----------------------------------------------------------------------------------------

    def maybe_log(self, row: dict[str, Any]) -> None:
        """Every train.log_every steps (and at the last): one read-back, a metric event, a CSV row, a line."""
        if self.step % self.cfg.train.log_every and self.step != self.total_steps:
            return
        values = self.window.read()  # the sync point
        now = time.perf_counter()
        elapsed = max(now - self._tput_start, 1e-9)
        per_step = self.cfg.train.batch_size * self.cfg.train.accum_steps
        # Unreadable images shrink batches; count the samples that were really trained on.
        sps_device = max(0, per_step * self._tput_steps - self._skipped_count) / elapsed
        values.update(
            lr=self._lr,
            logit_scale=float(self.model.logit_scale.detach().exp()),
            samples_per_s=sps_device * self.dist.world_size,
            samples_per_s_per_device=sps_device,
            step_time=elapsed / max(1, self._tput_steps),
        )
        if self.flops_per_sample:
            values["tflops_per_device"] = self.flops_per_sample * sps_device / 1e12
            if self.peak_flops:
                values["mfu"] = self.flops_per_sample * sps_device / self.peak_flops
        if self.device.type == "cuda":
            values["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self._tput_start, self._tput_steps = now, 0
        self.events.emit("metric", step=self.step, values=values)
        row.update(values)
        self._report_skipped()
        if self.dist.is_main:
            self._print(f"step {self.step}/{self.total_steps} | loss {values['loss']:.4f} | acc {values['acc']:.3f} | "
                  f"sim {values['similarity']:.3f} | lr {values['lr']:.2e} | scale {values['logit_scale']:.1f} | "
                  f"{values['samples_per_s']:.0f} samples/s | {self._rate_and_eta()}")
            if self._progress is not None:
                self._progress.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)

    def _rate_and_eta(self) -> str:
        """Steps per second since this process began training (evals included: they take wall time too) and
        the time left at that pace, for logs where no progress bar is drawn."""
        from trainer.run_summary import format_duration

        done = self.step - self._first_step
        elapsed = time.perf_counter() - self._train_start
        if done <= 0 or elapsed <= 0:
            return "ETA -"
        rate = done / elapsed
        return f"{rate:.2f} steps/s | ETA {format_duration((self.total_steps - self.step) / rate)}"

    def _report_skipped(self) -> None:
        if not self._skipped_count:
            return
        self.total_skipped += self._skipped_count
        self.events.emit("data_warning", step=self.step, skipped=self._skipped_count,
                         total_skipped=self.total_skipped,
                         examples=[{"path": str(p), "reason": str(r)} for p, r in self._skipped_window])
        self._print_skipped("train", self._skipped_count, self._skipped_window, self.total_skipped)
        self._skipped_count, self._skipped_window = 0, []

    def _report_val_skipped(self, skipped: list[tuple[str, str]]) -> None:
        """Unreadable val images, from every rank, as one data_warning (split "val") from rank 0."""
        if self.dist.world_size > 1:
            per_rank: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(per_rank, skipped)
            skipped = [item for part in per_rank for item in part]
        if skipped:
            self.events.emit("data_warning", step=self.step, split="val", skipped=len(skipped),
                             total_skipped=len(skipped),
                             examples=[{"path": str(p), "reason": str(r)} for p, r in skipped[:5]])
            self._print_skipped("val", len(skipped), skipped, len(skipped))

    def _print_skipped(self, split: str, count: int, examples: list[tuple[str, str]], total: int) -> None:
        """The data_warning as one terminal line (the event carries every example)."""
        path, reason = examples[0] if examples else ("?", "?")
        self._print(f"[data] warning: skipped {count} unreadable {split} image(s) at step {self.step} "
                    f"({total} in all), e.g. {path}: {reason}")

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_S:
            self.events.emit("heartbeat", step=self.step, total_steps=self.total_steps)
            self._last_heartbeat = now

    def _progress_bar(self):
        """A tqdm bar (rate, ETA, last loss) on a terminal; redirected output gets only the plain log lines,
        which carry the rate and ETA themselves."""
        if not (self.dist.is_main and sys.stdout.isatty() and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        try:  # tqdm hides its bar on a terminal that reports no size (a bare pty): assume 100 x 40 there
            sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
        except OSError:
            sized = False
        return tqdm(total=self.total_steps, initial=self.step, unit="step", desc=self.cfg.name,
                    dynamic_ncols=sized, **({} if sized else {"ncols": 100, "nrows": 40}))

    # -- evaluation ---------------------------------------------------------------------------------------

    def maybe_eval(self, row: dict[str, Any]) -> None:
        """Every eval.every steps and at the end: every rank encodes its share of the val set, all get the
        same metrics; rank 0 emits eval + matrix events. Saves a `best` checkpoint when the metric improves."""
        if self.val_dataset is None or (self.step % self.cfg.eval.every and self.step != self.total_steps):
            return
        values = self.evaluate()
        row.update(values)
        if self._improves(values):
            self.save_checkpoint(best=True)
        self._tput_start, self._tput_steps = time.perf_counter(), 0  # eval time is not training throughput

    def evaluate(self) -> dict[str, float]:
        from trainer.evaluate import evaluate, matrix_snapshot

        try:
            result = evaluate(self.model, self.val_dataset, self.cfg.eval, self.device,
                              autocast=self.precision.autocast, num_workers=self.cfg.data.num_workers,
                              rank=self.dist.rank, world_size=self.dist.world_size,
                              on_batch=self.heartbeat)  # a long eval must not look like a silent, lost run
            values = dict(result)
            self.events.emit("eval", step=self.step, values=values, batch_size=result.batch_size)
            self._report_val_skipped(result.skipped)
            if self.dist.is_main:
                snapshot = matrix_snapshot(self.model, self.val_dataset, self.cfg.eval.matrix_size, self.device,
                                           autocast=self.precision.autocast)
                self.events.emit("matrix", step=self.step, **snapshot)
        finally:
            set_train_mode(self.model, self.cfg)
        if self.dist.is_main:
            summary = " | ".join(f"{k} {v:.4f}" for k, v in values.items())
            self._print(f"eval step {self.step}: {summary}")
        return values

    def _improves(self, values: dict[str, float] | None) -> bool:
        metric = self.cfg.checkpoint.best_metric
        if values is None or metric is None:
            return False
        value = values.get(metric)
        if value is None or not math.isfinite(value):
            if metric not in values:
                self._say(f"checkpoint.best_metric {metric!r} is not among the eval metrics "
                          f"({', '.join(sorted(values))}); no best checkpoint is kept", level="warning")
            return False
        better = (self.best is None or (value < self.best["value"] if self.cfg.checkpoint.best_mode == "min"
                                        else value > self.best["value"]))
        if better:
            self.best = {"metric": metric, "value": value, "step": self.step}
        return better

    # -- checkpoints --------------------------------------------------------------------------------------

    def maybe_checkpoint(self) -> None:
        if self.step % self.cfg.checkpoint.every == 0 and self.step != self.total_steps:
            self.save_checkpoint()

    def save_checkpoint(self, best: bool = False, kind: str | None = None) -> None:
        """Collective: every rank contributes its RNG and data position; rank 0 writes step_<N>/."""
        from trainer.checkpoint import save_model

        per_rank = {"rng": capture_rng_state(), "loader": self.loader.state_dict()}
        gathered = self._gather_objects(per_rank)
        if self.dist.is_main:
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": [g["rng"] for g in gathered],
                "loader": [g["loader"] for g in gathered],
                "best": self.best,
                "log_window": self.window.state_dict(),
                "total_skipped": self.total_skipped,
                "world_size": self.dist.world_size,
                "data_order": self._data_order(),
            }
            path = self.checkpointer.save(self.step, lambda d: save_model(self.model, d), state, best=best)
            rel = str(path.relative_to(self.run_dir))
            # `kind` is the event's own field, so the checkpoint's role travels as `checkpoint_kind`.
            self.events.emit("checkpoint", step=self.step, path=rel,
                             checkpoint_kind=kind or ("best" if best else "latest"))
        self._saved_step = self.step
        self._barrier()

    def _load(self, step_dir: Path) -> None:
        """Restore weights and train state from a step directory (the inverse of save_checkpoint)."""
        from trainer.checkpoint import load_weights

        load_weights(self.model, step_dir, strict=True)
        state = load_train_state(step_dir)
        self.step = int(state["step"])
        load_optimizer_state(self.optimizer, state["optimizer"], self.device)
        self.scheduler.load_state_dict(state["scheduler"])
        changed = apply_settings_on_resume(self.optimizer, self.scheduler, self.cfg.optim)
        if changed:  # warmup, min_lr and train.steps reach the schedule by its rebuilt function
            self._say(f"resuming with {', '.join(changed)}: applied from step {int(state['step']) + 1}")
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best = state.get("best")
        self.total_skipped = int(state.get("total_skipped", 0))
        self.window.load_state_dict(state["log_window"])
        rank = self.dist.rank
        same_world = state.get("world_size") == self.dist.world_size
        self.loader.load_state_dict(state["loader"][rank if same_world else 0])
        restore_rng_state(state["rng"][rank if same_world else 0])
        if not same_world:
            self._say(f"resuming with world size {self.dist.world_size} from a checkpoint written with "
                      f"{state.get('world_size')}: the data order and RNG streams are not step-exact",
                      level="warning")
        saved_order = state.get("data_order") or {}
        changed = [f"{key} {saved_order[key]!r} -> {value!r}" for key, value in self._data_order().items()
                   if key in saved_order and saved_order[key] != value]
        if changed:
            self._say(f"resuming with {', '.join(changed)}: the data order is not step-exact", level="warning")
        self._saved_step = self.step
        self._say(f"resumed from {step_dir} at step {self.step}")

    def _data_order(self) -> dict[str, Any]:
        """The settings a step-exact resume needs unchanged (saved with each checkpoint, compared on resume)."""
        cfg = self.cfg
        return {"data.train": cfg.data.train, "data.num_workers": cfg.data.num_workers,
                "data.distinct_captions": cfg.data.distinct_captions, "train.batch_size": cfg.train.batch_size,
                "train.accum_steps": cfg.train.accum_steps, "train.seed": cfg.train.seed}

    def _gather_objects(self, obj: Any) -> list[Any]:
        if self.dist.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def _barrier(self) -> None:
        if self.dist.world_size > 1:
            torch.distributed.barrier()

    def _stop_agreed(self) -> bool:
        """Whether to stop now. Alone: at the first step boundary after the signal. Under torchrun every rank
        must stop at the same step (a checkpoint is a collective), so ranks agree at log boundaries, where
        the loop synchronises anyway."""
        if self.dist.world_size == 1:
            return self.stop.requested
        if self.step % self.cfg.train.log_every:
            return False
        flag = torch.tensor([1.0 if self.stop.requested else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _finish(self, stopped: bool) -> str:
        """The final checkpoint (+ WiSE-FT), the last eval if stopped early, and the final status event."""
        if self._saved_step != self.step:
            self.save_checkpoint(kind="latest" if stopped else "final")
        elif not stopped and self.dist.is_main:  # saved moments ago as `best`: it is also the final one
            path = self.checkpointer.pointer("latest")
            self.events.emit("checkpoint", step=self.step, path=str(path.relative_to(self.run_dir)),
                             checkpoint_kind="final")
        if not stopped:
            self._write_wise_ft()
        status = "stopped" if stopped else "finished"
        reason = self.stop.reason if stopped else None
        self._say(f"{status} at step {self.step}/{self.total_steps}" + (f" ({reason})" if reason else ""))
        self.events.status(status, reason=reason, step=self.step, total_steps=self.total_steps)
        self._barrier()
        return status

    def _write_wise_ft(self) -> None:
        """checkpoints/wise_ft/: alpha * fine-tuned + (1 - alpha) * initial weights (Wortsman et al., 2022)."""
        alpha = self.cfg.checkpoint.wise_ft_alpha
        if self.initial_weights is None or alpha is None or not self.dist.is_main:
            return
        from trainer.checkpoint import save_model

        tuned = self.model.state_dict()
        mixed = {k: (alpha * v.detach().cpu().float() + (1 - alpha) * self.initial_weights[k].float()).to(v.dtype)
                 if v.is_floating_point() else v.detach().cpu() for k, v in tuned.items()}
        model = copy.deepcopy(self.model).cpu()
        model.load_state_dict(mixed)
        path = self.checkpointer.save_weights("wise_ft", lambda d: save_model(model, d))
        self.events.emit("checkpoint", step=self.step, path=str(path.relative_to(self.run_dir)),
                         checkpoint_kind="wise_ft")
        self._say(f"wrote WiSE-FT weights (alpha {alpha}) to {path}")
