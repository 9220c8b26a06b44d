"""What a run's checkpoint holds, from which component, and how the run continues from one.

A checkpoint is the model's weights (model.safetensors + model.json), train_state.pt and their SHA256SUMS.
train_state.pt is one dict with a key per component's state_dict(), defined once (`Checkpointer.components`
for rank 0's state, `per_rank` for what every rank has its own of) and used both to save and to load:

    step            TrainProgress        optimizer       the AdamW state     scheduler    the LR schedule
    scaler          fp16's GradScaler    best            BestTracker         log_window   MetricsProcessor's window
    total_skipped   SkippedImages        rng [per rank]  RNG states          loader [per rank] data position
    world_size, data_order: what the checkpoint was written with, compared when resuming
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from trainer.distributed import DistInfo, barrier, gather_objects
from trainer.events import EventWriter
from trainer.training.checkpoint_folder import CheckpointFolder, load_train_state, verify_for_resume
from trainer.training.progress import Console, TrainProgress


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class StateEntry:
    """A checkpoint component made of a save and a load function, for state that is not an object's own
    state_dict (an optimizer loaded with its kernel kept, a GradScaler that may be absent)."""

    def __init__(self, save: Callable[[], Any], load: Callable[[Any], None]):
        self.save, self.load = save, load

    def state_dict(self) -> Any:
        return self.save()

    def load_state_dict(self, state: Any) -> None:
        self.load(state)


class Checkpointer:
    """Saves the model and the components into checkpoints/step_<N>/ and restores them from one.

    Both are collective: every rank contributes its `per_rank` state; rank 0 writes."""

    def __init__(self, folder: CheckpointFolder, dist: DistInfo, progress: TrainProgress,
                 components: dict[str, Stateful], per_rank: dict[str, Stateful], data_order: dict[str, Any],
                 model: torch.nn.Module, events: EventWriter, console: Console):
        self.folder, self.dist, self.progress, self.model = folder, dist, progress, model
        self.components = {"step": progress, **components}
        self.per_rank, self.data_order = per_rank, data_order
        self.events, self.console = events, console
        self.saved_step = -1

    def save(self, best: bool = False, kind: str | None = None) -> Path | None:
        """Write step_<N>/ for the current step (and point `best` at it when `best`); emits a `checkpoint`
        event whose checkpoint_kind is `kind` (default latest, or best). Returns the directory on rank 0."""
        from trainer.checkpoint import save_model

        state = self.state_dict()  # collective: gathers every rank's part
        path = None
        if self.dist.is_main:
            path = self.folder.save(self.progress.step, lambda d: save_model(self.model, d), state, best=best)
            self.announce(path, kind or ("best" if best else "latest"))
        self.saved_step = self.progress.step
        barrier()
        return path

    def announce(self, path: Path, kind: str) -> None:
        """The `checkpoint` event for a directory under the run dir (`kind` travels as checkpoint_kind)."""
        rel = str(path.relative_to(self.folder.dir.parent))
        self.events.emit("checkpoint", step=self.progress.step, path=rel, checkpoint_kind=kind)

    def state_dict(self) -> dict[str, Any]:
        """train_state.pt's dict on rank 0, {} on the other ranks (collective: every rank sends its part)."""
        gathered = gather_objects({key: part.state_dict() for key, part in self.per_rank.items()})
        if not self.dist.is_main:
            return {}
        state = {key: part.state_dict() for key, part in self.components.items()}
        state.update({key: [g[key] for g in gathered] for key in self.per_rank})
        state.update(world_size=self.dist.world_size, data_order=self.data_order)
        return state

    def load(self, step_dir: Path) -> None:
        """Restore the weights and every component from `step_dir` (the inverse of `save`), once its files
        match its SHA256SUMS (CheckpointError naming the damaged file and what to resume from instead)."""
        from trainer.checkpoint import load_weights, read_checkpoint

        verify_for_resume(step_dir)  # every file it lists, once: the reads below skip their own check
        weights = read_checkpoint(step_dir, verify=False)
        load_weights(self.model, weights.state_dict, strict=True, source_name=str(weights.path))
        self.load_state_dict(load_train_state(step_dir, verify=False))
        self.saved_step = self.progress.step

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Every component from train_state.pt's dict; warns where the resume cannot be step-exact."""
        for key, part in self.components.items():
            part.load_state_dict(state.get(key))  # a key older checkpoints lack restores as None
        same_world = state.get("world_size") == self.dist.world_size
        for key, part in self.per_rank.items():
            part.load_state_dict(state[key][self.dist.rank if same_world else 0])
        if not same_world:
            self.console.say(f"resuming with world size {self.dist.world_size} from a checkpoint written with "
                             f"{state.get('world_size')}: the data order and RNG streams are not step-exact",
                             level="warning")
        saved_order = state.get("data_order") or {}
        changed = [f"{key} {saved_order[key]!r} -> {value!r}" for key, value in self.data_order.items()
                   if key in saved_order and saved_order[key] != value]
        if changed:
            self.console.say(f"resuming with {', '.join(changed)}: the data order is not step-exact",
                             level="warning")


def data_order(cfg) -> dict[str, Any]:
    """The settings a step-exact resume needs unchanged (saved with each checkpoint, compared on resume)."""
    return {"data.train": cfg.data.train, "data.num_workers": cfg.data.num_workers,
            "data.distinct_captions": cfg.data.distinct_captions, "train.batch_size": cfg.train.batch_size,
            "train.accum_steps": cfg.train.accum_steps, "train.seed": cfg.train.seed}
