"""The evaluator: pure metrics against brute-force references, the model-running half on a real tiny CLIP,
the matrix snapshot, a two-rank evaluation, and `cliplab eval` as a subprocess."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image, ImageDraw

from contract.config import EvalConfig, eval_metric_names
from trainer.evaluate import (
    batch_accuracy_similarity,
    compute_retrieval,
    encode_dataset,
    evaluate,
    in_batch_metrics,
    matrix_snapshot,
    retrieval_ranks,
    thumbnail_data_uri,
    val_loss,
    zeroshot_accuracy,
    zeroshot_classifier,
)
from trainer.loss import ClipLoss

REPO = Path(__file__).resolve().parents[2]
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 220, 40)}
SHAPES = ("square", "circle")


# ---------------------------------------------------------------------------------------------- fixtures
def write_dataset(root: Path, n: int = 20, with_info: bool = True, broken: tuple[int, ...] = ()) -> Path:
    """n images of coloured shapes on grey (non-square, so thumbnails must crop), a val.csv, a dataset.json."""
    root.mkdir(parents=True, exist_ok=True)
    classes = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    rows = ["filepath,caption,label"]
    for i in range(n):
        label = i % len(classes)
        colour, shape = classes[label].split()
        image = Image.new("RGB", (96, 72), (128 + i, 128, 128))
        draw = ImageDraw.Draw(image)
        box = (30 + i % 7, 16, 66 + i % 7, 52)
        (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
        name = f"img{i:03d}.jpg"
        if i in broken:
            (root / name).write_bytes(b"not a jpeg")
        else:
            image.save(root / name, quality=92)
        rows.append(f"{name},a photo of a {classes[label]}.,{label}")
    (root / "val.csv").write_text("\n".join(rows) + "\n")
    if with_info:
        (root / "dataset.json").write_text(json.dumps({"name": "tiny", "classes": classes,
                                                       "templates": ["a photo of a {}.", "a drawing of a {}."]}))
    return root / "val.csv"


@pytest.fixture(scope="module")
def tiny_model():
    from contract.presets import get_preset
    from trainer.model import build_model

    torch.manual_seed(0)
    return build_model(get_preset("tiny-vit")).eval()


@pytest.fixture(scope="module")
def val_csv(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("val"), n=20)


def csv_dataset(csv_path: Path, model):
    from trainer.data import CsvDataset
    from trainer.transforms import eval_transform

    return CsvDataset(csv_path, eval_transform(model.image_resolution), context_length=model.context_length)


# ---------------------------------------------------------------------------------------------- references
def ref_recall(q: np.ndarray, g: np.ndarray, q_ids, g_ids, k: int) -> float:
    """Sort each query's gallery by score, ties broken against the model (wrong items first); hit if any
    correct item is among the first k."""
    hits = 0
    for i in range(len(q)):
        scores = [float(np.dot(q[i], g[j])) for j in range(len(g))]
        order = sorted(range(len(g)), key=lambda j: (-scores[j], g_ids[j] == q_ids[i]))
        hits += any(g_ids[j] == q_ids[i] for j in order[:k])
    return hits / len(q)


def ref_in_batch(img: np.ndarray, txt: np.ndarray, scale: float, ids, batch_size: int, image_ids=None):
    """Loop reference of the in-batch metrics: a hit is a best caption with the image's caption id or image id."""
    n = len(img)
    size = n if n < batch_size else batch_size
    image_ids = list(range(n)) if image_ids is None else image_ids
    accs, sims = [], []
    for start in range(0, n - size + 1, size):
        for i in range(start, start + size):
            logits = [scale * float(np.dot(img[i], txt[j])) for j in range(start, start + size)]
            best = start + int(np.argmax(logits))
            accs.append(1.0 if ids[best] == ids[i] or image_ids[best] == image_ids[i] else 0.0)
            top = max(logits)
            probs = [math.exp(v - top) for v in logits]
            sims.append(probs[i - start] / sum(probs))
    return float(np.mean(accs)), float(np.mean(sims)), size


# ---------------------------------------------------------------------------------------------- retrieval
def integer_features(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Small-integer features (exact dot products, so ties are exact) with duplicate captions and ties."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(-2, 3, (n, d), generator=g).double()
    txt = torch.randint(-2, 3, (n, d), generator=g).double()
    ids = torch.arange(n)
    for a, b in [(1, 4), (1, 9), (6, 13), (20, 2)]:  # identical captions: same id, same text features
        ids[b] = ids[a]
        txt[b] = txt[a]
    img[7] = img[3]  # identical images of different captions: exact ties in text->image
    txt[15] = txt[11]  # identical features of different captions: exact ties in image->text
    return img, txt, ids


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 1000])
def test_chunked_retrieval_equals_brute_force_reference(chunk_size):
    img, txt, ids = integer_features(23, 3, seed=0)
    got = compute_retrieval(img, txt, ids, ks=(1, 2, 5, 10), chunk_size=chunk_size)
    i, t, idl = img.numpy(), txt.numpy(), ids.tolist()
    for k in (1, 2, 5, 10):
        assert got[f"i2t_R@{k}"] == pytest.approx(ref_recall(i, t, idl, idl, k), abs=1e-12)
        assert got[f"t2i_R@{k}"] == pytest.approx(ref_recall(t, i, idl, idl, k), abs=1e-12)


def test_retrieval_without_caption_ids_has_one_correct_item_per_query():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(30, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(img + 0.8 * torch.randn(30, 8, generator=g, dtype=torch.float64), dim=-1)
    got = compute_retrieval(img, txt, None, ks=(1, 5), chunk_size=8)
    ids = list(range(30))
    assert got["i2t_R@1"] == pytest.approx(ref_recall(img.numpy(), txt.numpy(), ids, ids, 1))
    assert got["t2i_R@5"] == pytest.approx(ref_recall(txt.numpy(), img.numpy(), ids, ids, 5))
    assert 0 < got["i2t_R@1"] < 1  # the noise makes this a real test, not all hits or all misses


def test_a_collapsed_model_gets_no_credit_from_ties():
    same = torch.ones(10, 4)
    got = compute_retrieval(same, same, None, ks=(1, 5))
    assert got == {"i2t_R@1": 0.0, "i2t_R@5": 0.0, "t2i_R@1": 0.0, "t2i_R@5": 0.0}


def test_retrieval_ranks_reject_queries_without_a_correct_item():
    with pytest.raises(ValueError, match="no correct item"):
        retrieval_ranks(torch.eye(2), torch.eye(2), torch.tensor([0, 5]), torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------------- in-batch metrics
@pytest.mark.parametrize("n,batch_size", [(24, 8), (27, 8), (5, 8)])
def test_in_batch_metrics_match_a_loop_reference(n, batch_size):
    g = torch.Generator().manual_seed(n)
    img = F.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(img + torch.randn(n, 6, generator=g, dtype=torch.float64), dim=-1)
    ids = torch.arange(n)
    ids[3] = ids[1]  # a duplicate caption inside the first batch
    txt[3] = txt[1]
    got = in_batch_metrics(img, txt, 20.0, batch_size, ids)
    acc, sim, size = ref_in_batch(img.numpy(), txt.numpy(), 20.0, ids.tolist(), batch_size)
    assert got["acc"] == pytest.approx(acc, abs=1e-6)  # accumulated in fp32
    assert got["similarity"] == pytest.approx(sim, rel=1e-9)
    assert got["batch_size"] == size


def test_hitting_an_identical_caption_counts_as_a_hit():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both captions identical; image 1 matches neither better
    acc_ids, _ = batch_accuracy_similarity(img, txt, 10.0, torch.tensor([5, 5]))
    acc_plain, _ = batch_accuracy_similarity(img, txt, 10.0, None)
    assert acc_ids.item() == 1.0  # argmax hits caption 0, identical to caption 1
    assert acc_plain.item() == 0.5


def test_hitting_another_caption_of_the_same_image_counts_as_a_hit():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # one image, listed with two captions
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # both rows' best caption is caption 0
    acc_images, _ = batch_accuracy_similarity(img, txt, 10.0, torch.tensor([3, 4]), torch.tensor([9, 9]))
    acc_captions, _ = batch_accuracy_similarity(img, txt, 10.0, torch.tensor([3, 4]))
    assert acc_images.item() == 1.0
    assert acc_captions.item() == 0.5


def captions_of_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features of n pairs, 3 captions per image (image features repeated), one caption text shared by two
    images; captions only loosely match their images, so some best captions are another of the image's."""
    g = torch.Generator().manual_seed(seed)
    image_ids = torch.arange(n) // 3
    img = F.normalize(torch.randn(n // 3 + 1, 6, generator=g, dtype=torch.float64), dim=-1)[image_ids]
    txt = F.normalize(img + 0.9 * torch.randn(n, 6, generator=g, dtype=torch.float64), dim=-1)
    caption_ids = torch.arange(n) + 100
    caption_ids[7] = caption_ids[1]  # the same caption for images 0 and 2
    txt[7] = txt[1]
    return img, txt, caption_ids, image_ids


@pytest.mark.parametrize("n,batch_size", [(24, 8), (27, 9), (11, 16)])
def test_in_batch_metrics_with_image_ids_match_a_loop_reference(n, batch_size):
    img, txt, caption_ids, image_ids = captions_of_images(n, seed=n)
    got = in_batch_metrics(img, txt, 20.0, batch_size, caption_ids, image_ids)
    acc, sim, size = ref_in_batch(img.numpy(), txt.numpy(), 20.0, caption_ids.tolist(), batch_size,
                                  image_ids.tolist())
    assert got["acc"] == pytest.approx(acc, abs=1e-6) and got["batch_size"] == size
    assert got["similarity"] == pytest.approx(sim, rel=1e-9)
    captions_only, *_ = ref_in_batch(img.numpy(), txt.numpy(), 20.0, caption_ids.tolist(), batch_size)
    assert acc > captions_only  # the data makes a difference: some best captions are the image's others


def test_val_loss_counts_captions_of_one_image_as_positives():
    from tests.trainer.test_loss import ref_clip_loss

    img, txt, caption_ids, image_ids = captions_of_images(24, seed=3)
    clip = ClipLoss()
    got = val_loss(img, txt, 8, lambda i, t, c, m: clip(i, t, torch.tensor(20.0, dtype=torch.float64), c, m),
                   caption_ids, image_ids)
    batches = [slice(s, s + 8) for s in (0, 8, 16)]
    expected = np.mean([ref_clip_loss(img[s].numpy(), txt[s].numpy(), 20.0, caption_ids[s].tolist(),
                                      image_ids[s].tolist()) for s in batches])
    assert got == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------- zero-shot
def test_zeroshot_accuracy_on_constructed_features_with_a_known_answer():
    c = 8
    classes = torch.eye(c, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 0, 1, -1])
    feats = []
    for i, y in enumerate(labels.tolist()):
        y = max(y, 0)
        v = classes[y].clone()
        if i >= 8:  # the last labelled two: the true class is the 3rd best (two classes score higher)
            v = 0.5 * classes[y] + 0.8 * classes[(y + 1) % c] + 0.7 * classes[(y + 2) % c]
        feats.append(F.normalize(v, dim=0))
    got = zeroshot_accuracy(torch.stack(feats), classes, labels, ks=(1, 2, 3, 5))
    # 10 labelled images (label -1 is left out): 8 ranked first, 2 ranked third.
    assert got == {"zeroshot_top1": pytest.approx(0.8), "zeroshot_top2": pytest.approx(0.8),
                   "zeroshot_top3": pytest.approx(1.0), "zeroshot_top5": pytest.approx(1.0)}


def test_zeroshot_classifier_is_the_renormalised_mean_of_normalised_prompts(tiny_model):
    from trainer.tokenizer import tokenize

    classnames, templates = ["red square", "blue circle", "cat"], ["a photo of a {}.", "{} drawn badly", "it is a {}"]
    got = zeroshot_classifier(tiny_model, classnames, templates, torch.device("cpu"), batch_size=4)
    with torch.no_grad():
        for c, name in enumerate(classnames):
            per_prompt = []
            for t in templates:
                tokens = tokenize([t.replace("{}", name)], context_length=tiny_model.context_length)
                per_prompt.append(F.normalize(tiny_model.encode_text(tokens)[0], dim=0))
            expected = F.normalize(torch.stack(per_prompt).mean(0), dim=0)
            torch.testing.assert_close(got[c], expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- with the model
def test_evaluate_equals_metrics_of_one_at_a_time_features(tiny_model, val_csv):
    ds = csv_dataset(val_csv, tiny_model)
    cfg = EvalConfig(batch_size=8, recall_at=[1, 5, 10])
    result = evaluate(tiny_model, ds, cfg, "cpu")
    # Reference: encode every pair on its own (no batching, no trimming), then brute-force the metrics.
    with torch.no_grad():
        img = torch.cat([F.normalize(tiny_model.encode_image(ds[i]["image"][None]), dim=-1) for i in range(len(ds))])
        txt = torch.cat([F.normalize(tiny_model.encode_text(ds[i]["text"][None]), dim=-1) for i in range(len(ds))])
    scale = tiny_model.logit_scale.exp().item()
    ids = ds.caption_ids.tolist()
    acc, sim, size = ref_in_batch(img.double().numpy(), txt.double().numpy(), scale, ids, 8)
    assert result.batch_size == size == 8 and result.num_samples == 20
    assert result["val/acc"] == pytest.approx(acc, abs=1e-9)
    assert result["val/similarity"] == pytest.approx(sim, rel=1e-4)
    for k in (1, 5, 10):
        assert result[f"val/i2t_R@{k}"] == pytest.approx(ref_recall(img.numpy(), txt.numpy(), ids, ids, k))
        assert result[f"val/t2i_R@{k}"] == pytest.approx(ref_recall(txt.numpy(), img.numpy(), ids, ids, k))
    # checkpoint.best_metric is checked against this list before training: it must name what evaluate reports
    assert sorted(result) == sorted(eval_metric_names(cfg.recall_at))
    assert 0 <= result["val/zeroshot_top1"] <= result["val/zeroshot_top5"] <= 1
    assert math.isfinite(result["val/loss"]) and result["val/loss"] > 0
    assert not tiny_model.training


def test_evaluate_restores_train_mode_and_skips_zeroshot_without_classes(tiny_model, tmp_path):
    ds = csv_dataset(write_dataset(tmp_path / "noinfo", n=10, with_info=False), tiny_model)
    tiny_model.train()
    try:
        result = evaluate(tiny_model, ds, EvalConfig(batch_size=4, max_samples=9), "cpu")
        assert tiny_model.training
    finally:
        tiny_model.eval()
    assert result.num_samples == 9 and result.batch_size == 4
    assert not any(k.startswith("val/zeroshot") for k in result)


def test_unreadable_val_images_are_passed_over_and_reported_with_the_result(tiny_model, tmp_path):
    ds = csv_dataset(write_dataset(tmp_path / "broken", n=12, broken=(2, 5)), tiny_model)
    encoded = encode_dataset(tiny_model, ds, "cpu", batch_size=4)
    assert encoded.indices.tolist() == [i for i in range(12) if i not in (2, 5)]
    assert [Path(p).name for p, _ in encoded.skipped] == ["img002.jpg", "img005.jpg"]
    result = evaluate(tiny_model, ds, EvalConfig(batch_size=4, zeroshot=False), "cpu")
    assert [Path(p).name for p, _ in result.skipped] == ["img002.jpg", "img005.jpg"]


def test_evaluate_calls_back_after_every_batch(tiny_model, tmp_path):
    # The trainer sends heartbeats from this callback, so a long eval does not read as a lost run.
    ds = csv_dataset(write_dataset(tmp_path / "beats", n=10, with_info=False), tiny_model)
    calls = []
    evaluate(tiny_model, ds, EvalConfig(batch_size=4), "cpu", on_batch=lambda: calls.append(1))
    assert len(calls) == 3  # batches of 4, 4 and 2


def test_matrix_snapshot_shapes_values_and_decodable_thumbnails(tiny_model, tmp_path):
    ds = csv_dataset(write_dataset(tmp_path / "m", n=10, broken=(1,)), tiny_model)
    snap = matrix_snapshot(tiny_model, ds, 6, "cpu")
    kept = [0, 2, 3, 4, 5, 6]  # the first 6 readable pairs
    assert snap["captions"] == [ds.caption(i) for i in kept]
    assert len(snap["similarity"]) == 6 and all(len(row) == 6 for row in snap["similarity"])
    with torch.no_grad():
        img = F.normalize(tiny_model.encode_image(torch.stack([ds[i]["image"] for i in kept])), dim=-1)
        txt = F.normalize(tiny_model.encode_text(torch.stack([ds[i]["text"] for i in kept])), dim=-1)
    np.testing.assert_allclose(np.array(snap["similarity"]), (img @ txt.T).numpy(), atol=6e-5)
    assert snap["logit_scale"] == pytest.approx(tiny_model.logit_scale.exp().item())
    for uri in snap["thumbnails"]:
        assert uri.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
            assert im.format == "JPEG" and im.size == (64, 64)
    json.dumps(snap)  # the event body must be JSON


def test_thumbnail_is_a_centre_crop():
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 0, 255), (100, 0, 200, 100))  # blue centre square, red sides
    with Image.open(io.BytesIO(base64.b64decode(thumbnail_data_uri(image).split(",", 1)[1]))) as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    assert (pixels[:, :, 2] > 200).all() and (pixels[:, :, 0] < 60).all()  # only the blue centre remains


# ---------------------------------------------------------------------------------------------- two ranks
def _val_sets(csv_path: Path, shards: Path, model) -> dict[str, tuple[object, int | None]]:
    """name -> (dataset, max_samples): the CSV whole and cut, and its shards cut inside the fourth shard."""
    from trainer.data import ShardDataset
    from trainer.transforms import eval_transform

    shard_set = ShardDataset(shards / "val-{000000..000004}.tar", eval_transform(model.image_resolution),
                             context_length=model.context_length, shuffle=False)
    dataset = csv_dataset(csv_path, model)
    return {"csv": (dataset, None), "csv_first_13": (dataset, 13), "shards_first_13": (shard_set, 13)}


def _eval_rank(rank: int, port: int, state_path: str, csv_path: str, shards: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    from contract.presets import get_preset
    from trainer.distributed import cleanup, init_distributed
    from trainer.model import build_model

    info = init_distributed(device="cpu")
    model = build_model(get_preset("tiny-vit")).eval()
    model.load_state_dict(torch.load(state_path))
    results = {}
    for name, (dataset, max_samples) in _val_sets(Path(csv_path), Path(shards), model).items():
        result = evaluate(model, dataset, EvalConfig(batch_size=8, max_samples=max_samples), "cpu",
                          rank=info.rank, world_size=info.world_size)
        results[name] = {"values": dict(result), "batch_size": result.batch_size, "n": result.num_samples}
    torch.save(results, Path(out) / f"eval{rank}.pt")
    cleanup()


@pytest.mark.slow
def test_two_ranks_evaluate_like_one(tiny_model, tmp_path):
    # 18 readable pairs; rank 0 reads the even indices (10), rank 1 the odd ones minus the broken one (8):
    # unequal shares, interleaved, that the gather must pad and put back in dataset order. Cut to the first
    # 13 pairs (index 3 unreadable: 12 left), the CSV and its shards (4 pairs each, shards alternating
    # between the ranks) give one process's set whatever the number of ranks.
    from dataset.shards import write_shards

    csv_path = write_dataset(tmp_path / "d", n=19, broken=(3,))
    shards = tmp_path / "shards"
    write_shards(csv_path, shards, shard_size=4, name="val", log=None)
    state = tmp_path / "model.pt"
    torch.save(tiny_model.state_dict(), state)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_eval_rank, args=(port, str(state), str(csv_path), str(shards), str(tmp_path)), nprocs=2, join=True)
    expected_n = {"csv": 18, "csv_first_13": 12, "shards_first_13": 12}
    for name, (dataset, max_samples) in _val_sets(csv_path, shards, tiny_model).items():
        single = evaluate(tiny_model, dataset, EvalConfig(batch_size=8, max_samples=max_samples), "cpu")
        assert (single.batch_size, single.num_samples) == (8, expected_n[name]), name
        for rank in range(2):
            got = torch.load(tmp_path / f"eval{rank}.pt")[name]
            assert (got["batch_size"], got["n"]) == (single.batch_size, single.num_samples), (name, rank)
            assert got["values"].keys() == single.keys()
            for key, value in single.items():
                assert got["values"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, key)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cliplab_eval_subprocess_prints_json_metrics(tmp_path):
    csv_path = write_dataset(tmp_path / "cli", n=12)
    env = {**os.environ, "CLIPLAB_DATA_DIR": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "eval", "--checkpoint", "tiny-vit", "--data", str(csv_path),
         "--batch-size", "4", "--workers", "0", "--device", "cpu", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["batch_size"] == 4 and out["num_samples"] == 12
    expected = {"val/loss", "val/acc", "val/similarity", "val/zeroshot_top1", "val/zeroshot_top5",
                *(f"val/{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10))}
    assert set(out["values"]) == expected
    assert all(0.0 <= v <= 1.0 for k, v in out["values"].items() if k != "val/loss")


def test_cliplab_eval_reports_a_missing_data_file(tmp_path, capsys):
    from trainer.commands import main

    code = main(["eval", "--checkpoint", "tiny-vit", "--data", str(tmp_path / "nope.csv"), "--device", "cpu"])
    assert code == 2
    assert "nope.csv" in capsys.readouterr().err


def test_eval_table_lists_every_metric():
    from trainer.commands.eval import format_table

    table = format_table({"val/loss": 1.25, "val/acc": 0.5}, 64, 100, 2.0)
    assert "batch size 64" in table and "100 pairs" in table
    assert "val/loss  1.2500" in table and "val/acc   0.5000  (50.0%)" in table


def saved_run(root: Path) -> Path:
    """A run directory holding one tiny-vit checkpoint, as the trainer writes it (step dir + latest + best)."""
    from contract.presets import get_preset
    from trainer.checkpoint import save_model
    from trainer.model import build_model
    from trainer.training.checkpoint_folder import CheckpointFolder

    torch.manual_seed(0)
    model = build_model(get_preset("tiny-vit"))
    CheckpointFolder(root).save(3, lambda d: save_model(model, d), {"step": 3}, best=True)
    return root


def eval_argv(checkpoint: Path | str, data: Path, *extra: str) -> list[str]:
    return ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--batch-size", "4", "--workers", "0",
            "--device", "cpu", *extra]


def test_cliplab_eval_reads_a_runs_best_pointer_and_reports_unreadable_images(tmp_path, capsys):
    from trainer.commands import main

    csv_path = write_dataset(tmp_path / "d", n=8, broken=(2, 5))
    best = saved_run(tmp_path / "run") / "checkpoints" / "best"
    assert main(eval_argv(best, csv_path, "--json")) == 0
    out = capsys.readouterr()
    as_json = json.loads(out.out.strip().splitlines()[-1])
    assert as_json["num_samples"] == 6 and as_json["skipped"] == 2
    assert [Path(e["path"]).name for e in as_json["skipped_examples"]] == ["img002.jpg", "img005.jpg"]
    assert all(e["reason"] for e in as_json["skipped_examples"])
    assert "2 unreadable val pair(s) skipped" in out.err
    assert f"{tmp_path / 'd' / 'img002.jpg'}: " in out.err and f"{tmp_path / 'd' / 'img005.jpg'}: " in out.err


def test_cliplab_eval_names_the_data_file_when_fewer_than_two_pairs_are_readable(tmp_path, capsys):
    from trainer.commands import main

    csv_path = write_dataset(tmp_path / "d", n=3, broken=(0, 1))
    assert main(eval_argv(saved_run(tmp_path / "run") / "checkpoints" / "latest", csv_path)) == 2
    out = capsys.readouterr()
    assert f"cannot evaluate on --data {csv_path}: " in out.err and "at least 2" in out.err
    assert "Traceback" not in out.err and out.out == ""


def test_cliplab_eval_says_why_it_has_no_zero_shot_metrics(tmp_path, capsys):
    # A labelled CSV without dataset.json (no class names) used to drop zero-shot without a word.
    from trainer.commands import main

    csv_path = write_dataset(tmp_path / "d", n=6, with_info=False)
    checkpoint = saved_run(tmp_path / "run") / "checkpoints" / "latest"
    assert main(eval_argv(checkpoint, csv_path, "--json")) == 0
    out = capsys.readouterr()
    assert "zeroshot" not in out.out
    assert "no zero-shot metrics: the val set lists no class names" in out.err
    assert main(eval_argv(checkpoint, csv_path, "--json", "--no-zeroshot")) == 0  # asked for none: no note
    assert "zero-shot" not in capsys.readouterr().err
    labelled = write_dataset(tmp_path / "l", n=6)
    assert main(eval_argv(checkpoint, labelled, "--json")) == 0
    out = capsys.readouterr()
    assert "val/zeroshot_top1" in out.out and "zero-shot" not in out.err


def test_val_sets_the_metrics_cannot_use_raise_data_errors_naming_the_problem(tiny_model, tmp_path):
    from trainer.data import DataError

    one_readable = write_dataset(tmp_path / "one", n=3, broken=(0, 1))
    with pytest.raises(DataError, match=r"1 readable pair\(s\), 2 unreadable; evaluation needs at least 2"):
        evaluate(tiny_model, csv_dataset(one_readable, tiny_model), EvalConfig(batch_size=4), "cpu")
    labelled = write_dataset(tmp_path / "labels", n=6)
    info = json.loads((labelled.parent / "dataset.json").read_text())
    (labelled.parent / "dataset.json").write_text(json.dumps({**info, "classes": info["classes"][:2]}))
    with pytest.raises(DataError, match="has label 5 but its dataset.json lists 2 classes"):
        evaluate(tiny_model, csv_dataset(labelled, tiny_model), EvalConfig(batch_size=4), "cpu")


def test_cliplab_eval_device_and_workers_errors_name_the_flag(tmp_path, capsys):
    from trainer.commands import main

    csv_path = write_dataset(tmp_path / "d", n=4)
    argv = eval_argv(saved_run(tmp_path / "run"), csv_path)
    for flag, value, message in [("--device", "gpu", "argument --device: 'gpu' is not a device; use auto, cpu, cuda"),
                                 ("--workers", "-1", "argument --workers: must be 0 or more, got -1")]:
        with pytest.raises(SystemExit) as exit_:
            main([*argv, flag, value])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    absent = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    assert main([*argv, "--device", absent]) == 2
    err = capsys.readouterr().err
    assert f"--device {absent}: " in err and "train.device" not in err


def test_cliplab_version_prints_the_installed_version():
    from importlib.metadata import version

    proc = subprocess.run([sys.executable, "-m", "trainer", "--version"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"cliplab {version('cliplab')}"


def test_cliplab_version_of_an_uninstalled_source_tree_comes_from_its_pyproject(tmp_path):
    # A copy of the CLI without package metadata, and Python without site-packages (-S): nothing installed.
    for name in ("trainer/__init__.py", "trainer/__main__.py", "trainer/commands/__init__.py", "contract/__init__.py",
                 "contract/version.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((REPO / name).read_text())
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "cliplab"\nversion = "9.8.7"\n\n'
                                             '[tool.other]\nversion = "0.0.0"\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", "-m", "trainer", "--version"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cliplab 9.8.7"


def test_matrix_snapshot_shows_different_images_when_the_val_set_lists_each_with_several_captions(tiny_model,
                                                                                                   tmp_path):
    """A val CSV listing each image with its captions in a row (as COCO-style files do) gives a matrix of k
    images, each with its first caption; a set with fewer images than k fills in with their other captions."""
    from dataset.shards import write_shards
    from trainer.data import ShardDataset
    from trainer.transforms import eval_transform

    val_csv = write_dataset(tmp_path / "multi", n=4, with_info=False)
    files = [line.split(",")[0] for line in val_csv.read_text().splitlines()[1:]]
    rows = [f"{name},photo {c} of image {i}" for i, name in enumerate(files) for c in range(3)]
    val_csv.write_text("filepath,caption\n" + "\n".join(rows) + "\n")
    ds = csv_dataset(val_csv, tiny_model)
    snap = matrix_snapshot(tiny_model, ds, 4, "cpu")
    assert snap["captions"] == [f"photo 0 of image {i}" for i in range(4)]
    assert len({uri for uri in snap["thumbnails"]}) == 4
    more = matrix_snapshot(tiny_model, ds, 6, "cpu")  # 4 images: two repeats, after every image
    assert more["captions"][:4] == snap["captions"] and more["captions"][4:] == ["photo 1 of image 0",
                                                                                 "photo 2 of image 0"]
    write_shards(val_csv, tmp_path / "shards", shard_size=5, name="val", log=None)
    streamed = ShardDataset(str(tmp_path / "shards" / "val-{000000..000002}.tar"),
                            eval_transform(tiny_model.image_resolution), context_length=tiny_model.context_length,
                            shuffle=False)
    assert matrix_snapshot(tiny_model, streamed, 4, "cpu")["captions"] == snap["captions"]
