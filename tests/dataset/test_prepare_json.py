"""`cliplab prepare json`: COCO captions, JSON arrays of records and JSON Lines, told apart by their content.
Several captions per image become several rows, on one side of the split; hostile files get errors naming the
file, the line or record and the key; a prepared JSON dataset trains."""

import json
from collections import Counter
from pathlib import Path

import pytest

from contract.events import read_events

from tests.dataset.test_prepare import make_image, read_rows, run_prepare
from tests.train_support import read_metrics, run_trainer, tiny_config, train_env, write_config


def photos(root: Path, n: int) -> Path:
    for i in range(n):
        make_image(root / "img" / f"{i}.jpg", colour=(i * 15 % 256, 80, 200 - i * 9 % 200), size=(32, 32))
    return root


def coco(n_images: int, captions_per_image: int = 3) -> dict:
    """A COCO captions document: images [{id, file_name, ...}], annotations [{id, image_id, caption}]."""
    images = [{"id": 100 + i, "file_name": f"{i}.jpg", "width": 32, "height": 32} for i in range(n_images)]
    annotations = [{"id": len(images) * k + i, "image_id": 100 + i, "caption": f"photo {i}, caption {k}"}
                   for k in range(captions_per_image) for i in range(n_images)]  # COCO lists them interleaved
    return {"info": {"year": 2014}, "images": images, "annotations": annotations}


def write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")
    return path


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def all_rows(out: Path) -> tuple[list[dict], list[dict]]:
    return read_rows(out / "train.csv"), read_rows(out / "val.csv")


def assert_images_on_one_side(train: list[dict], val: list[dict], captions_per_image: int) -> None:
    assert not {r["filepath"] for r in train} & {r["filepath"] for r in val}
    assert set(Counter(r["filepath"] for r in train + val).values()) == {captions_per_image}


# -------------------------------------------------------------------------------------------- formats


def test_coco_captions_give_a_row_per_caption_with_each_image_on_one_side(tmp_path):
    root = photos(tmp_path / "coco", 20)
    captions = write_json(root / "annotations" / "captions_train.json", coco(20))
    for seed in range(3):
        out = tmp_path / f"out{seed}"
        code, stdout, err = run_prepare("json", str(captions), "--images", str(root / "img"), "--out", str(out),
                                        "--val-size", "5", "--seed", str(seed))
        assert code == 0, err
        assert "(read as COCO captions)" in stdout and "train: 54  val: 6" in stdout  # whole images: 2 cover 5
        train, val = all_rows(out)
        assert_images_on_one_side(train, val, 3)
    by_file = {}
    for row in train + val:
        by_file.setdefault(Path(row["filepath"]).name, set()).add(row["caption"])
    assert by_file["7.jpg"] == {"photo 7, caption 0", "photo 7, caption 1", "photo 7, caption 2"}
    info = json.loads((out / "dataset.json").read_text())
    assert info["source"] == "json" and info["format"] == "COCO captions" and info["name"] == "captions_train"
    assert info["classes"] is None and info["caption_template"] is None
    assert info["counts"] == {"listed": 60, "found": 60, "missing": 0, "unreadable": 0, "bad_rows": 0,
                              "classes": None, "train": 54, "val": 6}


def test_json_lines_with_chosen_keys_labels_and_caption_lists(tmp_path):
    root = photos(tmp_path / "pets", 12)
    animals = ["owl", "cat", "bee"]
    lines = [{"path": f"img/{i}.jpg", "texts": [f"a {animals[i % 3]} {i}", f"one more {i}"], "kind": animals[i % 3]}
             for i in range(12)]
    source = write_lines(root / "pets.jsonl", lines[:6] + [""] + lines[6:])  # a blank line is no record
    out = tmp_path / "out"
    code, stdout, err = run_prepare("json", str(source), "--image-column", "path", "--caption-column", "texts",
                                    "--label-column", "kind", "--val-per-class", "1", "--out", str(out))
    assert code == 0, err
    assert "(read as JSON Lines)" in stdout and "classes: 3  train: 18  val: 6" in stdout
    info = json.loads((out / "dataset.json").read_text())
    assert info["classes"] == ["bee", "cat", "owl"] and info["format"] == "JSON Lines"
    train, val = all_rows(out)
    assert_images_on_one_side(train, val, 2)
    assert Counter(r["label"] for r in val) == {"0": 2, "1": 2, "2": 2}  # one image (two captions) per class
    for row in train + val:
        assert info["classes"][int(row["label"])] == animals[int(Path(row["filepath"]).stem) % 3]


def test_a_json_array_of_records_with_integer_labels_and_classnames(tmp_path):
    root = photos(tmp_path / "arr", 8)
    (root / "names.txt").write_text("kite\nboat\n")
    records = [{"image": f"img/{i}.jpg", "caption": f"thing {i}", "label": i % 2} for i in range(8)]
    out = tmp_path / "out"
    code, stdout, err = run_prepare("json", str(write_json(root / "pairs.json", records)), "--label-column", "label",
                                    "--classnames", str(root / "names.txt"), "--val-per-class", "1", "--out", str(out))
    assert code == 0, err
    assert "(read as a JSON array of records)" in stdout and "classes: 2  train: 6  val: 2" in stdout
    assert json.loads((out / "dataset.json").read_text())["classes"] == ["kite", "boat"]
    assert [r["label"] for r in read_rows(out / "val.csv")] == ["0", "1"]


def test_labelled_captions_of_one_image_never_straddle_the_split(tmp_path):
    """split_by_class takes whole images: before, three captions of one photo could land on both sides."""
    root = photos(tmp_path / "d", 16)
    records = [{"image": f"img/{i}.jpg", "caption": f"{i} says {k}", "label": i % 2}
               for i in range(16) for k in range(3)]
    source = write_json(root / "pairs.json", records)
    for seed in range(4):
        out = tmp_path / f"o{seed}"
        code, stdout, err = run_prepare("json", str(source), "--label-column", "label", "--val-per-class", "2",
                                        "--seed", str(seed), "--out", str(out))
        assert code == 0, err
        assert "classes: 2  train: 36  val: 12" in stdout  # 2 images x 3 captions x 2 classes
        assert_images_on_one_side(*all_rows(out), 3)


# --------------------------------------------------------------------------------------- bad records


def test_coco_bad_entries_are_bad_rows_named_by_index_and_key(tmp_path):
    root = photos(tmp_path / "coco", 6)
    doc = coco(6, captions_per_image=1)
    doc["images"] += [{"id": 101, "file_name": "dup.jpg"}, {"id": 200}, {"id": 300, "file_name": "7.jpg"}]
    doc["annotations"] += [{"image_id": 999, "caption": "nobody's"}, {"image_id": 102, "caption": 42},
                           {"image_id": 200, "caption": "no file"}, {"image_id": 103}]
    code, stdout, err = run_prepare("json", str(write_json(root / "caps.json", doc)), "--images", str(root / "img"),
                                    "--out", str(tmp_path / "out"))
    assert code == 0, err
    where = f"{root / 'caps.json'}: "
    assert where + "images[6]: id 101 is the id of an earlier entry too" in stdout
    assert where + "images[7]: no 'file_name' key" in stdout
    assert where + "annotations[6]: image_id 999 is not the id of any entry of images" in stdout
    assert where + "annotations[7]: 'caption' is a number (42), expected a string" in stdout
    assert "warning: 1 of the 8 entries of images have no caption" in stdout  # id 300
    assert where + "annotations[8]: its image (id 200) has an unusable file_name (named above)" in stdout
    assert "images listed: 12  found: 6" in stdout and "bad rows: 6" in stdout


def test_record_errors_name_the_line_or_index_and_the_key(tmp_path):
    root = photos(tmp_path / "d", 6)
    lines = [{"image": f"img/{i}.jpg", "caption": f"c{i}"} for i in range(5)]
    lines += [{"img": "img/5.jpg", "caption": "x"},  # line 6
              {"image": "img/5.jpg", "caption": None},  # line 7
              {"image": "img/5.jpg", "caption": ["fine", 3]},  # line 8
              '{"image": "img/5.jpg", "caption": "unclosed}',  # line 9
              {"image": 5, "caption": "x"},  # line 10
              ["img/5.jpg", "x"],  # line 11
              {"image": "https://example.com/5.jpg", "caption": "web"},  # line 12
              {"image": "img/gone.jpg", "caption": "gone"}]  # line 13: a missing file, as the csv source counts it
    source = write_lines(root / "pairs.jsonl", lines)
    code, stdout, err = run_prepare("json", str(source), "--out", str(tmp_path / "out"))
    assert code == 0, err
    skipped = [line.removeprefix("  skipped: ") for line in stdout.splitlines() if line.startswith("  skipped: ")]
    assert skipped[:5] == [  # in file order, the first five (MAX_EXAMPLES)
        f"{source}:6: no 'image' key (its keys: 'img', 'caption')",
        f"{source}:7: 'caption' is null, expected a string (or a list of strings)",
        f"{source}:8: 'caption' holds a number (3), expected a string (or a list of strings)",
        f"{source}:9:35: invalid JSON: Unterminated string starting at",
        f"{source}:10: 'image' is a number (5), expected an image path (a non-empty string)",
    ]
    assert skipped[5:] == [f"{root / 'img' / 'gone.jpg'}: missing"]  # the image check's, as for a CSV
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["counts"]["bad_rows"] == 7 and info["counts"]["missing"] == 1
    array = write_json(root / "pairs.json", lines[:5] + [{"image": "img/5.jpg", "text": "x"}] + lines[10:12])
    code, stdout, _ = run_prepare("json", str(array), "--out", str(tmp_path / "out2"))
    assert code == 0 and f"{array}: record [5]: no 'caption' key (its keys: 'image', 'text')" in stdout
    assert f'{array}: record [6]: a list (["img/5.jpg", "x"]), expected an object like {{"image": ...' in stdout
    assert f"{array}: record [7]: image is a URL (https://example.com/5.jpg); prepare reads local files" in stdout


def test_a_key_no_record_has_is_an_error_naming_the_keys_there(tmp_path):
    root = photos(tmp_path / "d", 2)
    source = write_lines(root / "p.jsonl", [{"Image": f"img/{i}.jpg", "text": "x"} for i in range(2)])
    code, _, err = run_prepare("json", str(source), "--out", str(tmp_path / "o"))
    assert code == 1
    assert f"{source}: no record has the key 'image' (the first record's keys: 'Image', 'text')" in err
    assert "--image-column" in err and "did you mean 'Image' for 'image'?" in err
    code, _, err = run_prepare("json", str(source), "--image-column", "Image", "--out", str(tmp_path / "o"))
    assert code == 1 and "no record has the key 'caption'" in err and "--caption-column" in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------ hostile files


def test_invalid_json_in_a_document_names_line_and_column(tmp_path):
    root = photos(tmp_path / "d", 2)
    broken = root / "caps.json"
    broken.write_text('{\n  "images": [{"id": 1, "file_name": "0.jpg"}],\n  "annotations": [\n'
                      '    {"image_id": 1, "caption": "a",}\n  ]\n}\n')
    code, _, err = run_prepare("json", str(broken), "--out", str(tmp_path / "o"))
    assert code == 1 and "Traceback" not in err
    assert f"{broken}:4:36: invalid JSON: Expecting property name enclosed in double quotes" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty; expected COCO captions"),
    (b" \n\n\t\n", "is empty (only whitespace)"),
    (b'[{"image": "img/0.jpg", "caption": "caf\xe9"}]', "pairs.json:1: byte b'\\xe9' is not UTF-8"),
    ('[{"image": "img/0.jpg", "caption": "x"}]'.encode("utf-16"), "is UTF-16"),
    (b"42", "holds a number (42); expected COCO captions"),
    (b"[]", "holds an empty list: no pairs to prepare"),
    (b'{"images": [], "annotations": []}', "'annotations' is empty: no captions to prepare"),
    (b'{"images": [{"id": 1, "file_name": "0.jpg"}], "annotations": [{"image_id": 1, "bbox": [0, 0, 2, 2]}]}',
     "no annotation has a 'caption'"),
])
def test_hostile_files_are_errors_naming_the_file_and_the_problem(tmp_path, content, expected):
    root = photos(tmp_path / "d", 1)
    (root / "pairs.json").write_bytes(content)
    code, stdout, err = run_prepare("json", str(root / "pairs.json"), "--out", str(tmp_path / "o"))
    assert code == 1 and stdout == "" and "Traceback" not in err
    assert err.startswith(f"cliplab prepare: error: {root / 'pairs.json'}") and expected in err
    assert not (tmp_path / "o").exists()


def test_a_leading_bom_is_read_and_one_inside_the_file_names_its_line(tmp_path):
    root = photos(tmp_path / "d", 4)
    lines = [json.dumps({"image": f"img/{i}.jpg", "caption": f"c{i}"}) for i in range(4)]
    (root / "bom.jsonl").write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    code, stdout, err = run_prepare("json", str(root / "bom.jsonl"), "--out", str(tmp_path / "o1"))
    assert code == 0 and "images listed: 4" in stdout and "bad rows: 0" in stdout, err
    (root / "cat.jsonl").write_text("\n".join(lines[:2] + ["\ufeff" + lines[2]] + lines[3:]) + "\n", encoding="utf-8")
    code, stdout, err = run_prepare("json", str(root / "cat.jsonl"), "--out", str(tmp_path / "o2"))
    assert code == 0, err
    assert f"{root / 'cat.jsonl'}:3:1: a byte-order mark (U+FEFF) inside the file" in stdout


def test_options_a_json_file_cannot_use_are_usage_errors(tmp_path):
    root = photos(tmp_path / "d", 2)
    captions = write_json(root / "caps.json", coco(2))
    code, _, err = run_prepare("json", str(captions), "--label-column", "label", "--out", str(tmp_path / "o"))
    assert code == 2 and "is COCO captions, whose keys are fixed" in err and "drop --label-column" in err
    records = write_json(root / "pairs.json", [{"image": "img/0.jpg", "caption": "x"}])
    code, _, err = run_prepare("json", str(records), "--delimiter", ";", "--out", str(tmp_path / "o"))
    assert code == 2 and "--delimiter is for csv" in err
    assert not (tmp_path / "o").exists()


def test_coco_images_beside_the_annotations_folder_get_the_images_hint(tmp_path):
    root = photos(tmp_path / "coco", 4)
    captions = write_json(root / "annotations" / "caps.json", coco(4))
    code, _, err = run_prepare("json", str(captions), "--out", str(tmp_path / "o"))
    assert code == 1 and "no readable images (12 listed, 12 missing" in err
    assert f"resolved against {root / 'annotations'} (the folder of caps.json; choose another with --images)" in err


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.slow  # a trainer subprocess
def test_a_prepared_coco_dataset_trains_by_name(tmp_path):
    root = photos(tmp_path / "coco", 16)
    captions = write_json(root / "captions.json", coco(16, captions_per_image=2))
    data_dir = tmp_path / "data"
    code, stdout, err = run_prepare("json", str(captions), "--images", str(root / "img"), "--data-dir",
                                    str(data_dir), "--name", "mycoco", "--val-size", "4")
    assert code == 0 and "train: 28  val: 4" in stdout, err
    cfg = tiny_config(tmp_path, data={"train": "mycoco", "val": "mycoco", "num_workers": 0},
                      train={"steps": 2, "batch_size": 4, "log_every": 1},
                      eval={"every": 2, "batch_size": 4, "matrix_size": 4}, checkpoint={"every": 2})
    run_dir = tmp_path / "run"
    done = run_trainer([str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)],
                       train_env(data_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert [row["step"] for row in read_metrics(run_dir / "metrics.csv") if row["train_loss"]] == ["1", "2"]
    evals = [e for e in read_events(run_dir / "events.jsonl") if e["kind"] == "eval"]
    assert evals and evals[-1]["step"] == 2
