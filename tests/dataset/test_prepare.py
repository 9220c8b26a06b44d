"""`cliplab prepare` on layouts built on the fly: ImageNet-val, class folders, CSV/TSV, shards."""

import csv
import json
import subprocess
import sys
from argparse import ArgumentParser
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from dataset import collect
from dataset.items import Item
from dataset.split import default_val_size, interleave_by_class, val_share
from trainer.commands import prepare as prepare_command

REPO = Path(__file__).resolve().parents[2]


def make_image(path: Path, colour=(200, 30, 30), size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)  # format from the suffix: .jpg, .png, .JPEG ...
    return path


def make_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image at all" * 10)
    return path


def make_truncated_jpeg(path: Path) -> Path:
    """Headers intact, scan data cut: PIL opens and verifies it, only decoding fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.effect_noise((128, 128), 60).convert("RGB").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    return path


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_prepare(*argv: str) -> tuple[int, str, str]:
    """Run the command in-process through its argparse front end; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    parser = ArgumentParser()
    prepare_command.add_arguments(parser)
    args = parser.parse_args([*argv, "--no-progress"])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = prepare_command.run(args)
    return code, out.getvalue(), err.getvalue()


def assert_class_interleaved(labels: list[int], n_classes: int) -> None:
    # Every full round holds each class once, so any window of n_classes rows has no repeated class.
    for start in range(0, len(labels) - n_classes + 1):
        window = labels[start : start + n_classes]
        assert len(set(window)) == n_classes, (start, window)


# ------------------------------------------------------------------------------------------- imagenet


@pytest.fixture
def imagenet_layout(tmp_path):
    """The seed's format: val.csv (image:FILE, category), classname.txt, images in a folder."""
    root = tmp_path / "imagenet"
    names = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark, white shark, man-eater"]
    root.mkdir()
    (root / "classname.txt").write_text("\n".join(names) + "\n")
    rows = [("image:FILE", "category")]
    n = 0
    for label in range(3):
        for _ in range(5):
            n += 1
            file = f"ILSVRC2012_val_{n:08d}.JPEG"
            make_image(root / "images" / file, colour=(40 * label, 90, 200))
            rows.append((file, str(label)))
    make_corrupt(root / "images" / "ILSVRC2012_val_00000099.JPEG")
    rows += [
        ("ILSVRC2012_val_00000098.JPEG", "1"),  # missing file
        ("ILSVRC2012_val_00000099.JPEG", "2"),  # corrupt file
        ("ILSVRC2012_val_00000001.JPEG", "7"),  # class index out of range
        ("ILSVRC2012_val_00000002.JPEG", "goldfish"),  # not an index
        ("", "0"),  # no file
    ]
    with (root / "val.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def test_imagenet_layout_gives_labels_template_captions_and_counts(imagenet_layout, tmp_path):
    out = tmp_path / "prepared"
    code, stdout, _ = run_prepare("imagenet", str(imagenet_layout), "--images", str(imagenet_layout / "images"),
                                  "--out", str(out), "--template", "the {}", "--val-per-class", "2")
    assert code == 0
    train, val = read_rows(out / "train.csv"), read_rows(out / "val.csv")
    assert (len(train), len(val)) == (9, 6)
    assert [int(r["label"]) for r in val] == [0, 1, 2, 0, 1, 2]
    names = ["tench", "goldfish", "great white shark"]
    for row in train + val:
        assert row["caption"] == f"the {names[int(row['label'])]}"
        assert (out / row["filepath"]).is_file()  # relative to the CSV's folder
        assert not Path(row["filepath"]).is_absolute()
    assert len({r["filepath"] for r in train + val}) == 15
    info = json.loads((out / "dataset.json").read_text())
    assert info["classes"] == names and info["source"] == "imagenet" and info["name"] == "imagenet"
    assert info["templates"][0] == "the {}" and "a photo of a {}." in info["templates"]
    assert info["counts"] == {"listed": 20, "found": 16, "missing": 1, "unreadable": 1, "bad_rows": 3,
                              "classes": 3, "train": 9, "val": 6}
    assert "missing: 1" in stdout and "unreadable: 1" in stdout and "bad rows: 3" in stdout
    assert "classes: 3  train: 9  val: 6" in stdout and "00000099.JPEG: unreadable" in stdout


def test_val_split_is_seeded_and_train_is_the_rest(imagenet_layout, tmp_path):
    def split(seed, out):
        run_prepare("imagenet", str(imagenet_layout), "--images", str(imagenet_layout / "images"),
                    "--out", str(out), "--val-per-class", "2", "--seed", str(seed))
        return tuple([r["filepath"] for r in read_rows(out / f"{s}.csv")] for s in ("train", "val"))

    a, b, c = split(0, tmp_path / "a"), split(0, tmp_path / "b"), split(5, tmp_path / "c")
    assert a == b
    assert a != c
    assert not set(a[0]) & set(a[1])


# -------------------------------------------------------------------------------------------- folders


@pytest.fixture
def folder_tree(tmp_path):
    root = tmp_path / "photos"
    for label, cls in enumerate(["cat", "dog", "golden_retriever", "zebra"]):
        for i in range(6):
            make_image(root / cls / f"{i}.{'png' if i % 2 else 'jpg'}", colour=(60 * label, 20 * i, 100))
    make_image(root / "dog" / "nested" / "deep.JPG")
    (root / "dog" / "notes.txt").write_text("not an image, not counted")
    make_corrupt(root / "cat" / "broken.jpg")
    (root / ".hidden").mkdir()
    make_image(root / ".hidden" / "x.jpg")
    return root


def test_class_folders_become_sorted_classes_with_interleaved_val(folder_tree, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run_prepare("folders", str(folder_tree), "--out", str(out), "--val-per-class", "3")
    assert code == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["classes"] == ["cat", "dog", "golden retriever", "zebra"]
    assert info["counts"]["unreadable"] == 1 and info["counts"]["listed"] == 26
    val, train = read_rows(out / "val.csv"), read_rows(out / "train.csv")
    assert len(val) == 12 and len(train) == 25 - 12
    assert_class_interleaved([int(r["label"]) for r in val], 4)
    for row in val + train:
        cls = info["classes"][int(row["label"])]
        assert row["caption"] == f"a photo of a {cls}."
        assert Path(row["filepath"]).parts[-2] in (cls.replace(" ", "_"), "nested")
    assert any(r["filepath"].endswith("nested/deep.JPG") for r in val + train)
    assert not any("broken" in r["filepath"] or ".hidden" in r["filepath"] for r in val + train)


def test_interleave_with_uneven_classes_puts_each_class_once_per_round():
    items = [Item(Path(f"/x/{c}{i}"), "c", c) for c, n in ((0, 3), (1, 1), (2, 2)) for i in range(n)]
    assert [i.label for i in interleave_by_class(items)] == [0, 1, 2, 0, 2, 0]


def test_small_classes_keep_at_least_half_their_images_for_training(folder_tree, tmp_path):
    out = tmp_path / "o"
    code, stdout, _ = run_prepare("folders", str(folder_tree), "--out", str(out), "--val-per-class", "6")
    assert code == 0 and "classes: 4  train: 13  val: 12" in stdout  # 6, 7, 6, 6 readable: 3 each to val
    assert "warning: 4 class(es) have fewer than 12 images: val took half of each" in stdout
    train = Counter(r["label"] for r in read_rows(out / "train.csv"))
    assert train == {"0": 3, "1": 4, "2": 3, "3": 3}
    tiny = tmp_path / "tiny"
    for cls, n in (("one", 1), ("two", 2), ("three", 3), ("many", 30)):
        for i in range(n):
            make_image(tiny / cls / f"{i}.png", colour=(i, 10, 10))
    code, stdout, _ = run_prepare("folders", str(tiny), "--out", str(tmp_path / "t"))  # --val-per-class 10
    assert code == 0 and "train: 24  val: 12" in stdout  # val: many 10, three 1, two 1, one 0
    assert val_share(1, 10) == 0 and val_share(3, 10) == 1 and val_share(21, 10) == 10


def test_refuses_to_overwrite_unless_asked(folder_tree, tmp_path):
    out = tmp_path / "out"
    assert run_prepare("folders", str(folder_tree), "--out", str(out))[0] == 0
    first = (out / "train.csv").read_text()
    (out / "train.csv").write_text("edited")
    code, _, err = run_prepare("folders", str(folder_tree), "--out", str(out))
    assert code == 1 and "already holds a prepared dataset" in err and "--overwrite" in err
    assert (out / "train.csv").read_text() == "edited"
    assert run_prepare("folders", str(folder_tree), "--out", str(out), "--overwrite")[0] == 0
    assert (out / "train.csv").read_text() == first


def test_default_output_is_the_data_dir_under_the_input_name(folder_tree, tmp_path):
    code, stdout, _ = run_prepare("folders", str(folder_tree), "--data-dir", str(tmp_path / "data"))
    assert code == 0
    assert (tmp_path / "data" / "datasets" / "photos" / "dataset.json").is_file()
    assert str(tmp_path / "data" / "datasets" / "photos") in stdout


def cliplab_prepare(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", "prepare", *argv, "--no-progress"], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_bad_dataset_name_is_refused_with_exit_2_before_anything_is_written(folder_tree, tmp_path):
    data = tmp_path / "data"
    for bad, why in (("../escape", "'/'"), ("my set", "' '"), (".hidden", "starts with '.'"),
                     ("-rf", "starts with '-'"), ("a..b", "'..'"), ("x" * 201, "201 bytes")):
        proc = cliplab_prepare("folders", str(folder_tree), f"--name={bad}", "--data-dir", str(data), cwd=tmp_path)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "argument --name" in proc.stderr and why in proc.stderr and "letters and digits" in proc.stderr
    assert "try 'my-set'" in cliplab_prepare("folders", str(folder_tree), "--name", "my set").stderr
    assert not data.exists() and not (tmp_path / "escape").exists()


def test_name_rule_keeps_unicode_letters_and_is_the_backends_rule():
    from backend.services import datasets as backend_datasets
    from contract.datasets import dataset_name_problem, derive_dataset_name

    for good in ("pets", "фото-кошки", "照片", "café_2024", "v1.2", "_x"):
        assert dataset_name_problem(good) is None, good
    for bad in ("", "a/b", "a\\b", "..", "a..b", ".x", "-x", "a b", "a\nb", "é" * 101):
        assert dataset_name_problem(bad) is not None, bad
    assert derive_dataset_name("фото кошки") == "фото-кошки" and derive_dataset_name("照片") == "照片"
    assert derive_dataset_name("cafe\u0301") == "caf\u00e9"  # a macOS (decomposed) folder name
    assert derive_dataset_name("../..") == "dataset" and derive_dataset_name(".my  set.") == "my-set"
    long = derive_dataset_name("照" * 100)
    assert dataset_name_problem(long) is None and len(long.encode()) <= 200
    # The backend serves exactly the names prepare writes: one rule, imported from one place.
    assert backend_datasets.dataset_name_problem is dataset_name_problem
    assert backend_datasets.IMAGE_EXTENSIONS is collect.IMAGE_EXTENSIONS and ".tiff" in collect.IMAGE_EXTENSIONS


def test_folders_named_in_other_scripts_get_distinct_dataset_names(tmp_path):
    data = tmp_path / "data"
    for folder in ("фото кошки", "照片", "写真"):
        make_image(tmp_path / folder / "cat" / "0.png")
        make_image(tmp_path / folder / "dog" / "0.png")
        assert run_prepare("folders", str(tmp_path / folder), "--data-dir", str(data))[0] == 0
    names = sorted(p.name for p in (data / "datasets").iterdir())
    assert names == sorted(["фото-кошки", "照片", "写真"])
    assert json.loads((data / "datasets" / "照片" / "dataset.json").read_text())["name"] == "照片"


def test_class_folders_without_image_files_name_the_accepted_extensions(tmp_path):
    (tmp_path / "phone" / "cat").mkdir(parents=True)
    (tmp_path / "phone" / "cat" / "IMG_1.HEIC").write_bytes(b"heic")
    (tmp_path / "phone" / "dog").mkdir()
    (tmp_path / "phone" / "dog" / "notes.txt").write_text("x")
    code, _, err = run_prepare("folders", str(tmp_path / "phone"), "--out", str(tmp_path / "o"))
    assert code == 1 and "no image files in the class folders" in err and "found: .heic, .txt" in err
    assert ".jpg" in err and ".png" in err and ".tiff" in err
    make_image(tmp_path / "phone" / "owl" / "0.png")
    make_image(tmp_path / "phone" / "owl" / "1.png")
    code, stdout, _ = run_prepare("folders", str(tmp_path / "phone"), "--out", str(tmp_path / "o"))
    assert code == 0 and "2 class folder(s) have no image files" in stdout and "cat, dog" in stdout
    assert "accepted extensions: .bmp" in stdout


def test_templates_file_is_kept_and_bad_templates_are_named(folder_tree, tmp_path):
    tfile = tmp_path / "prompts.txt"
    tfile.write_text("# prompts\na sketch of a {}.\n\nitap of a {}.\n")
    out = tmp_path / "out"
    assert run_prepare("folders", str(folder_tree), "--out", str(out), "--templates-file", str(tfile))[0] == 0
    assert json.loads((out / "dataset.json").read_text())["templates"] == [
        "a photo of a {}.", "a sketch of a {}.", "itap of a {}."]
    code, _, err = run_prepare("folders", str(folder_tree), "--out", str(tmp_path / "o2"), "--template", "a photo")
    assert code == 1 and "--template 'a photo'" in err and "{}" in err
    tfile.write_text("fine {}\nbroken\n")
    code, _, err = run_prepare("folders", str(folder_tree), "--out", str(tmp_path / "o3"),
                               "--templates-file", str(tfile))
    assert code == 1 and f"{tfile}:2" in err


def test_nothing_readable_fails_with_a_clear_error(tmp_path):
    root = tmp_path / "bad"
    make_corrupt(root / "a" / "1.jpg")
    make_corrupt(root / "b" / "2.png")
    code, _, err = run_prepare("folders", str(root), "--out", str(tmp_path / "out"))
    assert code == 1 and "no readable images" in err and "2 listed" in err and "2 unreadable" in err
    assert "1.jpg: unreadable" in err
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_truncated_jpeg_is_caught_only_when_decoding(tmp_path):
    root = tmp_path / "t"
    make_image(root / "a" / "ok.jpg")
    make_truncated_jpeg(root / "a" / "cut.jpg")
    _, out_verify, _ = run_prepare("folders", str(root), "--out", str(tmp_path / "o1"))
    _, out_decode, _ = run_prepare("folders", str(root), "--out", str(tmp_path / "o2"), "--decode")
    assert "unreadable: 0" in out_verify
    assert "unreadable: 1" in out_decode and "cut.jpg" in out_decode


# ------------------------------------------------------------------------------------------------- csv


def test_caption_csv_with_seed_columns_skips_bad_rows_and_missing_files(tmp_path):
    root = tmp_path / "pairs"
    for i in range(40):
        make_image(root / "img" / f"{i}.jpg", colour=(i * 5, 0, 0))
    lines = ["link,caption,extra"] + [f"img/{i}.jpg,caption number {i},x" for i in range(40)]
    lines += ["img/0.jpg,,x", ",orphan caption,x", "img/missing.jpg,a missing one,x", "img/short.jpg",
              "img/1.jpg,unquoted, comma,x"]
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, stdout, _ = run_prepare("csv", str(root / "pairs.csv"), "--image-column", "link", "--out", str(out),
                                  "--val-size", "5")
    assert code == 0
    train, val = read_rows(out / "train.csv"), read_rows(out / "val.csv")
    assert (len(train), len(val)) == (35, 5)
    assert list(train[0]) == ["filepath", "caption"]  # no label column without labels
    by_path = {r["filepath"]: r["caption"] for r in train + val}
    assert by_path["../pairs/img/7.jpg"] == "caption number 7"
    info = json.loads((out / "dataset.json").read_text())
    assert info["classes"] is None and info["name"] == "pairs"
    assert info["counts"] == {"listed": 45, "found": 40, "missing": 1, "unreadable": 0, "bad_rows": 4,
                              "classes": None, "train": 35, "val": 5}
    assert "pairs.csv:42: empty caption" in stdout and "pairs.csv:43: empty link" in stdout
    assert "pairs.csv:45: fewer fields" in stdout and "pairs.csv:46: more fields" in stdout


def test_missing_column_error_lists_the_header(tmp_path):
    (tmp_path / "x.csv").write_text("link,text\na.jpg,hello\n")
    code, _, err = run_prepare("csv", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o"))
    assert code == 1 and "'filepath', 'caption' not found" in err and "'link', 'text'" in err


def test_tsv_with_class_name_labels_is_split_per_class(tmp_path):
    root = tmp_path / "tsv"
    lines = ["path\ttext\tanimal"]
    for i in range(12):
        animal = ["owl", "cat", "bee"][i % 3]
        make_image(root / f"{i}.png", colour=(i * 20, 50, 50))
        lines.append(f"{i}.png\ta photo, with a comma, of a {animal}\t{animal}")
    (root / "list.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, _, _ = run_prepare("csv", str(root / "list.tsv"), "--image-column", "path", "--caption-column", "text",
                             "--label-column", "animal", "--val-per-class", "1", "--out", str(out))
    assert code == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["classes"] == ["bee", "cat", "owl"]
    val = read_rows(out / "val.csv")
    assert [r["label"] for r in val] == ["0", "1", "2"]
    for row in val + read_rows(out / "train.csv"):
        assert row["caption"].endswith(info["classes"][int(row["label"])])


def test_integer_labels_use_classnames_and_out_of_range_rows_are_bad(tmp_path):
    root = tmp_path / "ints"
    (root / "names.txt").parent.mkdir(parents=True)
    (root / "names.txt").write_text("kite, a toy\nboat\n")
    lines = ['filepath,caption,y']
    for i in range(6):
        make_image(root / f"{i}.jpg")
        lines.append(f'{i}.jpg,"a caption\nspanning two lines",{i % 2}')
    lines.append("0.jpg,label out of range,5")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, stdout, _ = run_prepare("csv", str(root / "pairs.csv"), "--label-column", "y", "--classnames",
                                  str(root / "names.txt"), "--val-per-class", "1", "--out", str(out))
    assert code == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["classes"] == ["kite", "boat"] and info["counts"]["bad_rows"] == 1
    assert "label 5 is not a class index 0..1" in stdout
    train, val = read_rows(out / "train.csv"), read_rows(out / "val.csv")
    assert [r["label"] for r in val] == ["0", "1"] and len(train) == 4
    assert all(r["caption"] == "a caption\nspanning two lines" for r in train + val)


def test_classnames_with_a_non_integer_label_makes_that_row_bad_instead_of_being_ignored(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "names.txt").write_text("kite\nboat\n")
    lines = ["filepath,caption,y"] + [f"{i}.jpg,caption {i},{i % 2}" for i in range(6)] + ["0.jpg,typo,x"]
    for i in range(6):
        make_image(root / f"{i}.jpg")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, stdout, _ = run_prepare("csv", str(root / "pairs.csv"), "--label-column", "y", "--classnames",
                                  str(root / "names.txt"), "--out", str(out))
    assert code == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["classes"] == ["kite", "boat"] and info["counts"]["bad_rows"] == 1
    assert "label x is not a class index 0..1" in stdout


def write_pairs(root: Path, n_images: int, captions_per_image: int = 1, name: str = "pairs.csv") -> Path:
    lines = ["filepath,caption"]
    for i in range(n_images):
        make_image(root / "img" / f"{i}.png", colour=(i * 7 % 256, 0, 0))
        lines += [f"img/{i}.png,image {i} caption {k}" for k in range(captions_per_image)]
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


def test_default_val_split_holds_two_pairs_or_none(tmp_path):
    assert [default_val_size(n) for n in (0, 1, 2, 3, 4, 39, 40, 60, 10**6)] == [0, 0, 0, 0, 2, 2, 2, 3, 1000]
    for n, val in ((3, 0), (4, 2), (39, 2)):
        out = tmp_path / f"o{n}"
        code, stdout, _ = run_prepare("csv", str(write_pairs(tmp_path / f"d{n}", n)), "--out", str(out))
        assert code == 0 and f"train: {n - val}  val: {val}" in stdout
        assert len(read_rows(out / "val.csv")) == val
    _, stdout, _ = run_prepare("csv", str(write_pairs(tmp_path / "d3", 3)), "--out", str(tmp_path / "x"))
    assert "val has 0 pair(s)" in stdout and "no val split under 4 pairs" in stdout and "data.val" in stdout


def test_val_size_that_leaves_no_train_pairs_fails_with_exit_2_and_writes_nothing(tmp_path):
    pairs = write_pairs(tmp_path / "d", 5)
    for size in ("5", "9"):
        code, _, err = run_prepare("csv", str(pairs), "--out", str(tmp_path / "o"), "--val-size", size)
        assert code == 2 and f"--val-size {size} leaves nothing to train on" in err and "smaller --val-size" in err
    assert not (tmp_path / "o").exists()
    assert run_prepare("csv", str(pairs), "--out", str(tmp_path / "o"), "--val-size", "4")[0] == 0


def test_all_captions_of_an_image_land_on_the_same_side(tmp_path):
    pairs = write_pairs(tmp_path / "d", 20, captions_per_image=3)
    for seed in range(5):
        out = tmp_path / f"o{seed}"
        code, stdout, _ = run_prepare("csv", str(pairs), "--out", str(out), "--val-size", "4", "--seed", str(seed))
        assert code == 0 and "train: 54  val: 6" in stdout  # whole images: two of them cover 4 pairs
        train, val = read_rows(out / "train.csv"), read_rows(out / "val.csv")
        assert not {r["filepath"] for r in train} & {r["filepath"] for r in val}
        assert all(n == 3 for n in Counter(r["filepath"] for r in val).values())


def test_mostly_missing_images_hint_at_the_folder_relative_paths_were_resolved_against(tmp_path):
    write_pairs(tmp_path, 6)
    lines = ["filepath,caption"] + [f"img/{i}.png,c{i}" for i in range(6)]  # relative to tmp_path, not sub/
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pairs.csv").write_text("\n".join(lines) + "\n")
    code, _, err = run_prepare("csv", str(tmp_path / "sub" / "pairs.csv"), "--out", str(tmp_path / "o"))
    assert code == 1 and "no readable images" in err
    assert f"relative image paths are resolved against {tmp_path / 'sub'} (the folder of pairs.csv" in err
    assert "--images" in err
    (tmp_path / "sub" / "pairs.csv").write_text("\n".join(lines + ["../img/0.png,found", "../img/1.png,found"]))
    code, stdout, _ = run_prepare("csv", str(tmp_path / "sub" / "pairs.csv"), "--out", str(tmp_path / "o"))
    assert code == 0 and "warning: 6 of 8 images are missing; relative image paths are resolved against" in stdout
    code, stdout, _ = run_prepare("csv", str(tmp_path / "sub" / "pairs.csv"), "--out", str(tmp_path / "o2"),
                                  "--images", str(tmp_path))
    assert code == 0 and "missing: 2" in stdout and "resolved against" not in stdout  # most were found


def test_demo_refuses_options_it_would_ignore(tmp_path):
    data = tmp_path / "data"
    code, _, err = run_prepare("--demo", "--name", "mydemo", "--data-dir", str(data))
    assert code == 2 and "does not use --name" in err and "--out, --data-dir and --overwrite" in err
    code, _, err = run_prepare("folders", str(tmp_path), "--demo", "--data-dir", str(data))
    assert code == 2 and "a source (folders)" in err and f"an input ({tmp_path})" in err
    assert not data.exists()



def test_shards_and_the_other_sources_refuse_options_they_would_ignore(folder_tree, tmp_path):
    out = tmp_path / "ds"
    assert run_prepare("folders", str(folder_tree), "--out", str(out), "--val-per-class", "2")[0] == 0
    code, _, err = run_prepare("shards", str(out / "train.csv"), "--val-size", "10", "--template", "a {}.",
                               "--out", str(tmp_path / "shards"))
    assert code == 2 and "does not use --template, --val-size;" in err and "--shard-size" in err, err
    assert not (tmp_path / "shards").exists()
    code, _, err = run_prepare("folders", str(folder_tree), "--out", str(tmp_path / "o"), "--shard-size", "5")
    assert code == 2 and "--shard-size is for `prepare shards`" in err, err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------- real subprocess


def test_cliplab_prepare_runs_as_a_subprocess(folder_tree, tmp_path):
    out = tmp_path / "sub"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "prepare", "folders", str(folder_tree), "--out", str(out),
         "--val-per-class", "2", "--name", "pets"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "classes: 4  train: 17  val: 8" in proc.stdout
    assert json.loads((out / "dataset.json").read_text())["name"] == "pets"
    assert "checking images" in proc.stderr  # the progress bar
    bad = subprocess.run([sys.executable, "-m", "trainer", "prepare", "folders", str(tmp_path / "nowhere")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "nowhere is not a directory" in bad.stderr


def test_prepare_stays_torch_free():
    code = ("import sys, trainer.commands.prepare, dataset.prepare, dataset.demo, dataset.templates, dataset.shards\n"
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# ---------------------------------------------------------------------------------------------- shards


def test_shards_source_writes_tar_shards_from_a_prepared_csv(folder_tree, tmp_path):
    out = tmp_path / "ds"
    assert run_prepare("folders", str(folder_tree), "--out", str(out), "--val-per-class", "2")[0] == 0
    code, stdout, err = run_prepare("shards", str(out / "train.csv"), "--out", str(tmp_path / "shards"),
                                    "--shard-size", "5", "--name", "pets")
    assert code == 0, err
    tars = sorted((tmp_path / "shards").glob("pets-*.tar"))
    assert [t.name for t in tars] == [f"pets-{i:06d}.tar" for i in range(4)]  # 17 pairs, 5 per shard
    assert "wrote 4 shard(s)" in stdout
    code, _, err = run_prepare("shards", str(out / "train.csv"), "--out", str(tmp_path / "shards"), "--name", "pets")
    assert code == 1 and "already holds shards" in err


def test_train_and_val_shards_share_a_folder_under_default_names_with_one_summary(folder_tree, tmp_path):
    out = tmp_path / "pets"
    assert run_prepare("folders", str(folder_tree), "--out", str(out), "--val-per-class", "2")[0] == 0
    code, stdout, err = run_prepare("shards", str(out / "train.csv"), "--shard-size", "5")
    assert code == 0, err
    code, val_stdout, err = run_prepare("shards", str(out / "val.csv"), "--shard-size", "5")
    assert code == 0, err
    names = sorted(p.name for p in (out / "shards").iterdir())
    assert names == ["dataset.json", *[f"pets-train-{i:06d}.tar" for i in range(4)], "pets-train.index.json",
                     "pets-val-000000.tar", "pets-val-000001.tar", "pets-val.index.json"]
    assert stdout.count("wrote") == 1 and "wrote 4 shard(s)" in stdout and "pairs: 17  left out: 0" in stdout
    assert f"data.train='{out / 'shards' / 'pets-train-{000000..000003}.tar'}'" in stdout
    assert f"data.val='{out / 'shards' / 'pets-val-{000000..000001}.tar'}'" in val_stdout


def test_shards_overwrite_replaces_the_shards_of_that_name_and_their_index(folder_tree, tmp_path):
    out = tmp_path / "ds"
    assert run_prepare("folders", str(folder_tree), "--out", str(out), "--val-per-class", "2")[0] == 0
    shards = tmp_path / "shards"
    args = ("shards", str(out / "train.csv"), "--out", str(shards), "--name", "pets")
    assert run_prepare(*args, "--shard-size", "5")[0] == 0
    assert run_prepare("shards", str(out / "val.csv"), "--out", str(shards), "--name", "pets-val")[0] == 0
    code, _, err = run_prepare(*args, "--shard-size", "10")
    assert code == 1 and "already holds shards named pets" in err
    assert "--overwrite" in err and "--name" in err and "--out" in err and "out_dir" not in err
    code, _, err = run_prepare(*args, "--shard-size", "10", "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in shards.glob("pets-0*.tar")) == ["pets-000000.tar", "pets-000001.tar"]
    index = json.loads((shards / "pets.index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [10, 7]
    assert (shards / "pets-val-000000.tar").is_file()  # another name's shards stay


def test_shards_with_decode_leave_out_truncated_images_packed_without_it(tmp_path):
    root = tmp_path / "t"
    for i in range(3):
        make_image(root / "a" / f"{i}.jpg")
    make_truncated_jpeg(root / "a" / "cut.jpg")
    out = tmp_path / "ds"
    assert run_prepare("folders", str(root), "--out", str(out), "--val-per-class", "0")[0] == 0  # verify passes it
    args = ("shards", str(out / "train.csv"), "--out", str(tmp_path / "s"), "--name", "d")
    code, stdout, err = run_prepare(*args)
    assert code == 0 and "pairs: 4  left out: 0" in stdout, err
    code, stdout, err = run_prepare(*args, "--overwrite", "--decode")
    assert code == 0 and "pairs: 3  left out: 1" in stdout, err
    assert "a/cut.jpg: OSError: image file is truncated" in stdout


def test_a_url_in_the_image_column_is_a_bad_row_that_says_urls_are_not_downloaded(tmp_path):
    root = tmp_path / "web"
    root.mkdir()
    for i in range(4):
        make_image(root / f"{i}.jpg")
    lines = ["link,caption"] + [f"{i}.jpg,local {i}" for i in range(4)] + ["https://example.com/a.jpg,a web image"]
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, stdout, stderr = run_prepare("csv", str(root / "pairs.csv"), "--image-column", "link", "--out", str(out))
    assert code == 0, stderr
    assert "link is a URL (https://example.com/a.jpg); prepare reads local files only" in stdout
    assert json.loads((out / "dataset.json").read_text())["counts"]["bad_rows"] == 1
