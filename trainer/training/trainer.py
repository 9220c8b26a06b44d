"""The Trainer: builds a run's components from its RunConfig, then `train()` runs the loop, which reads like a
table of contents: stop check -> train step -> log -> eval -> checkpoint.

Components (each with state_dict()/load_state_dict() where a checkpoint holds its state):
    progress   TrainProgress: the step counter, written only by `advance()` and a resume
    feed       DataFeed: micro-batches on the device, equal across ranks; SkippedImages (unreadable images)
    optimizer / scheduler / scaler: AdamW over the model's parameter groups, the LR schedule, fp16's scaler
    metrics    MetricsProcessor: the device-side log window, throughput, metric events, metrics.csv
    evaluator  Evaluator and BestTracker: evals and when a `best` checkpoint is kept
    checkpointer  Checkpointer: train_state.pt's one definition, save and resume (CheckpointFolder on disk)
"""

from __future__ import annotations

from pathlib import Path

from contract.config import ConfigError, RunConfig
from contract.run_dir import CONFIG_FILE, LATEST
from trainer.distributed import DistInfo, barrier, broadcast_object
from trainer.evaluate import batch_accuracy_similarity
from trainer.events import EventWriter
from trainer.system_metrics import SystemMonitor
from trainer.training.build import build_loss, build_model, freeze_towers, parallelize, set_train_mode
from trainer.training.checkpoint_folder import CheckpointFolder, run_dir_of, saved_config
from trainer.training.checkpointer import Checkpointer, StateEntry, data_order
from trainer.training.data_feed import build_data
from trainer.training.evaluator import BestTracker, Evaluator
from trainer.training.metrics_processor import MetricsProcessor
from trainer.training.optim import (
    apply_settings_on_resume,
    build_optimizer,
    build_scheduler,
    clamp_logit_scale,
    clip_gradients,
    load_optimizer_state,
    schedule_changes,
)
from trainer.training.precision import resolve_precision, resolve_train_device
from trainer.training.progress import Console, Heartbeat, TrainProgress
from trainer.training.rng import RngState, seed_everything
from trainer.training.run_lock import lock_run_dir, unlock_run_dir
from trainer.training.step import forward_backward
from trainer.training.stop import StopRequest
from trainer.training.wise_ft import interpolated_copy, wise_ft_reference


class Trainer:
    """Builds model, optimizer, data, loss and bookkeeping from a RunConfig, then `train()` runs the loop."""

    def __init__(self, cfg: RunConfig, run_dir: Path, dist: DistInfo, events: EventWriter, stop: StopRequest,
                 resume_from: Path | None = None):
        self.cfg, self.run_dir, self.dist, self.events, self.stop = cfg, Path(run_dir), dist, events, stop
        self.progress = TrainProgress(cfg.train.steps)
        self.console = Console(events, dist.is_main)
        self.heartbeat = Heartbeat(events, self.progress)
        self._system: SystemMonitor | None = None  # the system-metrics thread while train() runs
        events.status("starting", total_steps=self.progress.total_steps)
        self.device = resolve_train_device(cfg.train.device, dist.device, dist.local_rank)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        seed_everything(cfg.train.seed)  # same on every rank: identical initial weights
        self._build_model(resume_from)
        self._build_optimizer()
        self.loss_fn = build_loss(cfg, dist)
        seed_everything(cfg.train.seed + dist.rank)  # per-rank randomness from here on (augmentation)
        self.feed, val_dataset = build_data(cfg, self.model.image_resolution, dist, self.device,
                                            lambda message: self.console.say(f"[data] {message}"))
        self.metrics = MetricsProcessor(cfg, dist, self.device, events, self.console, self.progress)
        self.best = BestTracker(cfg, self.console)
        self.evaluator = Evaluator(cfg, val_dataset, dist, self.precision, events, self.console, self.progress,
                                   self.heartbeat.beat)
        self.checkpointer = self._build_checkpointer()
        if resume_from is not None:
            self._resume(resume_from)
        self._prepare_run_dir(resume_from)
        self.train_model, self.ddp = parallelize(self.model, cfg, dist, self.device)
        self._describe()

    @property
    def step(self) -> int:
        """Optimizer steps taken (read-only: TrainProgress counts them)."""
        return self.progress.step

    # -- building -----------------------------------------------------------------------------------------

    def _build_model(self, resume_from: Path | None) -> None:
        cfg = self.cfg
        self.model = build_model(cfg, resume_from)
        self._check_preset_matches_weights()
        self._check_context_length()
        self.initial_weights = wise_ft_reference(cfg, self.model, self.events)
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
        self.console.say(f"model.pretrained holds {found} ({count_parameters(args) / 1e6:.1f}M parameters), not "
                         f"model.preset {self.cfg.model.preset}: training the checkpoint's architecture (set "
                         "model.preset to match it to silence this)", level="warning")

    def _check_context_length(self) -> None:
        """Captions are tokenized to data.context_length; a model with a shorter text context (a pretrained
        checkpoint's) cannot take them: say so now, not as a traceback at the first long caption."""
        model_length, data_length = self.model.context_length, self.cfg.data.context_length
        if data_length > model_length:
            raise ConfigError(f"data.context_length: {data_length} is longer than the model's text context of "
                              f"{model_length} tokens ({self.cfg.model.pretrained or self.cfg.model.preset}); "
                              f"set data.context_length to at most {model_length}")

    def _build_optimizer(self) -> None:
        self.optimizer = build_optimizer(self.model, self.cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.optim, self.progress.total_steps)
        self.scaler = self.precision.grad_scaler()
        warmup, total = self.cfg.optim.warmup_steps, self.progress.total_steps
        if warmup > total:  # legal (a short trial of a long recipe), but rarely meant
            self.console.say(f"optim.warmup_steps {warmup} > the run's {total} steps: the learning rate never "
                             f"reaches optim.lr {self.cfg.optim.lr:g}", level="warning")

    def _build_checkpointer(self) -> Checkpointer:
        """The Checkpointer over every component whose state a checkpoint holds (train_state.pt's keys)."""
        scaler = self.scaler
        components = {
            "optimizer": StateEntry(self.optimizer.state_dict,
                                    lambda state: load_optimizer_state(self.optimizer, state, self.device)),
            "scheduler": self.scheduler,
            "scaler": StateEntry(lambda: scaler.state_dict() if scaler is not None else None,
                                 lambda state: scaler.load_state_dict(state) if scaler is not None and state else None),
            "best": self.best,
            "log_window": self.metrics.window,
            "total_skipped": self.feed.skipped,
        }
        per_rank = {"rng": RngState(), "loader": self.feed}
        folder = CheckpointFolder(self.run_dir, self.cfg.checkpoint.keep_last)
        return Checkpointer(folder, self.dist, self.progress, components, per_rank, data_order(self.cfg),
                            self.model, self.events, self.console)

    def _resume(self, step_dir: Path) -> None:
        """Continue from `step_dir`, then make the optimizer follow this run's optim settings."""
        self.checkpointer.load(step_dir)
        if self.progress.step > self.cfg.train.steps:  # before the run directory (config.yaml) changes
            raise ConfigError(f"train.steps: the checkpoint {step_dir} is at step {self.progress.step}, past "
                              f"train.steps {self.cfg.train.steps}; resume with train.steps of at least "
                              f"{self.progress.step} (more to train longer)")
        changed = apply_settings_on_resume(self.optimizer, self.scheduler, self.cfg.optim,
                                           self.model.no_weight_decay_params())
        # warmup, min_lr, the schedule and train.steps reach the schedule by its rebuilt function; the
        # saved optimizer state does not hold them, the run's config.yaml (not yet rewritten) does
        changed += schedule_changes(saved_config(run_dir_of(step_dir)), self.cfg)
        if changed:
            self.console.say(f"resuming with {', '.join(changed)}: applied from step {self.progress.step + 1}")
        self.console.say(f"resumed from {step_dir} at step {self.progress.step}")

    def _prepare_run_dir(self, resume_from: Path | None) -> None:
        """Built: the input is usable. Only now does the run directory change (a failed attempt to resume
        with bad overrides must leave the run's config.yaml as it ran), once rank 0 holds its lock."""
        problem = broadcast_object(self._take_run_dir(resume_from) if self.dist.is_main else None)
        if problem:
            raise ConfigError(problem)
        self.metrics.open_csv(self.run_dir, self.progress.step if resume_from is not None else None)

    def _take_run_dir(self, resume_from: Path | None) -> str | None:
        """Rank 0: lock the run directory, write its events and config.yaml; why not, when it cannot."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            in_use = lock_run_dir(self.run_dir)
            if in_use:
                return in_use
            self.events.release()
            (self.run_dir / CONFIG_FILE).write_text(self.cfg.to_yaml())
            self.checkpointer.folder.clean_partial()
            if resume_from is not None:
                self._rewind(resume_from)
        except OSError as exc:  # a file where the folder should be, a read-only disk: the user's to fix
            return (f"run directory {self.run_dir}: cannot write there ({exc.strerror or exc}: "
                    f"{exc.filename or self.run_dir}); choose a writable --run-dir or output_dir")
        return None

    def _rewind(self, step_dir: Path) -> None:
        """Rank 0, resuming from a step older than the run's newest checkpoints: `latest` (and a `best` past
        it) move back to this branch; the newer step directories go at its first save (CheckpointFolder.rewind)."""
        best = self.best.state_dict()
        abandoned = self.checkpointer.folder.rewind(step_dir, best["step"] if best else None)
        if abandoned:
            self.console.say(f"resuming from {step_dir.name}, before this run's newer checkpoints "
                             f"{', '.join(abandoned)}: {LATEST} names {step_dir.name} now, and those are removed "
                             "at this run's first checkpoint save")

    def _describe(self) -> None:
        n_train = sum(p.numel() for p in self.trainable)
        n_all = sum(p.numel() for p in self.model.parameters())
        cfg, world = self.cfg, self.dist.world_size
        batch = cfg.train.batch_size * cfg.train.accum_steps * world
        self.console.say(f"model {cfg.model.pretrained or cfg.model.preset}: {n_all / 1e6:.2f}M parameters "
                         f"({n_train / 1e6:.2f}M trainable); {self.precision.name} on {self.device}; "
                         f"world size {world}; global batch {batch} ({cfg.train.batch_size} x "
                         f"{cfg.train.accum_steps} accumulation steps x {world} ranks); run dir {self.run_dir}")

    def close(self) -> None:
        """Stop the system-metrics thread and shut the data-loader workers down now, not at interpreter exit;
        let another training use the run directory."""
        self._stop_system_monitor()
        self.feed.close()
        if self.dist.is_main:
            unlock_run_dir(self.run_dir)

    # -- the loop -----------------------------------------------------------------------------------------

    def train(self) -> str:
        """Run until train.steps (or a stop request); returns the final status (finished/stopped)."""
        self._start()
        stopped = False
        while not self.progress.done:
            if self.stop.agreed(self.progress.step, self.cfg.train.log_every, self.device, self.dist):
                stopped = True
                break
            self.train_step()
            self.progress.advance()
            logged = self.log_metrics()
            row = {**logged, **self.maybe_eval()}
            self.maybe_checkpoint()
            self.metrics.write_row(row)
            self.heartbeat.beat()
            self.console.advance_bar(logged.get("loss"))
        self.console.close_bar()
        self._stop_system_monitor()  # no system event after the final status
        return self._finish(stopped)

    def _start(self) -> None:
        self.events.status("running", step=self.progress.step, total_steps=self.progress.total_steps)
        set_train_mode(self.model, self.cfg)
        self.console.open_bar(self.progress, self.cfg.name)
        self._start_system_monitor()
        self.metrics.start()

    def train_step(self) -> None:
        """One optimizer step over train.accum_steps micro-batches; metrics stay on the device."""
        micro = [self.feed.next_micro_batch() for _ in range(self.cfg.train.accum_steps)]
        if self.metrics.flops_per_sample is None:
            self.metrics.count_flops(self.model, micro[0])
            set_train_mode(self.model, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        out = forward_backward(self.train_model, self.loss_fn, micro, self.precision, self.scaler, self.ddp,
                               getattr(self.model, "logit_bias", None))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(self.trainable, self.cfg.optim.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        clamp_logit_scale(self.model)
        acc, sim = batch_accuracy_similarity(out.image_features, out.text_features, out.logit_scale, out.caption_ids,
                                             out.image_ids)
        self.metrics.add_step(lr, loss=out.loss, acc=acc, similarity=sim, grad_norm=grad_norm)

    def log_metrics(self) -> dict[str, float]:
        """Every train.log_every steps (and at the last): the metric values, and the skipped images reported."""
        if not self.progress.every(self.cfg.train.log_every):
            return {}
        values = self.metrics.log(self.model, self.feed.skipped.count)
        self.feed.skipped.report(self.progress.step, self.events, self.console)
        return values

    def maybe_eval(self) -> dict[str, float]:
        """Every eval.every steps and at the end: the eval values; a `best` checkpoint when they improve."""
        if not self.evaluator.due():
            return {}
        values = self.evaluator.evaluate(self.model)
        if self.best.improves(values, self.progress.step):
            self.checkpointer.save(best=True)
        self.metrics.restart_throughput()  # eval time is not training throughput
        return values

    def maybe_checkpoint(self) -> None:
        step = self.progress.step
        if step % self.cfg.checkpoint.every == 0 and step != self.progress.total_steps:
            self.checkpointer.save()

    def _start_system_monitor(self) -> None:
        """Rank 0 samples CPU, memory and its node's GPUs from a thread (trainer/system_metrics.py)."""
        if not self.dist.is_main:
            return
        emit = (lambda values: self.events.emit("system", step=self.progress.step, values=values))
        warn = (lambda message: self.events.log(message, level="warning"))
        self._system = SystemMonitor(emit, self.cfg.train.system_every_s, warn).start()

    def _stop_system_monitor(self) -> None:
        if self._system is not None:
            self._system.stop()
            self._system = None

    # -- the end ------------------------------------------------------------------------------------------

    def _finish(self, stopped: bool) -> str:
        """The final checkpoint (+ WiSE-FT), and the final status event."""
        step = self.progress.step
        if self.checkpointer.saved_step != step:
            self.checkpointer.save(kind="latest" if stopped else "final")
        elif not stopped and self.dist.is_main:  # saved moments ago as `best`: it is also the final one
            self.checkpointer.announce(self.checkpointer.folder.pointer(LATEST), "final")
        if not stopped:
            self._write_wise_ft()
        status = "stopped" if stopped else "finished"
        reason = self.stop.reason if stopped else None
        self.console.say(f"{status} at step {step}/{self.progress.total_steps}" + (f" ({reason})" if reason else ""))
        self.events.status(status, reason=reason, step=step, total_steps=self.progress.total_steps)
        barrier()
        return status

    def _write_wise_ft(self) -> None:
        """checkpoints/wise_ft/: alpha * fine-tuned + (1 - alpha) * initial weights (Wortsman et al., 2022)."""
        alpha = self.cfg.checkpoint.wise_ft_alpha
        if self.initial_weights is None or alpha is None or not self.dist.is_main:
            return
        from trainer.checkpoint import save_model

        model = interpolated_copy(self.model, self.initial_weights, alpha)
        path = self.checkpointer.folder.save_weights("wise_ft", lambda d: save_model(model, d))
        self.checkpointer.announce(path, "wise_ft")
        self.console.say(f"wrote WiSE-FT weights (alpha {alpha}) to {path}")

