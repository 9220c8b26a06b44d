import pytest
import yaml

from contract.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    bundled_config_dir,
    config_errors,
    load_config,
    resume_change_errors,
)


def test_defaults_are_a_valid_cpu_demo_config():
    cfg = load_config()
    assert cfg.data.train == "demo"
    assert cfg.model.preset.startswith("tiny")


def test_yaml_file_and_overrides_are_applied_and_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "optim": {"lr": 0.01}, "train": {"batch_size": 8}}))
    cfg = load_config(path, ["optim.lr=1e-4", "train.steps=7", "loss.kind=siglip", "tags=[a, b]"])
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.train.steps == 7 and cfg.train.batch_size == 8
    assert cfg.loss.kind == "siglip"
    assert cfg.tags == ["a", "b"]


def test_validation_error_names_every_bad_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": -1, "lerning_rate": 3}, "train": {"precision": "fp8"}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text
    for field in ("optim.lr", "optim.lerning_rate", "train.precision"):
        assert field in text


def test_config_errors_lists_fields_for_the_api():
    errors = config_errors({"data": {"train_crop_scale": [0.9, 0.5]}, "eval": {"every": 0}})
    fields = {e["field"] for e in errors}
    assert fields == {"data.train_crop_scale", "eval.every"}
    assert config_errors({}) == []


def test_field_errors_read_as_plain_words_with_the_value_given():
    errors = {e["field"]: e["message"] for e in config_errors({
        "name": "", "optim": {"lr": "abc", "warmup_steps": -1, "lerning_rate": 1}, "train": {"steps": 2.5},
        "modle": {}, "tags": ["x" * 65], "loss": {"kind": "clap"}})}
    assert errors == {
        "name": "must not be empty",
        "optim.lr": "must be a number, got 'abc'",
        "optim.warmup_steps": "must be at least 0, got -1",
        "optim.lerning_rate": "is not a setting (a typo?); optim has: lr, weight_decay, betas, eps, grad_clip, "
                              "warmup_steps, schedule, min_lr",
        "train.steps": "must be a whole number, got 2.5",
        "modle": "is not a setting (a typo?); the top level has: name, tags, output_dir, model, data, loss, optim, "
                 "train, eval, checkpoint",
        "tags.0": "must be at most 64 characters",
        "loss.kind": "must be 'clip' or 'siglip'",
    }
    both = config_errors({"model": {"freeze_image": True, "freeze_text": True}})
    assert both == [{"field": "(top level)", "message": "model.freeze_image and model.freeze_text cannot both be "
                                                        "true: nothing would train"}]


def test_yaml_quirks_read_as_written_numbers_in_text_fields_and_empty_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: 2024\ntags: [1, ablation]\nmodel:\n  # preset: tiny-rn\ntrain:\n  steps: 10\n")
    cfg = load_config(path)
    assert cfg.name == "2024" and cfg.tags == ["1", "ablation"]
    assert cfg.model == RunConfig().model and cfg.train.steps == 10


def test_recall_at_below_one_is_a_field_error():
    # R@0 is always 0 and R@-3 means nothing: they used to be logged as metrics.
    errors = config_errors({"eval": {"recall_at": [1, 0, -3]}})
    assert {e["field"] for e in errors} == {"eval.recall_at.1", "eval.recall_at.2"}


def test_both_towers_frozen_is_rejected():
    with pytest.raises(ConfigError, match="freeze_image"):
        load_config(None, ["model.freeze_image=true", "model.freeze_text=true"])


def test_best_metric_must_be_an_eval_metric_and_best_mode_its_direction():
    # best_metric val/acc with the default best_mode min kept the *worst* eval as `best`, and a typo such as
    # val/R@1 was noticed only at the first eval (a warning, no best checkpoint): both are config errors now.
    with pytest.raises(ConfigError, match=r"checkpoint.best_mode 'min' .* set checkpoint.best_mode to 'max'"):
        load_config(None, ["checkpoint.best_metric=val/acc"])
    with pytest.raises(ConfigError, match=r"checkpoint.best_mode 'max' .* set checkpoint.best_mode to 'min'"):
        load_config(None, ["checkpoint.best_mode=max"])  # val/loss, the default metric
    with pytest.raises(ConfigError, match=r"checkpoint.best_metric 'val/R@1' is not an eval metric; .*val/i2t_R@1"):
        load_config(None, ["checkpoint.best_metric=val/R@1", "checkpoint.best_mode=max"])
    with pytest.raises(ConfigError, match=r"'val/t2i_R@10' is not an eval metric; .*val/t2i_R@2"):
        load_config(None, ["checkpoint.best_metric=val/t2i_R@10", "checkpoint.best_mode=max", "eval.recall_at=[1, 2]"])
    assert config_errors({"checkpoint": {"best_metric": "val/acc"}})  # the API refuses it too
    for metric in ("val/acc", "val/similarity", "val/i2t_R@5", "val/zeroshot_top1"):
        assert load_config(None, [f"checkpoint.best_metric={metric}", "checkpoint.best_mode=max"])
    assert load_config(None, ["checkpoint.best_metric=null", "checkpoint.best_mode=max"])


def test_override_into_scalar_is_an_error():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["novalue"])


def test_a_set_override_of_a_text_field_keeps_the_text_as_written():
    cfg = load_config(None, ["name=2024", "model.pretrained=007", "data.val=null", "train.steps=12"])
    assert (cfg.name, cfg.model.pretrained, cfg.data.val, cfg.train.steps) == ("2024", "007", None, 12)


def test_errors_say_which_bad_values_came_from_set_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: -1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.steps=abc"])
    text = str(err.value)
    assert f"invalid config in {path} with --set overrides" in text
    assert "train.steps (from --set):" in text and "optim.lr:" in text and "optim.lr (from --set)" not in text


def test_an_unknown_preset_is_a_field_error_listing_the_presets():
    errors = config_errors({"model": {"preset": "ViT-Q-99"}})
    assert errors[0]["field"] == "model.preset" and "ViT-Q-99" in errors[0]["message"]
    assert "ViT-B-32" in errors[0]["message"]
    assert load_config(None, ["model.preset=vit-b-32"]).model.preset == "vit-b-32"  # aliases still resolve


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_round_trip_through_yaml_is_lossless():
    cfg = load_config(None, ["optim.betas=[0.8, 0.95]", "name=round"])
    again = RunConfig.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_bundled_configs_all_validate():
    files = sorted(bundled_config_dir().glob("*.yaml"))
    for f in files:
        load_config(f)


def test_a_resume_may_change_the_optimizer_but_not_what_shapes_the_checkpoint():
    saved = RunConfig.model_validate({"model": {"preset": "tiny-vit"}})
    same = RunConfig.model_validate({"model": {"preset": "tiny-vit"}, "optim": {"lr": 1e-5}, "train": {"steps": 9}})
    assert resume_change_errors(saved, same) == []
    changed = RunConfig.model_validate({"model": {"preset": "tiny-rn", "freeze_image": True}, "loss": {"kind": "siglip"}})
    assert [e["field"] for e in resume_change_errors(saved, changed)] == ["model.preset", "model.freeze_image", "loss.kind"]


def test_override_values_take_yaml_but_no_aliases_which_could_expand_a_few_bytes_into_billions():
    from contract.config import parse_override

    assert parse_override("optim.betas=[0.9, 0.98]") == (["optim", "betas"], [0.9, 0.98])
    assert parse_override("x=&anchor [1, 2]") == (["x"], [1, 2])  # an anchor alone is harmless
    with pytest.raises(ConfigError, match=r"aliases \(\*name\) are not allowed"):
        parse_override("x=[&a [1, 1], [*a, *a]]")
