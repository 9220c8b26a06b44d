"""The built-in demo dataset: content, determinism, and safe (atomic, concurrent) generation."""

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from dataset import demo

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return demo.ensure_demo_dataset(tmp_path_factory.mktemp("data"))


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # generates the whole demo dataset
def test_demo_has_48_classes_and_the_documented_layout(demo_dir, tmp_path):
    assert demo_dir.name == "demo" and demo_dir.parent.name == "datasets"
    info = json.loads((demo_dir / "dataset.json").read_text())
    assert info["name"] == "demo" and info["source"] == "demo"
    assert len(info["classes"]) == 48 == len(set(info["classes"]))
    assert info["classes"][0] == "red circle" and all("{}" in t for t in info["templates"])
    train, val = rows(demo_dir / "train.csv"), rows(demo_dir / "val.csv")
    assert info["counts"]["train"] == len(train) == 48 * demo.TRAIN_PER_CLASS
    assert info["counts"]["val"] == len(val) == 48 * demo.VAL_PER_CLASS
    assert Counter(r["label"] for r in train) == {str(i): demo.TRAIN_PER_CLASS for i in range(48)}
    assert not {r["filepath"] for r in train} & {r["filepath"] for r in val}
    for r in train[:50] + val[:50]:
        with Image.open(demo_dir / r["filepath"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (demo.IMAGE_SIZE, demo.IMAGE_SIZE)


@pytest.mark.slow  # generates the whole demo dataset
def test_captions_name_the_class_and_vary(demo_dir):
    info = json.loads((demo_dir / "dataset.json").read_text())
    train = rows(demo_dir / "train.csv")
    for r in train:
        assert info["classes"][int(r["label"])] in r["caption"]
    captions = Counter(r["caption"] for r in train)
    assert len(captions) > 48 * 5
    # Class-style captions repeat, but no caption dominates a batch of 64.
    assert max(captions.values()) < len(train) / 48


@pytest.mark.slow  # generates the whole demo dataset
def test_val_is_ordered_so_each_run_of_48_rows_holds_every_class(demo_dir):
    labels = [int(r["label"]) for r in rows(demo_dir / "val.csv")]
    for start in range(0, len(labels) - 48 + 1):
        assert len(set(labels[start : start + 48])) == 48


@pytest.mark.slow  # generates the whole demo dataset
def test_the_pixels_show_the_colour_the_caption_names(demo_dir):
    # The shape's pixels (those far from the background, read at the corners) average to the named colour.
    def nearest_colour(path: Path) -> str:
        with Image.open(path) as im:
            data = im.convert("RGB").tobytes()
        px = [tuple(data[i : i + 3]) for i in range(0, len(data), 3)]
        size = demo.IMAGE_SIZE
        corners = [px[0], px[size - 1], px[-size], px[-1]]
        bg = [sorted(c[k] for c in corners)[1] for k in range(3)]
        fg = [p for p in px if sum((a - b) ** 2 for a, b in zip(p, bg)) > 90**2]
        mean = [sum(p[k] for p in fg) / len(fg) for k in range(3)]
        return min(demo.COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(demo.COLOURS[c], mean)))

    val = rows(demo_dir / "val.csv")
    hits = sum(nearest_colour(demo_dir / r["filepath"]) == r["caption"].split(" on ")[0].split()[-2] for r in val[:96])
    assert hits >= 90, hits


@pytest.mark.slow  # generates the whole demo dataset
def test_generation_is_byte_identical_across_runs(demo_dir, tmp_path):
    again = demo.write_demo_dataset(tmp_path / "again")
    files = sorted(p.relative_to(demo_dir) for p in demo_dir.rglob("*") if p.is_file())
    assert sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file()) == files
    for rel in files:
        if rel.name == "dataset.json":
            a, b = (json.loads((d / rel).read_text()) for d in (demo_dir, again))
            a.pop("created"), b.pop("created")
            assert a == b
        else:
            assert (demo_dir / rel).read_bytes() == (again / rel).read_bytes(), rel


@pytest.mark.slow  # generates the whole demo dataset
def test_second_call_reuses_the_complete_dataset(demo_dir):
    stamp = (demo_dir / "dataset.json").stat().st_mtime_ns
    assert demo.ensure_demo_dataset(demo_dir.parent.parent) == demo_dir
    assert (demo_dir / "dataset.json").stat().st_mtime_ns == stamp


def test_incomplete_or_interrupted_generation_is_redone(tmp_path, monkeypatch):
    target = tmp_path / "datasets" / "demo"
    real_write = demo.write_demo_dataset

    def dies_halfway(out_dir, **kw):
        real_write(out_dir, train_per_class=1, val_per_class=1)
        (Path(out_dir) / "dataset.json").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "write_demo_dataset", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        demo.ensure_demo_dataset(tmp_path)
    assert not target.exists()  # nothing half-made where readers look
    assert [p.name for p in target.parent.iterdir()] == [".demo.lock"]
    (target.parent / ".demo-tmp-killed").mkdir()  # what a SIGKILLed generation leaves behind
    monkeypatch.setattr(demo, "write_demo_dataset", lambda out: real_write(out, train_per_class=2, val_per_class=1))
    demo.ensure_demo_dataset(tmp_path)
    assert demo.is_complete_demo(target)
    (target / "images" / "train" / "000003.jpg").unlink()  # a user deleted an image
    assert not demo.is_complete_demo(target)
    demo.ensure_demo_dataset(tmp_path)
    assert (target / "images" / "train" / "000003.jpg").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [".demo.lock", "demo"]


def test_a_foreign_dataset_at_the_demo_path_is_never_replaced(tmp_path):
    target = tmp_path / "datasets" / "demo"
    target.mkdir(parents=True)
    (target / "dataset.json").write_text(json.dumps({"name": "demo", "source": "folders"}))
    with pytest.raises(FileExistsError, match="'folders' dataset, not the demo"):
        demo.ensure_demo_dataset(tmp_path)
    assert (target / "dataset.json").is_file()


def test_two_processes_racing_leave_one_complete_dataset(tmp_path):
    code = (
        "import sys; from dataset import demo\n"
        "demo.write_demo_dataset.__defaults__ = (4, 1)\n"  # small: the race, not the rendering, is under test
        "print(demo.ensure_demo_dataset(sys.argv[1]))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    target = tmp_path / "datasets" / "demo"
    assert {o[0].strip() for o in outs} == {str(target)}
    assert demo.is_complete_demo(target)
    assert len(rows(target / "train.csv")) == 48 * 4
    assert sorted(p.name for p in target.parent.iterdir()) == [".demo.lock", "demo"]


def test_prepare_demo_command_writes_the_demo(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer", "prepare", "--demo", "--data-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "classes: 48" in proc.stdout and str(tmp_path / "datasets" / "demo") in proc.stdout
    assert demo.is_complete_demo(tmp_path / "datasets" / "demo")
