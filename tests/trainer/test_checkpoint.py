"""Checkpoint reading/writing: OpenAI fp16 dicts and TorchScript archives, open_clip files, our format, errors."""

import dataclasses
import json
import logging
import shutil

import pytest
import torch
from torch import nn

import trainer
from contract.presets import OPEN_CLIP_NAMES, PRESETS, ModelArgs
from trainer.checkpoint import (
    ARGS_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    export_open_clip,
    load_model,
    load_weights,
    open_clip_model_config,
    read_checkpoint,
    save_model,
)
from trainer.model import build_model

from tests.tiny_models import SMALL_RN, SMALL_VIT


def perturbed(args: ModelArgs, seed: int = 0) -> nn.Module:
    """A model whose every float tensor is random (the init leaves zeros/ones, e.g. BN and LN)."""
    torch.manual_seed(seed)
    model = build_model(args).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and (t.dim() < 2 or "bn" in name or "downsample.1" in name):
                noise = 0.1 * torch.randn(t.shape)
                t.copy_(1 + noise if name.endswith(("weight", "var")) else noise)
    return model


def inputs(args: ModelArgs, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    images = torch.randn(n, 3, args.image_resolution, args.image_resolution, generator=g)
    tokens = torch.zeros(n, args.context_length, dtype=torch.long)
    for i in range(n):
        length = 2 + 3 * i
        tokens[i, :length] = torch.randint(1, args.vocab_size - 1, (length,), generator=g)
        tokens[i, length] = args.vocab_size - 1
    return images, tokens


def features(model: nn.Module, args: ModelArgs) -> tuple[torch.Tensor, torch.Tensor]:
    images, tokens = inputs(args)
    with torch.no_grad():
        return model.encode_image(images).float(), model.encode_text(tokens).float()


def assert_same_features(a: nn.Module, b: nn.Module, args: ModelArgs, atol: float = 1e-5) -> None:
    for x, y in zip(features(a, args), features(b, args)):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


def openai_fp16_state_dict(model: nn.Module, args: ModelArgs) -> dict:
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    sd.update(input_resolution=torch.tensor(args.image_resolution), context_length=torch.tensor(args.context_length),
              vocab_size=torch.tensor(args.vocab_size))
    return sd


@pytest.mark.parametrize("args", [SMALL_VIT, SMALL_RN], ids=["vit", "resnet"])
def test_openai_fp16_state_dict_loads_and_exports_to_open_clip_with_the_same_features(tmp_path, args):
    import open_clip

    source = perturbed(args)
    torch.save(openai_fp16_state_dict(source, args), tmp_path / "openai.pt")
    model, _ = trainer.load(tmp_path / "openai.pt")
    assert model.args == args and model.logit_scale.dtype == torch.float32 and not model.training
    reference = build_model(args).eval()  # what the fp16 weights are, computed in fp32
    with torch.no_grad():
        for (k, v), half in zip(reference.state_dict().items(), openai_fp16_state_dict(source, args).values()):
            v.copy_(half)
    assert_same_features(model, reference, args)

    export = export_open_clip(model, tmp_path / "exported")
    assert export.weights.name == "open_clip_model.safetensors" and export.model_name is None
    theirs = open_clip.create_model(f"local-dir:{export.directory}").eval()
    assert_same_features(model, theirs, args)


def test_open_clip_state_dict_with_logit_bias_loads_with_the_same_features(tmp_path):
    from open_clip.model import CLIP as OpenClipCLIP
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(3)
    theirs = OpenClipCLIP(48, CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=32),
                          CLIPTextCfg(context_length=20, vocab_size=500, width=64, heads=1, layers=2),
                          quick_gelu=True, init_logit_bias=-10.0).eval()
    with torch.no_grad():
        theirs.logit_bias.fill_(-4.25)
    for name in ("epoch_3.pt", "model.safetensors"):
        path = tmp_path / name
        if name.endswith(".pt"):  # open_clip's training checkpoints wrap the weights under DDP's prefix
            wrapped = {f"module.{k}": v for k, v in theirs.state_dict().items()}
            torch.save({"epoch": 3, "name": "x", "state_dict": wrapped}, path)
        else:
            from safetensors.torch import save_file

            save_file(theirs.state_dict(), str(path))
        ours = load_model(path)
        assert ours.args == dataclasses.replace(SMALL_VIT, init_logit_bias=-4.25)
        assert ours.logit_bias.item() == -4.25
        assert_same_features(ours, theirs, SMALL_VIT)


def test_open_clip_gelu_weights_load_faithfully_when_told(tmp_path):
    from open_clip.model import CLIP as OpenClipCLIP
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(4)
    theirs = OpenClipCLIP(48, CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=32),
                          CLIPTextCfg(context_length=20, vocab_size=500, width=64, heads=1, layers=2)).eval()
    torch.save(theirs.state_dict(), tmp_path / "laion.pt")
    assert_same_features(load_model(tmp_path / "laion.pt", quick_gelu=False), theirs, SMALL_VIT)
    with pytest.raises(AssertionError):  # the shapes alone cannot tell; OpenAI's QuickGELU is the default
        assert_same_features(load_model(tmp_path / "laion.pt"), theirs, SMALL_VIT)


def test_open_clip_weights_beside_their_config_load_with_the_activation_it_names(tmp_path):
    # The Hugging Face hub's open_clip layout (and export_open_clip's) puts open_clip_config.json beside the
    # weights: it says which activation the model uses, so a GELU model (LAION's, or our own export of one)
    # must not be loaded with QuickGELU, which gave silently different features.
    import open_clip

    gelu = perturbed(dataclasses.replace(SMALL_VIT, quick_gelu=False), seed=5).eval()
    folder = tmp_path / "hub"
    export = export_open_clip(gelu, folder)
    theirs = open_clip.create_model(f"local-dir:{folder}").eval()
    for path in (folder, export.weights):
        ours, _ = trainer.load(path)
        assert ours.args.quick_gelu is False
        assert_same_features(ours, theirs, SMALL_VIT)
    # open_clip builds GELU when its config has no quick_gelu key (LAION's configs leave it out)
    config = json.loads(export.config.read_text())
    del config["model_cfg"]["quick_gelu"]
    export.config.write_text(json.dumps(config))
    assert trainer.load(folder)[0].args.quick_gelu is False
    quick = perturbed(SMALL_VIT, seed=6).eval()  # QuickGELU, as OpenAI's
    export_open_clip(quick, tmp_path / "openai")
    assert_same_features(trainer.load(tmp_path / "openai")[0], quick, SMALL_VIT)
    assert load_model(folder, quick_gelu=True).args.quick_gelu is True  # an explicit choice still wins


def test_open_clip_export_config_matches_open_clips_own_for_openai_presets():
    from open_clip.factory import get_model_config

    for preset, name in OPEN_CLIP_NAMES.items():
        theirs = get_model_config(name)
        ours = open_clip_model_config(PRESETS[preset])
        assert ours["embed_dim"] == theirs["embed_dim"] and ours["quick_gelu"] is theirs["quick_gelu"] is True
        assert ours["text_cfg"] == theirs["text_cfg"]
        assert ours["vision_cfg"] == {"head_width": 64, **theirs["vision_cfg"]}, preset


def test_export_to_a_file_path_writes_its_config_beside_it(tmp_path):
    import open_clip

    model = perturbed(SMALL_RN)
    export = export_open_clip(model, tmp_path / "out" / "weights.bin")
    assert export.weights == tmp_path / "out" / "weights.bin" and export.config.parent == export.weights.parent
    config = json.loads(export.config.read_text())
    assert config["model_cfg"]["vision_cfg"]["layers"] == [1, 1, 1, 1]
    assert config["preprocess_cfg"]["size"] == 32
    assert_same_features(model, open_clip.create_model(f"local-dir:{export.directory}").eval(), SMALL_RN)


class OpenAIArchive(nn.Module):
    """A module laid out like OpenAI's released TorchScript models: CLIP's children at the top + 3 scalars."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, param in clip.named_parameters(recurse=False):
            self.register_parameter(name, param)
        args = clip.args
        self.register_buffer("input_resolution", torch.tensor(args.image_resolution))
        self.register_buffer("context_length", torch.tensor(args.context_length))
        self.register_buffer("vocab_size", torch.tensor(args.vocab_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_archive_loads_through_trainer_load(tmp_path):
    source = perturbed(SMALL_VIT)
    traced = torch.jit.trace(OpenAIArchive(source), inputs(SMALL_VIT)[0])
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(traced, str(path))
    assert read_checkpoint(path).format == "openai-jit"
    model, preprocess = trainer.load(str(path))
    assert model.args == SMALL_VIT
    assert_same_features(model, source, SMALL_VIT, atol=1e-6)


def test_our_format_round_trips_weights_and_architecture(tmp_path):
    # 4 text heads on width 64 cannot be inferred from shapes: it must come from the recorded ModelArgs.
    args = dataclasses.replace(SMALL_RN, transformer_heads=4)
    source = perturbed(args)
    directory = save_model(source, tmp_path / "ckpt")
    assert sorted(p.name for p in directory.iterdir()) == [ARGS_FILE, WEIGHTS_FILE]  # no temporary files left
    meta = json.loads((directory / ARGS_FILE).read_text())
    assert meta["format"] == "cliplab.model" and meta["format_version"] == 1
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((directory / WEIGHTS_FILE).read_bytes())
    for path in (directory, directory / WEIGHTS_FILE, directory / ARGS_FILE, lone):
        model = load_model(path)
        assert model.args == args, path
        for key, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), (path, key)
        assert_same_features(model, source, args, atol=0)


def test_a_run_directory_loads_its_latest_checkpoint(tmp_path):
    model = perturbed(SMALL_VIT)
    save_model(model, tmp_path / "run" / "checkpoints" / "step_000010")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_000010\n")
    assert_same_features(load_model(tmp_path / "run"), model, SMALL_VIT, atol=0)


def test_a_runs_latest_and_best_pointer_files_load_the_step_they_name(tmp_path):
    from trainer.training.checkpoint_folder import CheckpointFolder

    best, newer = perturbed(SMALL_VIT, seed=1), perturbed(SMALL_VIT, seed=2)
    checkpointer = CheckpointFolder(tmp_path / "run")
    checkpointer.save(10, lambda d: save_model(best, d), {"step": 10}, best=True)
    checkpointer.save(20, lambda d: save_model(newer, d), {"step": 20})
    pointers = tmp_path / "run" / "checkpoints"
    assert read_checkpoint(pointers / "latest").path.parent.name == "step_000020"
    assert_same_features(load_model(pointers / "best"), best, SMALL_VIT, atol=0)
    model, _ = trainer.load(pointers / "latest")
    assert_same_features(model, newer, SMALL_VIT, atol=0)


def test_a_pointer_to_a_step_that_is_gone_names_it(tmp_path):
    (tmp_path / "latest").write_text("step_000099\n")
    with pytest.raises(CheckpointError, match="points to the step directory step_000099, which is not in"):
        trainer.load(tmp_path / "latest")


def _zip_without_torch_data(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images/a.txt", "not weights")


def _jpeg(path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(path)


@pytest.mark.parametrize("name, write", [
    ("val.csv", lambda p: p.write_text("filepath,caption,label\nimg000.jpg,a photo of a dog.,0\n")),
    ("passwd", lambda p: p.write_text("root:x:0:0:root:/root:/bin/bash\n")),
    ("notes.txt", lambda p: p.write_text("hello\n")),
    ("latest", lambda p: p.write_text("not a step name\n")),
    ("photo.jpg", _jpeg),
    ("images.zip", _zip_without_torch_data),
])
def test_a_file_that_is_no_checkpoint_is_called_so_with_what_is_accepted(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    with pytest.raises(CheckpointError) as err:
        trainer.load(path)
    message = str(err.value)
    assert f"{path} is not a checkpoint" in message
    assert "checkpoints/latest|best" in message and ".safetensors" in message and "torch.save" in message
    assert "Error" not in message  # no internal exception (IndexError, KeyError, UnpicklingError) leaks


def test_legacy_pickle_torch_save_still_loads(tmp_path):
    model = perturbed(SMALL_VIT)
    torch.save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert_same_features(load_model(tmp_path / "legacy.pt"), model, SMALL_VIT, atol=0)


def test_a_logit_bias_added_after_construction_is_recorded(tmp_path):
    model = perturbed(SMALL_VIT)
    model.logit_bias = nn.Parameter(torch.tensor(-10.0))  # what the trainer does for SigLIP
    loaded = load_model(save_model(model, tmp_path / "siglip"))
    assert loaded.args.init_logit_bias == -10.0 and loaded.logit_bias.item() == -10.0


def test_prefixed_and_wrapped_state_dicts_load(tmp_path):
    source = perturbed(SMALL_VIT)
    sd = source.state_dict()
    variants = {
        "ddp.pt": {f"module.{k}": v for k, v in sd.items()},
        "wrapped.pt": {"state_dict": sd, "epoch": 1},
        "model.pt": {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        assert_same_features(load_model(tmp_path / name), source, SMALL_VIT, atol=0)


def test_unknown_layout_error_lists_what_is_missing(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "other.pt")
    message = str(err.value)
    assert "unknown checkpoint layout" in message
    for needed in ("text_projection", "token_embedding.weight", "visual.proj", "visual.attnpool", "encoder.weight"):
        assert needed in message


@pytest.mark.parametrize("kind", ["torch", "safetensors", "empty"])
def test_truncated_or_empty_file_error_names_the_file(tmp_path, kind):
    model = perturbed(SMALL_VIT)
    if kind == "torch":
        torch.save(model.state_dict(), tmp_path / "full.pt")
        data = (tmp_path / "full.pt").read_bytes()
        bad = tmp_path / "cut.pt"
    else:
        save_model(model, tmp_path / "full")
        data = (tmp_path / "full" / WEIGHTS_FILE).read_bytes()
        bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"" if kind == "empty" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(bad)) as err:
        trainer.load(bad)
    assert ("the file is empty" if kind == "empty" else "truncated or corrupt") in str(err.value)
    assert "not a checkpoint" not in str(err.value)


def test_mis_shaped_unexpected_and_missing_keys_are_named_and_strict_false_reports_them():
    model = perturbed(SMALL_VIT)
    sd = dict(perturbed(SMALL_VIT, seed=1).state_dict())
    sd["visual.proj"] = torch.zeros(64, 7)
    sd["extra.head.weight"] = torch.zeros(2)
    del sd["ln_final.bias"]
    with pytest.raises(CheckpointError) as err:
        load_weights(model, sd)
    message = str(err.value)
    for part in ("1 missing keys [ln_final.bias]", "1 unexpected keys [extra.head.weight]",
                 "visual.proj: checkpoint (64, 7) vs model (64, 48)", "strict=False"):
        assert part in message
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_weights(model, sd, strict=False)
    assert not report.ok
    assert report.missing == ["ln_final.bias"] and report.unexpected == ["extra.head.weight"]
    assert report.mismatched == [("visual.proj", (64, 7), (64, 48))]
    assert len(report.loaded) == len(before) - 2
    after = model.state_dict()
    for untouched in ("visual.proj", "ln_final.bias"):
        assert torch.equal(after[untouched], before[untouched])
    assert torch.equal(after["text_projection"], sd["text_projection"])


def test_non_tensor_entries_and_unknown_names_are_rejected(tmp_path):
    torch.save({"visual.proj": torch.zeros(2), "note": "hello"}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"not tensors \[note\]"):
        read_checkpoint(tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="neither an existing checkpoint path nor a model preset.*tiny-vit"):
        trainer.load("ViT-H-14-not-here")
    with pytest.raises(CheckpointError, match="holds no weights"):
        read_checkpoint(tmp_path)


def test_preset_without_local_weights_is_random_and_says_so(tmp_path, monkeypatch, caplog):
    from PIL import Image

    monkeypatch.setenv("CLIPLAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        model, preprocess = trainer.load("tiny-vit")
    assert "no local weights for preset tiny-vit" in caplog.text and "randomly initialised" in caplog.text
    assert model.args == PRESETS["tiny-vit"] and not model.training
    pixels = preprocess(Image.new("RGB", (100, 80), (200, 30, 30)))
    assert pixels.shape == (3, 64, 64)


def test_preset_with_local_weights_loads_them(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CLIPLAB_DATA_DIR", str(tmp_path))
    source = perturbed(PRESETS["tiny-rn"])
    save_model(source, tmp_path / "models" / "tiny-rn")
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        model, _ = trainer.load("tiny-rn")
    assert "randomly" not in caplog.text
    assert_same_features(model, source, PRESETS["tiny-rn"], atol=0)


def test_a_state_dict_saved_through_compile_around_ddp_loads(tmp_path):
    # torch.compile applied after DDP (as the trainer does) saves keys as `_orig_mod.module.<name>`
    source = perturbed(SMALL_VIT)
    torch.save({f"_orig_mod.module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "compiled.pt")
    assert_same_features(load_model(tmp_path / "compiled.pt"), source, SMALL_VIT, atol=0)


class RunsCode:
    """A pickled object whose unpickling would run a command: the attack weights_only exists for."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickle_with_code_is_refused_as_such_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": perturbed(SMALL_VIT).state_dict(), "hook": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as err:
        trainer.load(tmp_path / "evil.pt")
    message = str(err.value)
    assert f"{tmp_path / 'evil.pt'} holds Python objects other than tensors (posix.system)" in message
    assert "truncated or corrupt" not in message and "weights_only` set to `False`" not in message
    assert not marker.exists()


def test_a_run_whose_latest_step_is_gone_names_the_pointer_and_what_remains(tmp_path):
    from trainer.training.checkpoint_folder import CheckpointFolder

    folder = CheckpointFolder(tmp_path / "run")
    for step in (10, 20):
        folder.save(step, lambda d: save_model(perturbed(SMALL_VIT), d), {"step": step})
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_000020")
    with pytest.raises(CheckpointError) as err:
        trainer.load(tmp_path / "run")
    message = str(err.value)
    assert "latest points to the step directory step_000020" in message and "it holds step_000010" in message
