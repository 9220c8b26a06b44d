"""`cliplab embed` on generated images and a saved tiny checkpoint (once as a real subprocess)."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

import trainer
from contract.presets import PRESETS
from trainer.checkpoint import load_model, save_model
from trainer.commands import main
from trainer.commands.embed import format_table
from trainer.model import build_model
from trainer.transforms import eval_transform

TEXTS = ["a red square", "a blue circle on a white background, drawn by hand", "noise"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved tiny-vit checkpoint (with a non-default logit scale) and three small images."""
    root = tmp_path_factory.mktemp("embed")
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny-vit"])
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    ckpt = save_model(model, root / "ckpt")
    images = []
    for i, color in enumerate([(220, 20, 20), (20, 40, 230), (128, 128, 128)]):
        path = root / f"img{i}.png"
        im = Image.new("RGB", (90 + 10 * i, 70), color)
        im.paste((255, 255, 255), (10, 10, 40, 40))
        im.save(path)
        images.append(str(path))
    return ckpt, images


@pytest.fixture(scope="module")
def expected(files) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and softmax tables computed in this process, from the same checkpoint and images."""
    ckpt, images = files
    model = load_model(ckpt)
    preprocess = eval_transform(model.image_resolution)
    pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images])
    tokens = trainer.tokenize(TEXTS, context_length=model.context_length)
    with torch.no_grad():
        _, _, scale = model(pixels[:1], tokens[:1])
        img = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    cosine = img @ txt.T
    return cosine, (scale * cosine).softmax(dim=-1)


def parse_table(block: str, n_rows: int) -> torch.Tensor:
    rows = block.strip().splitlines()[2:]
    assert len(rows) == n_rows, block
    return torch.tensor([[float(v) for v in row.split()[-len(TEXTS):]] for row in rows])


def embed_argv(ckpt, images, texts=TEXTS) -> list[str]:
    argv = ["embed", "--checkpoint", str(ckpt)]
    for p in images:
        argv += ["--image", p]
    for t in texts:
        argv += ["--text", t]
    return argv


@pytest.mark.slow  # a cliplab subprocess
def test_embed_subprocess_prints_the_similarity_tables_computed_in_process(files, expected):
    ckpt, images = files
    result = subprocess.run([sys.executable, "-m", "trainer", *embed_argv(ckpt, images)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    cosine_block, probs_block = result.stdout.split("\n\n")
    assert cosine_block.startswith("cosine similarity")
    assert probs_block.startswith(f"probabilities (softmax over texts of {torch.tensor(3.0).exp():.2f} * cosine)")
    assert "a blue circle on a whit…" in cosine_block  # long texts are cut in the header
    cosine, probs = expected
    torch.testing.assert_close(parse_table(cosine_block, 3), cosine, atol=1e-4, rtol=0)
    torch.testing.assert_close(parse_table(probs_block, 3), probs, atol=1e-4, rtol=0)
    assert not torch.allclose(probs, torch.full_like(probs, 1 / 3), atol=1e-3)  # the table is not trivial


def test_embed_json_output_has_the_same_values(files, expected, capsys):
    ckpt, images = files
    assert main([*embed_argv(ckpt, images), "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    cosine, probs = expected
    assert as_json["texts"] == TEXTS and as_json["probs_kind"] == "softmax"
    torch.testing.assert_close(torch.tensor(as_json["cosine"]), cosine, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(as_json["probs"]), probs, atol=1e-5, rtol=1e-5)


def test_embed_missing_image_exits_2_naming_the_file(files, tmp_path, capsys):
    ckpt, images = files
    missing = str(tmp_path / "nope.jpg")
    assert main(embed_argv(ckpt, [images[0], missing], ["x"])) == 2
    out = capsys.readouterr()
    assert f"image file not found: {missing}" in out.err and out.out == ""
    assert main(embed_argv(ckpt, [str(tmp_path)], ["x"])) == 2  # a folder is not an image
    assert f"--image takes image files, not folders: {tmp_path}" in capsys.readouterr().err


def test_embed_unknown_checkpoint_exits_2_with_the_reason(files, capsys):
    _, images = files
    assert main(embed_argv("no-such-model", images[:1], ["x"])) == 2
    assert "neither an existing checkpoint path nor a model preset" in capsys.readouterr().err


def test_table_columns_are_aligned():
    text = format_table("t", ["short.jpg", "a/much/longer/name.jpg"], ["dog", "a cat on a mat"],
                        torch.tensor([[0.5, -0.25], [0.125, 1.0]]))
    lines = text.splitlines()[1:]
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split() == ["a/much/longer/name.jpg", "0.1250", "1.0000"]


def run_saved_by_the_trainer(root, model_dir):
    """A run directory whose checkpoints/latest and best point at a copy of the saved checkpoint."""
    import shutil

    from trainer.training.checkpoint_folder import CheckpointFolder

    CheckpointFolder(root / "run").save(5, lambda d: shutil.copytree(model_dir, d), {"step": 5}, best=True)
    return root / "run" / "checkpoints"


def test_embed_follows_a_runs_latest_pointer(files, expected, tmp_path, capsys):
    ckpt, images = files
    pointers = run_saved_by_the_trainer(tmp_path, ckpt)
    assert main([*embed_argv(pointers / "latest", images), "--json"]) == 0
    torch.testing.assert_close(torch.tensor(json.loads(capsys.readouterr().out)["cosine"]), expected[0],
                               atol=1e-5, rtol=1e-5)


def test_embed_images_only_prints_each_embeddings_norm_and_no_table(files, capsys):
    ckpt, images = files
    assert main(embed_argv(ckpt, images, texts=[])) == 0
    out = capsys.readouterr().out
    model = load_model(ckpt)
    preprocess = eval_transform(model.image_resolution)
    with torch.no_grad():
        features = model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images]))
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"image embeddings (3 x {model.args.embed_dim};") and "cosine" not in out
    for line, path, norm, unit in zip(lines[1:], images, features.norm(dim=-1),
                                      torch.nn.functional.normalize(features, dim=-1)):
        assert line.startswith(path)
        assert float(line.split("norm")[1].split()[0]) == pytest.approx(norm.item(), abs=1e-3)
        shown = [float(v) for v in line.split("[")[1].rstrip(", ...]").split(",")]
        torch.testing.assert_close(torch.tensor(shown), unit[:4], atol=1e-4, rtol=0)


def test_embed_texts_only_json_holds_unit_text_embeddings_and_no_similarity(files, capsys):
    ckpt, _ = files
    assert main([*embed_argv(ckpt, [], TEXTS), "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert set(as_json) == {"texts", "text_embeddings"}
    model = load_model(ckpt)
    with torch.no_grad():
        txt = torch.nn.functional.normalize(model.encode_text(trainer.tokenize(TEXTS, model.context_length)), dim=-1)
    torch.testing.assert_close(torch.tensor(as_json["text_embeddings"]), txt, atol=1e-5, rtol=1e-5)


def test_embed_needs_an_image_or_a_text_and_rejects_an_empty_text(files, capsys):
    ckpt, images = files
    assert main(embed_argv(ckpt, [], [])) == 2
    assert "give at least one --image or --text" in capsys.readouterr().err
    assert main(embed_argv(ckpt, images, ["a dog", "  "])) == 2
    out = capsys.readouterr()
    assert "--text number 2 is empty" in out.err and out.out == ""


def test_embed_warns_on_stderr_when_a_text_is_cut_to_the_context_length(files, capsys):
    ckpt, images = files
    long_text = "a very long caption " * 40
    assert main(embed_argv(ckpt, images[:1], ["a dog", long_text])) == 0
    err = capsys.readouterr().err
    context_length = load_model(ckpt).context_length
    assert f"cut to the model's context length of {context_length}" in err
    assert err.count("warning") == 1 and "'a very long caption" in err


def test_embed_device_errors_name_the_flag_and_the_accepted_values(files, capsys):
    ckpt, images = files
    with pytest.raises(SystemExit) as exit_:
        main([*embed_argv(ckpt, images[:1], ["x"]), "--device", "gpu"])
    assert exit_.value.code == 2
    assert "argument --device: 'gpu' is not a device; use auto, cpu, cuda" in capsys.readouterr().err
    absent = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    assert main([*embed_argv(ckpt, images[:1], ["x"]), "--device", absent]) == 2
    err = capsys.readouterr().err
    assert f"--device {absent}: " in err and ("is not available" in err or "CUDA device(s)" in err)


def test_embed_an_image_over_the_pixel_limit_exits_2_naming_it_and_its_size(files, tmp_path, capsys):
    from tests.dataset.test_prepare_huge_images import png_header_only

    ckpt, _ = files
    huge = png_header_only(tmp_path / "scan.png", 20_000, 10_000)  # a header only: nothing decoded
    assert main(embed_argv(ckpt, [str(huge)], ["x"])) == 2  # was: a DecompressionBombError traceback
    err = capsys.readouterr().err
    assert f"cannot read image {huge}: image too large: 20000x10000 pixels (200 MP) is over the limit" in err
    assert "downscale it" in err and "raise" not in err  # embed has no setting to raise
