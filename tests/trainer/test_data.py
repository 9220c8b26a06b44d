"""Datasets, samplers, the resumable StepLoader, the image cache and the CPU side of GPU decoding.

Every test builds its own tiny images and CSVs under tmp_path; nothing is downloaded.
"""

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.config import DataConfig
from trainer.data import (
    BatchFinisher,
    CachedDataset,
    CsvDataset,
    DataError,
    DistinctCaptionBatchSampler,
    ImageCache,
    ShuffledBatchSampler,
    Skipped,
    StepLoader,
    build_train_loader,
    build_val_dataset,
    build_val_loader,
    collate_samples,
)
from trainer.tokenizer import tokenize
from trainer.transforms import eval_transform, eval_transform_uint8, train_transform

pytestmark = pytest.mark.timeout(60)  # a loader that loops on bad data must fail the test, not hang it


def quiet(_message: str) -> None:
    pass


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 52)) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # smooth blocks: JPEG-friendly, distinct per seed
    Image.fromarray(base).resize(size, Image.BILINEAR).save(path, format="JPEG", quality=90)


def make_dataset(root: Path, n: int = 24, classes: int = 6, missing: int = 0, corrupt: int = 0,
                 sep: str = ",", name: str = "train.csv") -> Path:
    """n good JPEGs + `missing` rows without files + `corrupt` non-image files; captions repeat per class."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    header = sep.join(["filepath", "caption", "label"])
    rows = [header]
    for i in range(n):
        write_jpeg(root / "images" / f"{i}.jpg", seed=i, size=(40 + i % 5, 52))
        rows.append(sep.join([f"images/{i}.jpg", f"a photo of shape {i % classes}", str(i % classes)]))
    for i in range(missing):
        rows.append(sep.join([f"images/missing{i}.jpg", "a photo of nothing", "0"]))
    for i in range(corrupt):
        (root / "images" / f"corrupt{i}.jpg").write_bytes(b"\xff\xd8\xff this is not really a jpeg")
        rows.append(sep.join([f"images/corrupt{i}.jpg", "a photo of noise", "1"]))
    path = root / name
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def drain(loader, n: int) -> list[dict]:
    return [next(loader) for _ in range(n)]


# --- CsvDataset ------------------------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_csv_folder_not_the_cwd(tmp_path, monkeypatch):
    csv_path = make_dataset(tmp_path / "data", n=4)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ds = CsvDataset(os.path.relpath(csv_path, elsewhere), eval_transform(32))
    assert ds.path(0) == str(tmp_path / "data" / "images" / "0.jpg")
    sample = ds[0]
    assert not isinstance(sample, Skipped) and sample["image"].shape == (3, 32, 32)


def test_absolute_paths_are_used_as_written(tmp_path):
    write_jpeg(tmp_path / "abs.jpg", seed=1)
    (tmp_path / "sub").mkdir()
    csv_path = tmp_path / "sub" / "pairs.csv"
    csv_path.write_text(f"filepath,caption\n{tmp_path / 'abs.jpg'},an absolute path\n")
    ds = CsvDataset(csv_path, eval_transform(16))
    assert ds.path(0) == str(tmp_path / "abs.jpg") and ds.labels.tolist() == [-1] and not ds.has_labels


def test_tsv_is_read_with_tabs_and_keeps_commas_in_captions(tmp_path):
    root = tmp_path / "tsv"
    make_dataset(root, n=3, sep="\t", name="pairs.tsv")
    text = (root / "pairs.tsv").read_text().replace("a photo of shape 1", "a photo, with commas, of shape 1")
    (root / "pairs.tsv").write_text(text)
    ds = CsvDataset(root / "pairs.tsv", eval_transform(16))
    assert ds.captions == ["a photo of shape 0", "a photo, with commas, of shape 1", "a photo of shape 2"]
    assert ds.labels.tolist() == [0, 1, 2]


def test_captions_are_tokenised_once_and_equal_captions_share_an_id(tmp_path):
    ds = CsvDataset(make_dataset(tmp_path, n=12, classes=4), eval_transform(16))
    assert len(ds.unique_captions) == 4
    ids = ds.caption_ids.tolist()
    for i in range(12):
        for j in range(12):
            assert (ids[i] == ids[j]) == (ds.caption(i) == ds.caption(j))
    sample = ds[5]
    assert sample["text"].dtype == torch.long
    assert torch.equal(sample["text"], tokenize([ds.caption(5)])[0])
    assert sample["caption_id"] == ids[5] and sample["label"] == 5 % 4 and sample["index"] == 5


def test_dataset_json_beside_the_csv_gives_classes_and_templates(tmp_path):
    csv_path = make_dataset(tmp_path, n=3)
    (tmp_path / "dataset.json").write_text('{"classes": ["a", "b"], "templates": ["a photo of a {}."]}')
    ds = CsvDataset(csv_path, eval_transform(16))
    assert ds.classes == ["a", "b"] and ds.templates == ["a photo of a {}."]


def test_building_a_dataset_does_not_consume_the_callers_random_stream(tmp_path):
    csv_path = make_dataset(tmp_path, n=4)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    CsvDataset(csv_path, train_transform(16, (0.3, 1.0)))  # probes images through a random crop
    assert torch.equal(torch.rand(3), expected)


def test_missing_csv_and_missing_columns_name_the_file_and_the_columns(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nope\.csv"):
        CsvDataset(tmp_path / "nope.csv", eval_transform(16))
    bad = tmp_path / "bad.csv"
    bad.write_text("image,text\nx.jpg,hello\n")
    with pytest.raises(DataError, match=r"bad\.csv.*missing column.*filepath.*caption"):
        CsvDataset(bad, eval_transform(16))


def test_a_non_integer_label_names_the_line(tmp_path):
    csv_path = make_dataset(tmp_path, n=3)
    csv_path.write_text(csv_path.read_text().replace(",1\n", ",one\n"))
    with pytest.raises(DataError, match=r"line 3: label must be an integer"):
        CsvDataset(csv_path, eval_transform(16))


def test_bad_images_become_skipped_markers_with_path_and_reason(tmp_path):
    csv_path = make_dataset(tmp_path, n=2, missing=1, corrupt=1)
    truncated = tmp_path / "images" / "truncated.jpg"
    good = (tmp_path / "images" / "0.jpg").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with csv_path.open("a") as f:
        f.write("images/truncated.jpg,half a picture,0\n")
    ds = CsvDataset(csv_path, eval_transform(16))
    missing, corrupt, cut = ds[2], ds[3], ds[4]
    assert isinstance(missing, Skipped) and missing.path.endswith("missing0.jpg") and missing.reason == "file not found"
    assert isinstance(corrupt, Skipped) and corrupt.path.endswith("corrupt0.jpg")
    assert isinstance(cut, Skipped) and "truncated" in cut.reason.lower()
    with pytest.raises(DataError, match=r"missing0\.jpg.*file not found"):
        ds.load_image(2)


def test_a_dataset_with_no_readable_image_fails_at_construction(tmp_path):
    csv_path = make_dataset(tmp_path, n=0, missing=30, corrupt=5)
    with pytest.raises(DataError) as err:
        CsvDataset(csv_path, eval_transform(16))
    message = str(err.value)
    assert str(csv_path) in message and "none of the" in message and "file not found" in message


def test_collate_drops_skipped_items_and_lists_them():
    good = {"image": torch.zeros(3, 4, 4), "text": torch.ones(5, dtype=torch.long), "caption_id": 7, "label": 2,
            "index": 0}
    batch = collate_samples([good, Skipped(1, "/x.jpg", "file not found"), good])
    assert batch["image"].shape == (2, 3, 4, 4) and batch["index"].tolist() == [0, 0]
    assert batch["skipped"] == [("/x.jpg", "file not found")]
    empty = collate_samples([Skipped(1, "/x.jpg", "file not found")])
    assert empty["index"].numel() == 0 and empty["skipped"] == [("/x.jpg", "file not found")]


# --- samplers ---------------------------------------------------------------------------------------------

def test_shuffled_sampler_ranks_cover_the_epoch_disjointly_with_equal_batch_counts():
    ranks = [ShuffledBatchSampler(40, 4, rank=r, world_size=2, seed=3) for r in range(2)]
    for s in ranks:
        s.set_epoch(1)
    seen = [[i for batch in s for i, _ in batch] for s in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 5
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(40))
    ranks[0].set_epoch(2)
    assert [i for b in ranks[0] for i, _ in b] != seen[0]  # a new epoch reshuffles


def test_distinct_caption_batches_hold_no_duplicate_and_use_every_index_once():
    caption_ids = [i % 10 for i in range(95)]  # 10 captions x ~9.5 copies, class-style
    sampler = DistinctCaptionBatchSampler(caption_ids, 8, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = [[i for i, _ in b] for b in sampler]
        used = [i for b in batches for i in b]
        assert all(len({caption_ids[i] for i in b}) == len(b) == 8 for b in batches)
        assert len(used) == len(set(used))
        remainder = set(range(95)) - set(used)
        assert len(remainder) < 8  # only a final short remainder is left out
        _, planned_rest = sampler.plan(epoch)
        assert set(planned_rest) == remainder


def test_distinct_caption_batches_are_distinct_across_ranks_and_ranks_are_disjoint():
    caption_ids = [i % 12 for i in range(96)]
    ranks = [DistinctCaptionBatchSampler(caption_ids, 3, rank=r, world_size=2, seed=5) for r in range(2)]
    per_rank = [[[i for i, _ in b] for b in s] for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    for b0, b1 in zip(*per_rank):
        captions = [caption_ids[i] for i in b0 + b1]
        assert len(set(captions)) == 6  # the global batch (what a gathered loss sees) has no duplicates
    flat = [i for r in per_rank for b in r for i in b]
    assert len(flat) == len(set(flat))


def test_distinct_caption_sampler_with_a_dominant_caption_leaves_only_its_extra_copies():
    caption_ids = [0] * 30 + list(range(1, 31))  # half the data is one caption
    sampler = DistinctCaptionBatchSampler(caption_ids, 4, seed=1)
    batches, remainder = sampler.plan(0)
    assert all(len({caption_ids[i] for i in b}) == 4 for b in batches)
    assert sum(1 for b in batches for i in b if caption_ids[i] == 0) == len(batches)  # one per batch at most
    assert sorted(i for b in batches for i in b) == sorted(set(range(60)) - set(remainder))
    assert len([i for i in remainder if caption_ids[i] != 0]) < 4


def test_distinct_captions_need_enough_different_captions():
    with pytest.raises(ValueError, match="at least that many different captions; the dataset has 3"):
        DistinctCaptionBatchSampler([0, 1, 2] * 10, 4)


# --- StepLoader: determinism, resume, ranks ----------------------------------------------------------------

def _cfg(csv_path: Path, **kw) -> DataConfig:
    return DataConfig(train=str(csv_path), val=str(csv_path), **{"num_workers": 0, **kw})


def test_mid_epoch_restart_yields_the_same_remaining_batches_and_crops(tmp_path):
    csv_path = make_dataset(tmp_path, n=26, missing=1, corrupt=1)
    cfg = _cfg(csv_path, train_crop_scale=(0.5, 1.0))
    full = build_train_loader(cfg, 4, 24, seed=11, log=quiet)
    assert full.batches_per_epoch() == 7
    reference = drain(full, 12)  # crosses into the second epoch
    for cut in (3, 7, 9):
        first = build_train_loader(cfg, 4, 24, seed=11, log=quiet)
        drain(first, cut)
        state = first.state_dict()
        resumed = build_train_loader(_cfg(csv_path, train_crop_scale=(0.5, 1.0), num_workers=2), 4, 24,
                                     seed=11, log=quiet)
        resumed.load_state_dict(state)
        for expected, got in zip(reference[cut:], drain(resumed, 12 - cut)):
            assert got["index"].tolist() == expected["index"].tolist()
            assert torch.equal(got["image"], expected["image"])  # per-sample seeds: same crops, any worker count
        resumed.close()
    # Restoring in place, while the loader's workers are mid-epoch, rewinds just the same.
    live = build_train_loader(_cfg(csv_path, train_crop_scale=(0.5, 1.0), num_workers=2), 4, 24, seed=11, log=quiet)
    drain(live, 9)
    live.load_state_dict({"epoch": 0, "batch": 2})
    assert [b["index"].tolist() for b in drain(live, 4)] == [b["index"].tolist() for b in reference[2:6]]
    live.close()


def test_set_epoch_starts_that_epoch_like_the_uninterrupted_run(tmp_path):
    csv_path = make_dataset(tmp_path, n=16)
    run = build_train_loader(_cfg(csv_path), 4, 16, seed=2, log=quiet)
    batches = drain(run, 8)
    other = build_train_loader(_cfg(csv_path), 4, 16, seed=2, log=quiet)
    other.set_epoch(1)
    assert [b["index"].tolist() for b in drain(other, 4)] == [b["index"].tolist() for b in batches[4:]]
    assert other.state_dict() == {"epoch": 1, "batch": 4}


def test_normalising_on_the_device_gives_the_images_the_workers_would_have_made(tmp_path):
    csv_path = make_dataset(tmp_path, n=8)
    in_workers = drain(build_train_loader(_cfg(csv_path), 4, 20, seed=6, log=quiet), 3)
    on_device = drain(build_train_loader(_cfg(csv_path), 4, 20, seed=6, device="cpu", log=quiet), 3)
    for a, b in zip(in_workers, on_device):
        assert b["image"].dtype == torch.float32 and torch.equal(a["image"], b["image"])


def test_different_seeds_give_different_orders(tmp_path):
    csv_path = make_dataset(tmp_path, n=16)
    a = [b["index"].tolist() for b in drain(build_train_loader(_cfg(csv_path), 4, 16, seed=0, log=quiet), 4)]
    b = [b["index"].tolist() for b in drain(build_train_loader(_cfg(csv_path), 4, 16, seed=1, log=quiet), 4)]
    assert a != b and sorted(sum(a, [])) == sorted(sum(b, [])) == list(range(16))


def test_two_ranks_cover_each_epoch_disjointly(tmp_path):
    csv_path = make_dataset(tmp_path, n=24, classes=24)
    seen = []
    for rank in range(2):
        loader = build_train_loader(_cfg(csv_path), 3, 16, rank=rank, world_size=2, seed=4, log=quiet)
        assert loader.batches_per_epoch() == 4
        seen.append([i for b in drain(loader, 4) for i in b["index"].tolist()])
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(24))


def test_skipped_items_are_counted_and_reported_and_iteration_continues(tmp_path):
    csv_path = make_dataset(tmp_path, n=20, missing=2, corrupt=2)
    loader = build_train_loader(_cfg(csv_path, num_workers=2), 4, 16, seed=0, log=quiet)
    assert loader.batches_per_epoch() == 6
    batches = drain(loader, 12)  # two full epochs
    reported = [path for b in batches for path, _ in b["skipped"]]
    assert loader.total_skipped == len(reported) == 8
    assert Counter(Path(p).name for p in reported) == {"missing0.jpg": 2, "missing1.jpg": 2, "corrupt0.jpg": 2,
                                                        "corrupt1.jpg": 2}
    used = [i for b in batches[:6] for i in b["index"].tolist()]
    assert len(used) + 4 == 24 and len(set(used)) == len(used)
    assert all(b["image"].dtype == torch.float32 and b["image"].shape[1:] == (3, 16, 16) for b in batches)
    loader.close()


def test_distinct_caption_loader_resumes_and_never_repeats_a_caption_in_a_batch(tmp_path):
    csv_path = make_dataset(tmp_path, n=30, classes=6)
    cfg = _cfg(csv_path, distinct_captions=True)
    ds = CsvDataset(csv_path, eval_transform(16))
    reference = drain(build_train_loader(cfg, 5, 16, seed=9, log=quiet), 10)
    for b in reference:
        assert len({ds.caption(i) for i in b["index"].tolist()}) == len(b["index"]) == 5
    resumed = build_train_loader(cfg, 5, 16, seed=9, log=quiet)
    resumed.load_state_dict({"epoch": 1, "batch": 1})
    steps = build_train_loader(cfg, 5, 16, seed=9, log=quiet).batches_per_epoch()
    assert [b["index"].tolist() for b in drain(resumed, 3)] == \
        [b["index"].tolist() for b in reference[steps + 1:steps + 4]]


def test_a_dataset_smaller_than_one_batch_is_refused_with_the_batch_size(tmp_path):
    with pytest.raises(DataError, match="fewer than one global batch of 16"):
        build_train_loader(_cfg(make_dataset(tmp_path, n=10)), 8, 16, world_size=2, log=quiet)


def test_bad_loader_state_is_rejected():
    sampler = ShuffledBatchSampler(8, 2)
    loader = StepLoader(torch.utils.data.DataLoader(range(8), batch_sampler=sampler), sampler)
    with pytest.raises(ValueError, match="epoch"):
        loader.load_state_dict({"step": 3})


# --- validation loader ------------------------------------------------------------------------------------

def test_val_loader_is_ordered_complete_and_uses_the_eval_transform(tmp_path):
    csv_path = make_dataset(tmp_path, n=10, missing=1)
    loader = build_val_loader(_cfg(csv_path), 24, batch_size=4, log=quiet)
    batches = list(loader)
    assert [i for b in batches for i in b["index"].tolist()] == list(range(10))
    assert loader.skipped == [(str(tmp_path / "images" / "missing0.jpg"), "file not found")]
    ds = CsvDataset(csv_path, eval_transform(24))
    assert torch.equal(batches[1]["image"][0], ds[4]["image"])
    shares = [[i for b in build_val_loader(_cfg(csv_path), 24, 2, rank=r, world_size=2, log=quiet)
               for i in b["index"].tolist()] for r in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(10)) and not set(shares[0]) & set(shares[1])


# --- image cache ------------------------------------------------------------------------------------------

def test_image_cache_is_built_once_then_reused_and_records_bad_images(tmp_path):
    csv_path = make_dataset(tmp_path / "d", n=6, missing=1)
    ds = CsvDataset(csv_path, eval_transform_uint8(20))
    cache = ImageCache(ds, 20, tmp_path / "cache")
    builds = ImageCache.builds
    assert cache.ensure(quiet) is True
    mtime = cache.path.stat().st_mtime_ns
    again = ImageCache(CsvDataset(csv_path, eval_transform_uint8(20)), 20, tmp_path / "cache")
    assert again.ensure(quiet) is False and again.path == cache.path
    assert ImageCache.builds == builds + 1 and cache.path.stat().st_mtime_ns == mtime
    assert again.bad == {6: "file not found"}
    cached = CachedDataset(ds, again, eval_transform(20))
    assert isinstance(cached[6], Skipped) and cached[6].path.endswith("missing0.jpg")
    assert not list((tmp_path / "cache").glob("*.tmp*"))  # the build left no temporary file behind
    other_size = ImageCache(ds, 24, tmp_path / "cache")
    assert other_size.path != cache.path  # the resolution is part of the key


def test_editing_the_csv_gives_a_new_cache(tmp_path):
    csv_path = make_dataset(tmp_path / "d", n=4)
    first = ImageCache(CsvDataset(csv_path, eval_transform_uint8(16)), 16, tmp_path / "cache")
    first.ensure(quiet)
    csv_path.write_text(csv_path.read_text() + "images/0.jpg,one more row,0\n")
    second = ImageCache(CsvDataset(csv_path, eval_transform_uint8(16)), 16, tmp_path / "cache")
    assert second.path != first.path and second.ensure(quiet) is True and second.length == 5


def test_cached_eval_images_equal_the_direct_path_pixel_for_pixel(tmp_path):
    csv_path = make_dataset(tmp_path / "d", n=5)
    cfg = _cfg(csv_path, cache=True)
    cached = build_val_dataset(cfg, 28, data_dir=tmp_path / "home", log=quiet)
    direct = CsvDataset(csv_path, eval_transform(28))
    assert isinstance(cached, CachedDataset) and list((tmp_path / "home" / "cache").glob("*.u8"))
    for i in range(5):
        assert torch.equal(cached[i]["image"], direct[i]["image"])


def test_cached_training_loader_crops_from_the_cache_and_resumes(tmp_path):
    csv_path = make_dataset(tmp_path / "d", n=12)
    cfg = _cfg(csv_path, cache=True, num_workers=2)
    first = build_train_loader(cfg, 4, 20, seed=3, data_dir=tmp_path / "home", log=quiet)
    reference = drain(first, 5)
    first.close()  # left to the garbage collector, its two workers take ~10 s to stop, in a later test
    assert reference[0]["image"].shape == (4, 3, 20, 20) and reference[0]["image"].dtype == torch.float32
    resumed = build_train_loader(cfg, 4, 20, seed=3, data_dir=tmp_path / "home", log=quiet)
    resumed.load_state_dict({"epoch": 0, "batch": 2})
    for expected, got in zip(reference[2:], drain(resumed, 3)):
        assert torch.equal(got["image"], expected["image"])
    resumed.close()


# --- GPU decode (the parts that run on a CPU) -------------------------------------------------------------

def test_gpu_decode_on_a_cpu_machine_says_so_and_decodes_on_the_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the fallback message is for CPU-only machines")
    notes = []
    loader = build_train_loader(_cfg(make_dataset(tmp_path, n=8), gpu_decode=True), 4, 16, log=notes.append)
    assert any("GPU JPEG decoding is unavailable" in n and "CPU" in n for n in notes) and loader.notes == notes
    assert next(loader)["image"].dtype == torch.float32


@pytest.mark.filterwarnings("ignore:.*image decoding and encoding capabilities:DeprecationWarning")
def test_encoded_jpeg_batches_decode_like_pil_and_report_undecodable_images(tmp_path):
    # The GPU path's logic, run with torchvision's CPU JPEG decoder: workers ship bytes, the finisher decodes.
    csv_path = make_dataset(tmp_path, n=4, corrupt=1)
    png = tmp_path / "images" / "extra.png"
    Image.open(tmp_path / "images" / "0.jpg").save(png)
    with csv_path.open("a") as f:
        f.write("images/extra.png,a png,2\n")
    ds = CsvDataset(csv_path, eval_transform_uint8(24), encoded=True)
    items = [ds[i] for i in range(6)]
    assert items[0]["image"].dim() == 1 and items[5]["image"].shape == (3, 24, 24)  # PNG decoded in the worker
    batch = BatchFinisher("cpu", resolution=24)(collate_samples(items))
    assert batch["index"].tolist() == [0, 1, 2, 3, 5]
    assert [Path(p).name for p, _ in batch["skipped"]] == ["corrupt0.jpg"]
    reference = torch.stack([CsvDataset(csv_path, eval_transform(24))[i]["image"] for i in [0, 1, 2, 3, 5]])
    # libjpeg builds differ in IDCT/upsampling and torch's bicubic is not PIL's: close, not identical.
    assert batch["image"].shape == reference.shape and (batch["image"] - reference).abs().mean() < 0.05


_UNCLOSED_LOADER = """
import os, signal, sys
from contract.config import DataConfig
from trainer.data import build_train_loader
cfg = DataConfig(train=sys.argv[1], val=None, num_workers=2)
loader = build_train_loader(cfg, 4, 24, log=lambda m: None)
next(loader)
os.killpg(os.getpgrp(), signal.SIGTERM) if sys.argv[2] == "group-sigterm" else None
next(loader)  # the workers outlived a stop signal sent to the whole process group
print("done", flush=True)
"""


@pytest.mark.slow  # loader worker processes
@pytest.mark.parametrize("signal_group", [False, True])
def test_a_process_with_live_loader_workers_survives_a_group_stop_and_still_exits(tmp_path, signal_group):
    import subprocess
    import sys

    csv_path = make_dataset(tmp_path, n=16)
    # Own session: the group SIGTERM must not reach pytest. The child ignores it itself, as the trainer's
    # handler would; only its workers' fate is under test.
    script = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + _UNCLOSED_LOADER
    proc = subprocess.run([sys.executable, "-c", script, str(csv_path), "group-sigterm" if signal_group else "-"],
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "done"


# ---------------------------------------------------------------------------------------------- sources
def test_data_sources_name_prepared_datasets_files_and_shards(tmp_path):
    from trainer.data import resolve_source

    pets = tmp_path / "datasets" / "pets"
    pets.mkdir(parents=True)
    for split in ("train", "val"):
        (pets / f"{split}.csv").write_text("filepath,caption\n")
    assert resolve_source("pets", "val", tmp_path) == ("csv", str(pets / "val.csv"))
    assert resolve_source(str(pets / "train.csv"), "train", tmp_path) == ("csv", str(pets / "train.csv"))
    assert resolve_source("/data/shard-{000..009}.tar", "train", tmp_path)[0] == "shards"
    assert resolve_source("elsewhere/pairs.csv", "train", tmp_path) == ("csv", "elsewhere/pairs.csv")
    with pytest.raises(DataError) as err:
        resolve_source("petz", "train", tmp_path)
    assert "no prepared dataset named 'petz'" in str(err.value) and "demo, pets" in str(err.value)


def test_a_folder_without_shards_says_what_to_pass_instead(tmp_path):
    from trainer.data.shard_dataset import resolve_shards

    tables, photos, empty = tmp_path / "prepared", tmp_path / "photos", tmp_path / "empty"
    tables.mkdir(), (photos / "cat").mkdir(parents=True), empty.mkdir()
    (tables / "val.csv").write_text("filepath,caption\n")
    Image.new("RGB", (4, 4)).save(photos / "cat" / "1.jpg")
    with pytest.raises(DataError, match=f"it holds pairs tables: pass one of them, e.g. {tables / 'val.csv'}"):
        resolve_shards(tables)
    with pytest.raises(DataError, match=r"it holds images: make a dataset of them first, e.g. `cliplab prepare "
                                        f"folders {photos}`"):
        resolve_shards(photos)
    with pytest.raises(DataError, match=r"no \.tar shards in directory .*empty$"):
        resolve_shards(empty)
