"""The numbers evaluation reports, against independent references written from the definitions: retrieval
R@K with several correct items per query (identical captions, one image listed with several captions),
NaN features, zero-shot, the contrastive loss under reduced precision, and results that must not depend on
the eval batch size or the number of DataLoader workers.

Conventions pinned here (trainer/evaluate.py's docstring): ties count against the model; every val pair is a
query; pairs sharing a caption or an image file are each other's correct items; NaN scores never rank a
correct item above anything (a NaN model scores 0, not 1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from contract.config import EvalConfig
from trainer.evaluate import (
    batch_accuracy_similarity,
    compute_retrieval,
    evaluate,
    image_ids_of,
    in_batch_metrics,
    zeroshot_accuracy,
)
from trainer.loss import ClipLoss

from tests.trainer.test_evaluate import csv_dataset, write_dataset


# ---------------------------------------------------------------------------------------------- fixtures, references
@pytest.fixture(scope="module")
def tiny_model():
    from contract.presets import get_preset
    from trainer.model import build_model

    torch.manual_seed(0)
    return build_model(get_preset("tiny-vit")).eval()


def ref_recall_any_match(q: np.ndarray, g: np.ndarray, match: np.ndarray, k: int) -> float:
    """R@K by sorting: each query's gallery in descending score, ties with wrong items first (against the
    model), NaN scores last; a hit when any item with match[i, j] is among the first k."""
    hits = 0
    for i in range(len(q)):
        scores = [float(np.dot(q[i], g[j])) for j in range(len(g))]
        order = sorted(range(len(g)), key=lambda j, s=scores, m=match[i]: (
            math.isnan(s[j]), 0 if math.isnan(s[j]) else -s[j], bool(m[j])))
        top = order[:k]
        hits += any(match[i, j] and not math.isnan(scores[j]) for j in top)
    return hits / len(q)


def pair_match(caption_ids: list[int], image_ids: list[int]) -> np.ndarray:
    """match[i, j]: pairs i and j share a caption or an image."""
    c, m = np.array(caption_ids), np.array(image_ids)
    return (c[:, None] == c[None, :]) | (m[:, None] == m[None, :])


def multi_caption_features(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Small-integer features (exact ties) of 18 pairs: images 0-5 listed with 3 captions each (identical
    image features), captions 2 and 7 identical, plus noise-free and noisy captions."""
    g = torch.Generator().manual_seed(seed)
    image_ids = torch.arange(18) // 3
    img = torch.randint(-2, 3, (6, 4), generator=g).double()[image_ids]
    txt = img + torch.randint(-1, 2, (18, 4), generator=g).double()
    caption_ids = torch.arange(18)
    caption_ids[7] = caption_ids[2]
    txt[7] = txt[2]
    return img, txt, caption_ids, image_ids


# ---------------------------------------------------------------------------------------------- retrieval
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
def test_retrieval_with_several_captions_per_image_matches_the_any_match_reference(seed, chunk_size):
    img, txt, caption_ids, image_ids = multi_caption_features(seed)
    got = compute_retrieval(img, txt, caption_ids, ks=(1, 3, 5), chunk_size=chunk_size, image_ids=image_ids)
    match = pair_match(caption_ids.tolist(), image_ids.tolist())
    for k in (1, 3, 5):
        assert got[f"i2t_R@{k}"] == pytest.approx(ref_recall_any_match(img.numpy(), txt.numpy(), match, k))
        assert got[f"t2i_R@{k}"] == pytest.approx(ref_recall_any_match(txt.numpy(), img.numpy(), match, k))


def test_a_perfect_model_on_an_image_with_several_captions_scores_one():
    # Three images, each listed with two captions that embed exactly like it: a text finds two identical
    # copies of its image, an image two captions of itself. None of that is a mistake of the model.
    g = torch.Generator().manual_seed(0)
    image_ids = torch.tensor([0, 0, 1, 1, 2, 2])
    img = F.normalize(torch.randn(3, 8, generator=g), dim=-1)[image_ids]
    got = compute_retrieval(img, img.clone(), None, ks=(1,), image_ids=image_ids)
    assert got == {"i2t_R@1": 1.0, "t2i_R@1": 1.0}


def test_image_ids_come_from_the_dataset_paths(tmp_path):
    class Listed:
        def __init__(self, paths):
            self.paths = paths

        def path(self, index):
            return self.paths[index]

    ids = image_ids_of(Listed(["a.jpg", "b.jpg", "a.jpg", "c.jpg"]), torch.tensor([0, 1, 2, 3]))
    assert ids.tolist() == [0, 1, 0, 2]
    assert image_ids_of(object(), torch.tensor([0, 1])) is None  # shards: every record its own image


def test_evaluate_counts_any_caption_of_a_listed_image_as_correct(tiny_model, tmp_path):
    # One image file listed with four captions and another with four: with every caption its own id, a
    # caption's best image is one of the identical copies of its file. Before image ids, copies of the
    # right file counted against the model, so text->image R@1 was 0 whatever the model.
    model = tiny_model
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    Image.new("RGB", (40, 40), (30, 30, 200)).save(tmp_path / "blue.png")
    rows = ["filepath,caption"] + [f"{name}.png,{name} picture number {i}" for name in ("red", "blue") for i in range(4)]
    (tmp_path / "val.csv").write_text("\n".join(rows) + "\n")
    ds = csv_dataset(tmp_path / "val.csv", model)
    result = evaluate(model, ds, EvalConfig(batch_size=4, recall_at=[1, 4]), "cpu")
    with torch.no_grad():
        img = F.normalize(torch.cat([model.encode_image(ds[i]["image"][None]) for i in range(8)]), dim=-1)
        txt = F.normalize(torch.cat([model.encode_text(ds[i]["text"][None]) for i in range(8)]), dim=-1)
    match = pair_match(list(range(8)), [0, 0, 0, 0, 1, 1, 1, 1])
    for k in (1, 4):
        assert result[f"val/i2t_R@{k}"] == pytest.approx(ref_recall_any_match(img.numpy(), txt.numpy(), match, k))
        assert result[f"val/t2i_R@{k}"] == pytest.approx(ref_recall_any_match(txt.numpy(), img.numpy(), match, k))
    # Two images: whichever a caption prefers, R@1 is 1/2 or 1 per file, never 0 for both.
    assert result["val/t2i_R@1"] >= 0.5


# ---------------------------------------------------------------------------------------------- NaN / inf
def test_nan_features_never_score_hits():
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(12, 6, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(img + 0.3 * torch.randn(12, 6, generator=g, dtype=torch.float64), dim=-1)
    img[4] = float("nan")
    txt[9] = float("inf")
    txt = F.normalize(txt, dim=-1)  # inf / inf: NaN, as a diverged model's features come out
    got = compute_retrieval(img, txt, None, ks=(1, 5))
    match = pair_match(list(range(12)), list(range(12)))
    for k in (1, 5):
        assert got[f"i2t_R@{k}"] == pytest.approx(ref_recall_any_match(img.numpy(), txt.numpy(), match, k))
        assert got[f"t2i_R@{k}"] == pytest.approx(ref_recall_any_match(txt.numpy(), img.numpy(), match, k))


def test_a_model_with_all_nan_features_scores_zero_not_one():
    nan = torch.full((6, 4), float("nan"))
    assert set(compute_retrieval(nan, nan, None, ks=(1, 5)).values()) == {0.0}
    classes = F.normalize(torch.randn(3, 4), dim=-1)
    assert set(zeroshot_accuracy(nan, classes, torch.tensor([0, 1, 2, 0, 1, 2]), ks=(1, 2)).values()) == {0.0}
    assert in_batch_metrics(nan, nan, 100.0, 3)["acc"] == 0.0
    acc, similarity = batch_accuracy_similarity(nan, nan, 100.0)
    assert acc.item() == 0.0 and math.isnan(similarity.item())  # the loss and similarity show NaN as NaN


def test_a_nan_caption_does_not_steal_the_argmax_of_the_others():
    img = torch.eye(3)
    txt = torch.eye(3)
    txt[2] = float("nan")
    acc, _ = batch_accuracy_similarity(img, txt, 10.0)
    assert acc.item() == pytest.approx(2 / 3)  # images 0 and 1 hit; image 2's caption is NaN: a miss


# ---------------------------------------------------------------------------------------------- zero-shot
def ref_zeroshot(img: np.ndarray, classes: np.ndarray, labels: list[int], k: int) -> float:
    hits, n = 0, 0
    for i, y in enumerate(labels):
        if y < 0:
            continue
        scores = img[i] @ classes.T
        n += 1
        hits += int(sum(scores[c] >= scores[y] for c in range(len(classes)) if c != y) < k)
    return hits / n


def test_zeroshot_matches_a_reference_with_empty_classes_ties_and_unlabelled_images():
    g = torch.Generator().manual_seed(5)
    classes = torch.randint(-1, 2, (7, 3), generator=g).double()  # exact ties between classes
    img = torch.randint(-1, 2, (40, 3), generator=g).double()
    labels = torch.randint(0, 4, (40,), generator=g)  # classes 4-6 have no val image
    labels[::9] = -1
    got = zeroshot_accuracy(img, classes, labels, ks=(1, 2, 5, 10), chunk_size=6)
    for k in (1, 2, 5, 10):
        assert got[f"zeroshot_top{k}"] == pytest.approx(ref_zeroshot(img.numpy(), classes.numpy(), labels.tolist(), k))
    assert got["zeroshot_top10"] == 1.0  # fewer classes than k: every image is in the top k


# ---------------------------------------------------------------------------------------------- loss
def test_multi_positive_loss_equals_a_hand_computed_soft_target_cross_entropy():
    # 3 pairs, captions 0 and 2 identical (same id, same text features); scale 2.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    cos = img @ txt.T
    targets = torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]], dtype=torch.float64)
    by_hand = 0.0
    for logits in (2 * cos, 2 * cos.T):
        for i in range(3):
            log_z = math.log(sum(math.exp(v) for v in logits[i].tolist()))
            by_hand += -sum(targets[i, j].item() * (logits[i, j].item() - log_z) for j in range(3)) / 3
    got = ClipLoss()(img, txt, torch.tensor(2.0, dtype=torch.float64), caption_ids=torch.tensor([7, 8, 7]))
    assert got.item() == pytest.approx(by_hand / 2, rel=1e-12)


def test_a_single_pair_batch_has_zero_loss():
    img = F.normalize(torch.randn(1, 5), dim=-1)
    assert ClipLoss()(img, F.normalize(torch.randn(1, 5), dim=-1), torch.tensor(100.0)).item() == pytest.approx(0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loss_of_half_precision_features_under_cpu_autocast_is_the_fp32_loss_of_those_features(dtype):
    g = torch.Generator().manual_seed(4)
    img = F.normalize(torch.randn(16, 32, generator=g), dim=-1).to(dtype)
    txt = F.normalize(torch.randn(16, 32, generator=g), dim=-1).to(dtype)
    ids = torch.arange(16)
    ids[5] = ids[2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ClipLoss()(img, txt, torch.tensor(100.0), caption_ids=ids)
    expected = ClipLoss()(img.double(), txt.double(), torch.tensor(100.0, dtype=torch.float64), caption_ids=ids)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- invariance
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from dataset.shards import write_shards

    root = tmp_path_factory.mktemp("val")
    csv_path = write_dataset(root / "d", n=16)
    write_shards(csv_path, root / "shards", shard_size=4, name="val", log=None)
    return root / "shards" / "val-{000000..000003}.tar"


def test_shard_eval_does_not_depend_on_the_number_of_workers(tiny_model, shards):
    # Two workers read alternate shards and hand batches back interleaved (0-3, 8-11, 4-7, ...): the
    # in-batch metrics and the val loss cut consecutive batches, so they must see dataset order.
    from trainer.data import ShardDataset
    from trainer.transforms import eval_transform

    ds = ShardDataset(shards, eval_transform(tiny_model.image_resolution),
                      context_length=tiny_model.context_length, shuffle=False)
    cfg = EvalConfig(batch_size=8)
    alone = evaluate(tiny_model, ds, cfg, "cpu", num_workers=0)
    with_workers = evaluate(tiny_model, ds, cfg, "cpu", num_workers=2)
    assert with_workers.keys() == alone.keys()
    for key, value in alone.items():
        assert with_workers[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_retrieval_and_zeroshot_do_not_depend_on_the_eval_batch_size(tiny_model, tmp_path):
    ds = csv_dataset(write_dataset(tmp_path, n=21), tiny_model)  # 21: a partial last batch for both sizes
    small, large = (evaluate(tiny_model, ds, EvalConfig(batch_size=b, recall_at=[1, 5]), "cpu") for b in (4, 16))
    assert (small.batch_size, large.batch_size) == (4, 16)
    for key in small:
        if "R@" in key or "zeroshot" in key:
            assert small[key] == pytest.approx(large[key], abs=1e-9), key


def test_bf16_autocast_eval_on_cpu_is_close_to_fp32(tiny_model, tmp_path):
    ds = csv_dataset(write_dataset(tmp_path, n=12), tiny_model)
    fp32 = evaluate(tiny_model, ds, EvalConfig(batch_size=6), "cpu")
    bf16 = evaluate(tiny_model, ds, EvalConfig(batch_size=6), "cpu",
                    autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert bf16.keys() == fp32.keys()
    assert bf16["val/loss"] == pytest.approx(fp32["val/loss"], rel=0.02)
    assert bf16["val/similarity"] == pytest.approx(fp32["val/similarity"], abs=0.02)


# ---------------------------------------------------------------------------------------------- embed vs eval
def test_cliplab_embed_writes_the_unit_vectors_eval_scores(tiny_model, tmp_path, capsys):
    # The same checkpoint, images and captions: `cliplab embed --json` and the evaluator's encoding of the
    # val set (cliplab eval's dataset, batched and trimmed) must give the same normalised embeddings.
    import json

    from contract.config import DataConfig
    from trainer.checkpoint import save_model
    from trainer.commands import main
    from trainer.data import build_val_dataset
    from trainer.evaluate import encode_dataset

    csv_path = write_dataset(tmp_path / "d", n=5)
    ckpt = save_model(tiny_model, tmp_path / "ckpt")
    ds = build_val_dataset(DataConfig(val=str(csv_path), num_workers=0, context_length=tiny_model.context_length),
                           tiny_model.image_resolution, log=lambda m: None)
    encoded = encode_dataset(tiny_model, ds, torch.device("cpu"), batch_size=2)
    argv = ["embed", "--checkpoint", str(ckpt), "--json"]
    for i in range(5):
        argv += ["--image", ds.path(i), "--text", ds.caption(i)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    torch.testing.assert_close(torch.tensor(out["image_embeddings"]), encoded.image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(out["text_embeddings"]), encoded.text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(out["cosine"]), encoded.image @ encoded.text.T, atol=1e-5, rtol=1e-4)
