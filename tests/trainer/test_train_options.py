"""Training options: LiT (a frozen tower), WiSE-FT, gradient checkpointing, SigLIP, precision choice."""

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contract.config import ConfigError, RunConfig
from contract.events import read_events
from contract.presets import get_preset
from trainer.checkpoint import save_model
from trainer.distributed import init_distributed
from trainer.events import EventWriter
from trainer.model import build_model
from trainer.training.precision import resolve_precision, resolve_train_device
from trainer.training.stop import StopRequest
from trainer.training.trainer import Trainer

from tests.train_support import make_dataset, one_torch_thread, tiny_config

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def _train(cfg: dict, run_dir) -> Trainer:
    with EventWriter(run_dir) as events:
        trainer = Trainer(RunConfig.model_validate(cfg), run_dir, init_distributed(), events, StopRequest())
        assert trainer.train() == "finished"
        trainer.close()
    return trainer


def test_lit_keeps_the_frozen_tower_fixed_and_wise_ft_interpolates_with_the_pretrained_weights(data, tmp_path):
    torch.manual_seed(1)
    pretrained = save_model(build_model(get_preset("tiny-vit")), tmp_path / "pretrained")
    cfg = tiny_config(data, data={"val": None},
                      model={"pretrained": str(pretrained), "freeze_image": True, "grad_checkpointing": True},
                      train={"batch_size": 8, "steps": 3, "log_every": 1},
                      checkpoint={"every": 100, "wise_ft_alpha": 0.25})
    run_dir = tmp_path / "run"
    trainer = _train(cfg, run_dir)
    assert not any(p.requires_grad for p in trainer.model.visual.parameters())
    initial = load_file(pretrained / "model.safetensors")
    final = load_file(run_dir / "checkpoints" / "step_000003" / "model.safetensors")
    wise = load_file(run_dir / "checkpoints" / "wise_ft" / "model.safetensors")
    changed = {k for k in initial if not torch.equal(initial[k], final[k])}
    assert changed and not any(k.startswith("visual.") for k in changed)
    assert "text_projection" in changed and "logit_scale" in changed
    for k in initial:
        torch.testing.assert_close(wise[k], 0.25 * final[k] + 0.75 * initial[k], rtol=1e-6, atol=1e-7, msg=k)
    kinds = [e["checkpoint_kind"] for e in read_events(run_dir / "events.jsonl") if e["kind"] == "checkpoint"]
    assert kinds == ["final", "wise_ft"]


def test_siglip_with_accumulation_trains_its_logit_bias(data, tmp_path):
    cfg = tiny_config(data, data={"val": None}, loss={"kind": "siglip"},
                      train={"batch_size": 4, "accum_steps": 2, "steps": 2, "log_every": 1})
    run_dir = tmp_path / "run"
    _train(cfg, run_dir)
    weights = load_file(run_dir / "checkpoints" / "step_000002" / "model.safetensors")
    assert "logit_bias" in weights and weights["logit_bias"].item() != -10.0
    metrics = [e["values"] for e in read_events(run_dir / "events.jsonl") if e["kind"] == "metric"]
    assert len(metrics) == 2 and all(m["loss"] is not None and m["loss"] > 0 for m in metrics)


def test_precision_is_fp32_on_cpu_by_default_and_fp16_needs_cuda():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == "fp32"
    assert resolve_precision("auto", cpu).grad_scaler() is None
    assert resolve_precision("bf16", cpu).autocast_dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="train.precision"):
        resolve_precision("fp16", cpu)
    assert resolve_train_device("auto", cpu) == cpu
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device"):
            resolve_train_device("cuda", cpu)


def test_a_global_batch_of_one_pair_is_refused_before_the_run_dir_changes(data, tmp_path):
    # One pair has no negatives: the CLIP loss is 0 and the run would "train" without learning anything.
    cfg = RunConfig.model_validate(tiny_config(data, train={"batch_size": 1, "steps": 2}))
    run_dir = tmp_path / "run"
    with EventWriter(run_dir) as events, pytest.raises(ConfigError, match="train.batch_size.*global batch of 1"):
        Trainer(cfg, run_dir, init_distributed(), events, StopRequest())
    assert not (run_dir / "config.yaml").exists()
    accumulated = tiny_config(data, data={"val": None}, train={"batch_size": 1, "accum_steps": 2, "steps": 1})
    _train(accumulated, tmp_path / "accumulated")  # a micro-batch of 1 is fine when the step sees 2 pairs


def test_captions_longer_than_a_pretrained_models_text_context_are_a_field_error(data, tmp_path):
    # data.context_length (77) tokens reach a model whose positional embedding has 16 rows: without the
    # check the first batch with a longer caption failed the run with a traceback.
    short = dataclasses.replace(get_preset("tiny-vit"), context_length=16)
    pretrained = save_model(build_model(short), tmp_path / "pretrained")
    cfg = RunConfig.model_validate(tiny_config(data, model={"pretrained": str(pretrained)}, train={"steps": 1}))
    run_dir = tmp_path / "run"
    with EventWriter(run_dir) as events, pytest.raises(ConfigError, match=r"^data\.context_length: 77 .* at most 16"):
        Trainer(cfg, run_dir, init_distributed(), events, StopRequest())
    assert not (run_dir / "config.yaml").exists()
    fitting = tiny_config(data, data={"val": None, "context_length": 16}, model={"pretrained": str(pretrained)},
                          train={"steps": 1})
    _train(fitting, tmp_path / "fitting")


def test_a_warmup_as_long_as_the_run_is_trained_with_a_warning(data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    _train(tiny_config(data, data={"val": None}, optim={"warmup_steps": 4}, train={"steps": 3}), run_dir)
    logs = [e["message"] for e in read_events(run_dir / "events.jsonl") if e["kind"] == "log" and e["level"] == "warning"]
    assert logs == ["optim.warmup_steps 4 > the run's 3 steps: the learning rate never reaches optim.lr 0.001"]
    assert logs[0] in capsys.readouterr().out
    quiet = tmp_path / "quiet"
    _train(tiny_config(data, data={"val": None}, optim={"warmup_steps": 3}, train={"steps": 3}), quiet)
    assert not [e for e in read_events(quiet / "events.jsonl") if e["kind"] == "log" and e["level"] == "warning"]


def _with_bad_rows(csv: Path, tmp_path: Path, at: int, prefix: str) -> Path:
    """A copy of `csv` whose rows at..at+1 name a missing file ({prefix}gone.jpg) and a corrupt one
    ({prefix}broken.jpg)."""
    rows = csv.read_text().splitlines()
    broken = tmp_path / f"{prefix}broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a whole jpeg")
    rows[at:at + 2] = [f"{tmp_path / f'{prefix}gone.jpg'},a photo of a red square.,0",
                       f"{broken},a photo of a red square.,0"]
    out = csv.with_name(f"{csv.stem}_with_bad_rows.csv")
    out.write_text("\n".join(rows) + "\n")
    return out


def test_unreadable_training_images_are_reported_as_data_warnings(data, tmp_path, capsys):
    # 48 rows (6 batches of 8, so one epoch sees every row): two good rows replaced by a missing and a corrupt file
    csv = _with_bad_rows(data / "train.csv", tmp_path, at=1, prefix="")
    cfg = tiny_config(data, data={"train": str(csv), "val": None},
                      train={"batch_size": 8, "steps": 6, "log_every": 6})
    run_dir = tmp_path / "run"
    _train(cfg, run_dir)
    warnings = [e for e in read_events(run_dir / "events.jsonl") if e["kind"] == "data_warning"]
    assert len(warnings) == 1 and warnings[0]["step"] == 6
    assert warnings[0]["skipped"] == 2 and warnings[0]["total_skipped"] == 2
    assert {Path(x["path"]).name for x in warnings[0]["examples"]} == {"gone.jpg", "broken.jpg"}
    assert all(x["reason"] for x in warnings[0]["examples"])
    out = capsys.readouterr().out  # and on the terminal, one line per report
    assert "[data] warning: skipped 2 unreadable train image(s) at step 6 (2 in all), e.g. " in out


def test_run_dir_defaults_to_output_dir_name_timestamp_and_resume_reuses_the_runs_config(data, tmp_path):
    from argparse import Namespace

    from trainer.training.launch import resolve_run

    args = Namespace(config=None, overrides=[f"output_dir={tmp_path / 'runs'}", "name=exp"], run_dir=None, resume=None)
    cfg, run_dir, resume = resolve_run(args, init_distributed())
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("exp-") and resume is None

    cfg = tiny_config(data, data={"val": None}, train={"batch_size": 8, "steps": 1, "log_every": 1}, name="mine")
    first = tmp_path / "first"
    _train(cfg, first)
    args = Namespace(config=None, overrides=["train.steps=2"], run_dir=None,
                     resume=str(first / "checkpoints" / "step_000001"))
    cfg2, run_dir, resume = resolve_run(args, init_distributed())
    assert run_dir == first.resolve() and resume.name == "step_000001"
    assert cfg2.name == "mine" and cfg2.train.steps == 2  # the run's own config.yaml, plus the override


def test_a_run_name_with_slashes_stays_one_folder_inside_output_dir(tmp_path):
    from argparse import Namespace

    from trainer.training.launch import resolve_run

    runs = tmp_path / "runs"
    for name in ("lr=1e-3/bs=64", "../escaped"):
        args = Namespace(config=None, overrides=[f"output_dir={runs}", f"name={name}"], run_dir=None, resume=None)
        cfg, run_dir, _ = resolve_run(args, init_distributed())
        assert run_dir.parent == runs and cfg.name == name  # the name itself is kept for the dashboard
    assert run_dir.name.startswith(".._escaped-")


def test_unreadable_val_images_are_reported_as_val_data_warnings_at_each_eval(data, tmp_path, capsys):
    csv = _with_bad_rows(data / "val.csv", tmp_path, at=5, prefix="val_")
    cfg = tiny_config(data, data={"val": str(csv)}, train={"steps": 4, "log_every": 4},
                      eval={"every": 2, "batch_size": 4, "matrix_size": 4})
    run_dir = tmp_path / "run"
    _train(cfg, run_dir)
    events = list(read_events(run_dir / "events.jsonl"))
    val_warnings = [e for e in events if e["kind"] == "data_warning" and e.get("split") == "val"]
    assert [e["step"] for e in val_warnings] == [e["step"] for e in events if e["kind"] == "eval"] == [2, 4]
    for warning in val_warnings:
        assert warning["skipped"] == 2
        assert {Path(x["path"]).name for x in warning["examples"]} == {"val_gone.jpg", "val_broken.jpg"}
    assert capsys.readouterr().out.count("[data] warning: skipped 2 unreadable val image(s)") == 2


def test_pretrained_weights_of_another_architecture_than_the_preset_are_flagged(data, tmp_path):
    pretrained = save_model(build_model(get_preset("tiny-vit")), tmp_path / "pretrained")
    cfg = tiny_config(data, data={"val": None}, model={"preset": "tiny-rn", "pretrained": str(pretrained)})
    with EventWriter(tmp_path / "run") as events:
        trainer = Trainer(RunConfig.model_validate(cfg), tmp_path / "run", init_distributed(), events, StopRequest())
        trainer.close()
    assert trainer.model.args == get_preset("tiny-vit")  # the weights decide
    warnings = [e["message"] for e in read_events(tmp_path / "run" / "events.jsonl")
                if e["kind"] == "log" and e["level"] == "warning"]
    assert any("model.pretrained holds tiny-vit" in m and "not model.preset tiny-rn" in m for m in warnings), warnings


def test_a_resume_that_changes_the_model_is_refused_before_anything_is_loaded(tmp_path):
    from argparse import Namespace

    import yaml

    from trainer.training.launch import resolve_run

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_000004").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_000004" / "train_state.pt").write_bytes(b"")
    (run_dir / "checkpoints" / "latest").write_text("step_000004")
    saved = RunConfig.model_validate({"model": {"preset": "tiny-vit"}, "output_dir": str(tmp_path)})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved.to_dict()))

    def resume(*overrides: str):
        args = Namespace(config=None, overrides=list(overrides), run_dir=str(run_dir), resume="latest")
        return resolve_run(args, init_distributed())

    with pytest.raises(ConfigError, match="model.preset: a resume keeps the run's 'tiny-vit'"):
        resume("model.preset=tiny-rn")
    with pytest.raises(ConfigError, match="model.freeze_text"):
        resume("model.freeze_text=true")
    cfg, _, resume_from = resume("optim.lr=1e-4", "train.steps=20")  # the optimizer and the length may change
    assert cfg.optim.lr == 1e-4 and resume_from == run_dir / "checkpoints" / "step_000004"


def test_resuming_another_runs_checkpoint_in_a_new_run_dir_takes_that_runs_config(tmp_path):
    # `--run-dir NEW --resume OLD/checkpoints/step_N` without CONFIG used the schema's defaults (another model
    # setup: here a traceback from the optimizer state of a frozen tower), and the resume check read NEW's
    # config.yaml, which does not exist, so a change of what shapes the checkpoint went unnoticed.
    from argparse import Namespace

    import yaml

    from trainer.training.launch import resolve_run

    old = tmp_path / "old"
    (old / "checkpoints" / "step_000004").mkdir(parents=True)
    (old / "checkpoints" / "step_000004" / "train_state.pt").write_bytes(b"")
    saved = RunConfig.model_validate({"name": "old", "model": {"freeze_text": True}, "train": {"batch_size": 8}})
    (old / "config.yaml").write_text(yaml.safe_dump(saved.to_dict()))

    def branch(config=None, *overrides: str):
        args = Namespace(config=config, overrides=list(overrides), run_dir=str(tmp_path / "new"),
                         resume=str(old / "checkpoints" / "step_000004"))
        return resolve_run(args, init_distributed())

    cfg, run_dir, resume_from = branch(None, "train.steps=20")
    assert run_dir == tmp_path / "new" and resume_from.name == "step_000004"
    assert cfg.name == "old" and cfg.model.freeze_text and cfg.train.batch_size == 8 and cfg.train.steps == 20
    with pytest.raises(ConfigError, match="model.freeze_text: a resume keeps the run's True"):
        branch("cpu-demo")  # a config of another setup is checked against the checkpoint's run


def test_an_output_dir_that_cannot_hold_a_run_folder_is_a_config_error(tmp_path):
    from argparse import Namespace

    from trainer.training.launch import claim_run_dir, resolve_run

    (tmp_path / "a-file").write_text("not a folder")
    args = Namespace(config=None, overrides=[f"output_dir={tmp_path / 'a-file'}"], run_dir=None, resume=None)
    with pytest.raises(ConfigError, match="output_dir: cannot make a run folder in"):
        resolve_run(args, init_distributed())
    claimed = [claim_run_dir(tmp_path / "runs", "same") for _ in range(3)]  # one second, one name: three folders
    assert len(set(claimed)) == 3 and all(p.is_dir() and p.parent == tmp_path / "runs" for p in claimed)


def test_a_fine_tune_resumes_after_its_pretrained_weights_are_gone_unless_wise_ft_needs_them(data, tmp_path):
    import shutil

    from trainer.training.checkpoint_folder import resolve_resume

    pretrained = save_model(build_model(get_preset("tiny-vit")), tmp_path / "scratch" / "pretrained")
    cfg = tiny_config(data, data={"val": None}, model={"pretrained": str(pretrained)},
                      train={"batch_size": 8, "steps": 2, "log_every": 1}, checkpoint={"every": 2})
    run_dir = tmp_path / "run"
    first = _train(cfg, run_dir)
    shutil.rmtree(tmp_path / "scratch")  # a cleaned scratch disk
    step_dir = resolve_resume("latest", run_dir)
    cfg["train"]["steps"] = 4
    with EventWriter(run_dir) as events:
        resumed = Trainer(RunConfig.model_validate(cfg), run_dir, init_distributed(), events, StopRequest(),
                          resume_from=step_dir)
        built = {k: v.clone() for k, v in resumed.model.state_dict().items()}
        assert resumed.train() == "finished" and resumed.step == 4
        resumed.close()
    for k, v in first.model.state_dict().items():
        torch.testing.assert_close(built[k], v.cpu(), msg=k)  # training went on from the step's weights
    cfg["checkpoint"]["wise_ft_alpha"] = 0.5
    with EventWriter(tmp_path / "other") as events, pytest.raises(ConfigError, match="WiSE-FT interpolates"):
        Trainer(RunConfig.model_validate(cfg), tmp_path / "other", init_distributed(), events, StopRequest(),
                resume_from=step_dir)
