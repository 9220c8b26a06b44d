"""Tar shards: writing from a CSV, reading back (ranks, workers, resume), and damaged data."""

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.config import DataConfig
from dataset.shards import existing_shards, write_shards
from trainer.data import (
    CsvDataset,
    DataError,
    ShardDataset,
    Skipped,
    StepLoader,
    build_train_loader,
    build_val_loader,
    caption_hash,
    collate_samples,
    expand_braces,
    resolve_shards,
)
from trainer.transforms import eval_transform

pytestmark = pytest.mark.timeout(60)


def quiet(_message: str) -> None:
    pass


def make_csv(root: Path, n: int, missing: int = 0, corrupt: int = 0, labels: bool = True) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["filepath,caption,label" if labels else "filepath,caption"]
    for i in range(n):
        rng = np.random.default_rng(i)
        image = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((36, 30), Image.BILINEAR)
        ext = "png" if i % 7 == 3 else "jpg"  # a few PNGs: shards keep whatever format the file has
        image.save(root / "images" / f"{i}.{ext}")
        rows.append(f"images/{i}.{ext},caption number {i % 9}" + (f",{i % 9}" if labels else ""))
    for i in range(missing):
        rows.append(f"images/gone{i}.jpg,gone" + (",0" if labels else ""))
    for i in range(corrupt):
        (root / "images" / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff garbage, not an image")
        rows.append(f"images/bad{i}.jpg,bad bytes" + (",1" if labels else ""))
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root / "train.csv"


def read_all(ds: ShardDataset) -> list:
    return list(iter(ds))


def test_expand_braces_keeps_zero_padding_and_lists():
    assert expand_braces("d/s-{000..002}.tar") == ["d/s-000.tar", "d/s-001.tar", "d/s-002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]


def test_write_then_read_round_trips_pairs_labels_and_pixels(tmp_path):
    csv_path = make_csv(tmp_path / "d", n=23, missing=2)
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({"classes": ["c"] * 9, "templates": ["{}"]}))
    shards = write_shards(csv_path, tmp_path / "shards", shard_size=10, log=None)
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    index = json.loads((tmp_path / "shards" / "shard.index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [10, 10, 3] and index["left_out"] == 2
    assert all(e["reason"] == "file not found" for e in index["left_out_examples"])

    ds = ShardDataset(tmp_path / "shards" / "shard-{000000..000002}.tar", eval_transform(24), shuffle=False)
    items = read_all(ds)
    assert len(items) == 23 and not any(isinstance(x, Skipped) for x in items)
    assert ds.classes == ["c"] * 9 and ds.templates == ["{}"]
    direct = CsvDataset(csv_path, eval_transform(24))
    for item in items:  # rows 0..22 of the CSV are records 0..22 of the shards
        i = item["index"]
        assert item["label"] == i % 9 and item["caption_id"] == caption_hash(direct.caption(i))
        assert torch.equal(item["text"], direct[i]["text"])
        assert torch.equal(item["image"], direct[i]["image"])  # same bytes, same decode


def test_shards_are_byte_identical_when_written_twice(tmp_path):
    csv_path = make_csv(tmp_path / "d", n=5)
    a = write_shards(csv_path, tmp_path / "a", log=None)
    b = write_shards(csv_path, tmp_path / "b", log=None)
    assert a[0].read_bytes() == b[0].read_bytes()


def test_writing_over_existing_shards_is_refused(tmp_path):
    csv_path = make_csv(tmp_path / "d", n=3)
    write_shards(csv_path, tmp_path / "s", log=None)
    with pytest.raises(DataError, match="already holds shards named shard"):
        write_shards(csv_path, tmp_path / "s", log=None)


def test_unlabelled_csv_gives_no_cls_members_and_label_minus_one(tmp_path):
    shard = write_shards(make_csv(tmp_path / "d", n=3, labels=False), tmp_path / "s", log=None)[0]
    with tarfile.open(shard) as tar:
        assert not [m for m in tar.getnames() if m.endswith(".cls")]
    assert [x["label"] for x in read_all(ShardDataset(shard, eval_transform(16), shuffle=False))] == [-1] * 3


def test_corrupt_members_and_damaged_shards_are_skipped_and_reported(tmp_path):
    csv_path = make_csv(tmp_path / "d", n=12, corrupt=2)
    shards = write_shards(csv_path, tmp_path / "s", shard_size=7, log=None)
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) // 2])  # cut a shard in the middle of a member
    items = read_all(ShardDataset(tmp_path / "s", eval_transform(16), shuffle=False, probe=0))
    skipped = [x for x in items if isinstance(x, Skipped)]
    reasons = Counter("damaged shard" in s.reason for s in skipped)
    assert reasons[True] == 1  # the cut shard reports once and the next shard still streams
    damaged = [s for s in skipped if "damaged" in s.reason]
    assert "shard-000000.tar:0000" in damaged[0].path  # names the shard and the record the cut went through
    bad = sorted(s.path.rsplit(":", 1)[1] for s in skipped if "damaged" not in s.reason)
    assert bad == ["000012", "000013"]  # the two corrupt images, in the intact shard
    good = [x["index"] for x in items if not isinstance(x, Skipped)]
    assert set(range(7, 12)) <= set(good)


def test_shards_with_nothing_readable_fail_at_once(tmp_path):
    csv_path = make_csv(tmp_path / "d", n=0, corrupt=4)
    write_shards(csv_path, tmp_path / "s", log=None)
    with pytest.raises(DataError, match="none of the first 4 records"):
        ShardDataset(tmp_path / "s", eval_transform(16))


def test_missing_shards_are_named(tmp_path):
    write_shards(make_csv(tmp_path / "d", n=2), tmp_path, name="x", log=None)
    (tmp_path / "x-000000.tar").rename(tmp_path / "x-000.tar")
    with pytest.raises(DataError, match=r"names 1 missing file\(s\), e\.g\. .*x-001\.tar"):
        resolve_shards(str(tmp_path / "x-{000..001}.tar"))
    with pytest.raises(DataError, match="shards not found"):
        resolve_shards(str(tmp_path / "nothing.tar"))


def _shard_cfg(pattern: Path | str, **kw) -> DataConfig:
    return DataConfig(train=str(pattern), val=str(pattern), **{"num_workers": 0, **kw})


def test_shard_training_loader_with_one_rank_visits_every_record_once_per_epoch(tmp_path):
    write_shards(make_csv(tmp_path / "d", n=24), tmp_path / "s", shard_size=6, log=None)
    loader = build_train_loader(_shard_cfg(tmp_path / "s"), 4, 16, seed=1, log=quiet)
    assert loader.batches_per_epoch() == 6
    epochs = [[i for _ in range(6) for i in next(loader)["index"].tolist()] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(24))
    assert epochs[0] != epochs[1]  # reshuffled per epoch


def test_shard_ranks_get_equal_batch_counts_and_disjoint_records(tmp_path):
    write_shards(make_csv(tmp_path / "d", n=24), tmp_path / "s", shard_size=6, log=None)
    seen = []
    for rank in range(2):
        loader = build_train_loader(_shard_cfg(tmp_path / "s"), 3, 16, rank=rank, world_size=2, seed=0, log=quiet)
        assert loader.batches_per_epoch() == 4
        seen.append([i for _ in range(4) for i in next(loader)["index"].tolist()])
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(24))


def test_shard_loader_resumes_mid_epoch_with_workers_in_the_same_order(tmp_path):
    write_shards(make_csv(tmp_path / "d", n=40, corrupt=1), tmp_path / "s", shard_size=5, log=None)
    cfg = _shard_cfg(tmp_path / "s", num_workers=2)
    run = build_train_loader(cfg, 4, 16, seed=5, log=quiet)
    assert run.batches_per_epoch() == 10
    reference = [next(run) for _ in range(14)]
    run.close()
    for cut in (3, 10):
        resumed = build_train_loader(cfg, 4, 16, seed=5, log=quiet)
        resumed.load_state_dict({"epoch": cut // 10, "batch": cut % 10})
        for expected, got in zip(reference[cut:], [next(resumed) for _ in range(14 - cut)]):
            assert got["index"].tolist() == expected["index"].tolist()
            assert got["skipped"] == expected["skipped"]
            assert torch.equal(got["image"], expected["image"])
        resumed.close()


def test_shard_val_loader_reads_everything_in_order(tmp_path):
    write_shards(make_csv(tmp_path / "d", n=9), tmp_path / "s", shard_size=4, log=None)
    loader = build_val_loader(_shard_cfg(tmp_path / "s"), 16, batch_size=4, log=quiet)
    assert [i for b in loader for i in b["index"].tolist()] == list(range(9))


def test_shard_smaller_than_a_global_batch_is_refused(tmp_path):
    write_shards(make_csv(tmp_path / "d", n=5), tmp_path / "s", log=None)
    with pytest.raises(DataError, match="fewer than one global batch of 8"):
        ShardDataset(tmp_path / "s", eval_transform(16), batch_size=4, world_size=2)


def test_shard_samples_collate_like_csv_samples(tmp_path):
    shard = write_shards(make_csv(tmp_path / "d", n=3), tmp_path / "s", log=None)[0]
    batch = collate_samples(read_all(ShardDataset(shard, eval_transform(16), shuffle=False)))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["text"].shape == (3, 77)
    assert batch["caption_id"].dtype == torch.long and batch["label"].tolist() == [0, 1, 2]
    assert StepLoader  # the class the trainer iterates; exercised above through build_train_loader


def test_overwrite_replaces_shards_of_that_name_and_leaves_longer_names_alone(tmp_path):
    csv_path = make_csv(tmp_path / "d", n=12)
    write_shards(csv_path, tmp_path / "s", shard_size=4, name="pets", log=None)
    write_shards(csv_path, tmp_path / "s", shard_size=4, name="pets-val", log=None)  # "pets" is its prefix
    assert [p.name for p in existing_shards(tmp_path / "s", "pets")] == [f"pets-{i:06d}.tar" for i in range(3)]
    shards = write_shards(csv_path, tmp_path / "s", shard_size=12, name="pets", overwrite=True, log=None)
    assert existing_shards(tmp_path / "s", "pets") == shards and len(shards) == 1  # the stale two are gone
    assert json.loads((tmp_path / "s" / "pets.index.json").read_text())["shards"] == [
        {"file": "pets-000000.tar", "count": 12}]
    assert len(existing_shards(tmp_path / "s", "pets-val")) == 3
    assert len(read_all(ShardDataset(shards[0], eval_transform(16), shuffle=False))) == 12


def test_every_image_type_prepare_accepts_round_trips_through_shards(tmp_path):
    from contract.datasets import IMAGE_EXTENSIONS

    folder = tmp_path / "d"
    folder.mkdir()
    rows = ["filepath,caption"]
    for i, ext in enumerate(sorted(IMAGE_EXTENSIONS)):
        Image.new("RGB", (20, 16), (40 * i, 100, 200 - 20 * i)).save(folder / f"img{i}{ext}")
        rows.append(f"img{i}{ext},image {ext}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    write_shards(folder / "train.csv", tmp_path / "shards", shard_size=100, log=None)
    ds = ShardDataset(tmp_path / "shards", eval_transform(16), shuffle=False)
    items = read_all(ds)
    assert not [x for x in items if isinstance(x, Skipped)]
    direct = CsvDataset(folder / "train.csv", eval_transform(16))
    for item in items:
        assert torch.equal(item["image"], direct[item["index"]]["image"]), item["index"]
