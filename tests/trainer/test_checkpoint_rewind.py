"""A resume from a step older than the run's newest checkpoints (a rewind): the pointers move back to the branch
the run continues, and the abandoned step directories go at its first save. Bookkeeping only, no model."""

from trainer.training.checkpoint_folder import CheckpointFolder, load_train_state


def _weights(d):
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"w")


def _saved(tmp_path, steps, keep_last, best_at):
    ckpt = CheckpointFolder(tmp_path, keep_last=keep_last)
    for step in steps:
        ckpt.save(step, _weights, {"step": step, "branch": "old"}, best=step in best_at)
    return ckpt


def names(ckpt):
    return [p.name for p in ckpt.step_dirs()]


def test_a_rewind_points_latest_at_the_resumed_step_and_its_first_save_prunes_the_abandoned_steps(tmp_path):
    ckpt = _saved(tmp_path, (2, 4, 6, 8, 10), keep_last=2, best_at={4})
    assert names(ckpt) == ["step_000004", "step_000008", "step_000010"]
    abandoned = ckpt.rewind(ckpt.dir / "step_000008", best_step=4)
    assert abandoned == ["step_000010"]
    assert ckpt.pointer("latest").name == "step_000008" and ckpt.pointer("best").name == "step_000004"
    assert names(ckpt) == ["step_000004", "step_000008", "step_000010"]  # kept until the run saves
    ckpt.save(9, _weights, {"step": 9, "branch": "new"})
    # Without the rewind rule, keep_last=2 counted the abandoned step 10 among the newest and removed step 8.
    assert names(ckpt) == ["step_000004", "step_000008", "step_000009"]
    assert ckpt.pointer("latest").name == "step_000009"


def test_re_saving_an_abandoned_step_replaces_it_and_latest_names_the_new_one(tmp_path):
    ckpt = _saved(tmp_path, (2, 4, 6), keep_last=5, best_at=set())
    ckpt.rewind(ckpt.dir / "step_000002", best_step=None)
    ckpt.save(4, _weights, {"step": 4, "branch": "new"})
    assert names(ckpt) == ["step_000002", "step_000004"]  # step 6 of the abandoned branch is gone
    assert load_train_state(ckpt.pointer("latest"))["branch"] == "new"


def test_a_best_on_the_abandoned_branch_moves_to_the_best_before_the_rewind_or_goes(tmp_path):
    ckpt = _saved(tmp_path, (2, 4, 6, 8), keep_last=5, best_at={2, 8})
    ckpt.rewind(ckpt.dir / "step_000006", best_step=2)  # the resumed tracker's best: step 2
    assert ckpt.pointer("best").name == "step_000002"

    other = _saved(tmp_path / "other", (2, 4, 6, 8), keep_last=1, best_at={8})  # steps 2..6 pruned long ago
    (other.dir / "step_000004").mkdir()
    (other.dir / "step_000004" / "train_state.pt").write_bytes(b"")  # stand-in for a complete step
    other.rewind(other.dir / "step_000004", best_step=2)
    assert not (other.dir / "best").exists()  # none on this branch until an eval improves
    other.save(5, _weights, {"step": 5}, best=True)
    assert other.pointer("best").name == "step_000005" and names(other) == ["step_000005"]


def test_a_resume_from_latest_or_from_another_runs_checkpoint_changes_nothing(tmp_path):
    ckpt = _saved(tmp_path / "a", (2, 4), keep_last=5, best_at={4})
    assert ckpt.rewind(ckpt.dir / "step_000004", best_step=4) == []
    other = _saved(tmp_path / "b", (2,), keep_last=5, best_at=set())
    assert ckpt.rewind(other.dir / "step_000002", best_step=None) == []
    assert ckpt.pointer("latest").name == "step_000004" and ckpt.pointer("best").name == "step_000004"
    assert names(ckpt) == ["step_000002", "step_000004"]
