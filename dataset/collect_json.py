"""JSON caption sources, told apart by their content:

    {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": "..."}]}  COCO
    [{"image": "a.jpg", "caption": "..."}, ...]                                                       an array
    {"image": "a.jpg", "caption": "..."}     one object per line                                      JSON Lines

Every caption is one pair, so an image with several captions gives several rows (the split keeps them on one
side). Record keys are chosen like CSV columns (--image-column, --caption-column, --label-column; default
image, caption); a record's caption may be a string or a list of strings. A record or annotation that cannot
be used is a bad row named by file and line (JSON Lines) or index (`record [3]`, `annotations[17]`) and key; a
file that cannot be read at all (empty, not UTF-8, invalid JSON in one document: line and column) raises
PrepareError. Image paths are resolved and checked as the CSV source's are (dataset.collect, dataset.checks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.table import read_table_text
from dataset.collect import (
    Collected,
    assign_labels,
    header_hint,
    path_base,
    read_classnames,
    resolve_image,
    url_problem,
)
from dataset.items import Item
from dataset.problems import OptionError, PrepareError

EXPECTED = ('COCO captions ({"images": [...], "annotations": [...]}), a JSON array of records or JSON Lines '
            '(one {"image": ..., "caption": ...} object per line)')
_KINDS = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
          list: "a list", dict: "an object"}


@dataclass
class _RecordKeys:
    """The keys of a record that hold the image path, the caption(s) and, optionally, the label."""

    image: str = "image"
    caption: str = "caption"
    label: str | None = None


def collect_json(path: Path, image_key: str | None = None, caption_key: str | None = None,
                 label_key: str | None = None, images: Path | None = None,
                 classnames: Path | None = None) -> Collected:
    """The pairs of a COCO captions file, a JSON array of records or a JSON Lines file (detected from the
    content); image paths are relative to `images` (default: the file's folder). Keys given for a COCO file
    are an OptionError: its keys are fixed."""
    text = _read_text(path)
    value, is_document = _parse(path, text)
    out = Collected(items=[], classes=None, path_base=path_base(path, images))
    base = images or path.parent
    if is_document and _is_coco(value):
        _refuse_keys_for_coco(path, image_key, caption_key, label_key)
        out.layout = "COCO captions"
        _collect_coco(path, value, base, out)
        return out
    keys = _RecordKeys(image_key or "image", caption_key or "caption", label_key)
    if not is_document:
        out.layout, records = "JSON Lines", _json_lines(path, text)
    elif isinstance(value, list):
        out.layout, records = "a JSON array of records", [(f"{path}: record [{i}]", r) for i, r in enumerate(value)]
    elif isinstance(value, dict):
        out.layout, records = "a JSON object (one record)", [(f"{path}: the record", value)]
    else:
        raise PrepareError(f"{path} holds {_describe(value)}; expected {EXPECTED}")
    if not records:
        raise PrepareError(f"{path} holds an empty list: no pairs to prepare; expected {EXPECTED}")
    _collect_records(path, records, keys, base, out, classnames)
    return out


def _describe(value: Any) -> str:
    """A JSON value as an error names it: 'null', 'a number (42)', 'an empty string', 'a list ([1, 2])'."""
    if value is None:
        return "null"
    if value == "":
        return "an empty string"
    shown = json.dumps(value, ensure_ascii=False)
    return f"{_KINDS.get(type(value), 'a value')} ({shown[:40]}{'...' if len(shown) > 40 else ''})"


def _read_text(path: Path) -> str:
    """The file's text (a UTF-8 BOM dropped); PrepareError for UTF-16, a DataError naming the line of a byte
    that is not UTF-8 (contract.table, as for CSVs), PrepareError for an empty file."""
    try:
        with path.open("rb") as f:
            head = f.read(2)
    except OSError as exc:
        raise PrepareError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if head in (b"\xff\xfe", b"\xfe\xff"):  # what Windows tools write as "Unicode"
        raise PrepareError(f"{path} is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8 "
                           f"(e.g. `iconv -f utf-16 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`)")
    text = read_table_text(path)
    if not text.strip():
        raise PrepareError(f"{path} is empty{' (only whitespace)' if text else ''}; expected {EXPECTED}")
    return text


def _parse(path: Path, text: str) -> tuple[Any, bool]:
    """(the value, True) for a file that is one JSON document; (None, False) for JSON Lines: a document that
    does not parse, whose first line is an object of its own. Else PrepareError with the line and column."""
    try:
        return json.loads(text), True
    except json.JSONDecodeError as exc:
        if _first_line_is_a_record(text):
            return None, False
        raise PrepareError(f"{path}:{exc.lineno}:{exc.colno}: {_syntax_problem(exc)}") from None


def _first_line_is_a_record(text: str) -> bool:
    first = next(line for line in text.split("\n") if line.strip())
    try:
        value = json.loads(first)
    except json.JSONDecodeError:
        return False
    # A one-line COCO file with something after it is a broken document, not JSON Lines.
    return isinstance(value, dict) and not _is_coco(value)


def _syntax_problem(exc: json.JSONDecodeError) -> str:
    """What is wrong at a JSON syntax error's position, in words."""
    if exc.doc[exc.pos:exc.pos + 1] == "\ufeff":
        return ("a byte-order mark (U+FEFF) inside the file, where JSON allows none (files joined with `cat` keep "
                "each one's mark): delete it")
    return f"invalid JSON: {exc.msg}"


@dataclass
class _Unparsed:
    """A line of JSON Lines that is not JSON: a bad row in its place among the records."""

    column: int
    problem: str


def _json_lines(path: Path, text: str) -> list[tuple[str, Any]]:
    """(where, value) of each non-blank line; _Unparsed for a line that is not JSON."""
    records: list[tuple[str, Any]] = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit in a caption
        if not line.strip():
            continue
        try:
            records.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            records.append((f"{path}:{number}", _Unparsed(exc.colno, _syntax_problem(exc))))
    return records


# ------------------------------------------------------------------------------------------- records


def _collect_records(path: Path, records: list[tuple[str, Any]], keys: _RecordKeys, base: Path, out: Collected,
                     classnames: Path | None) -> None:
    """One pair per caption of each usable record into `out`; the rest are bad rows naming line or index."""
    _refuse_absent_keys(path, [r for _, r in records if isinstance(r, dict)], keys)
    raw_labels: list[str] = []
    for where, record in records:
        if isinstance(record, _Unparsed):
            out.bad_row(f"{where}:{record.column}: {record.problem}")
            continue
        pair = _record_pair(record, keys)
        if isinstance(pair, str):
            out.bad_row(f"{where}: {pair}")
            continue
        file, captions, label = pair
        image = resolve_image(base, file)
        out.items += [Item(image, caption) for caption in captions]
        raw_labels += [label] * len(captions)
    if keys.label:
        assign_labels(out, raw_labels, read_classnames(classnames) if classnames else None, path)


def _refuse_absent_keys(path: Path, objects: list[dict], keys: _RecordKeys) -> None:
    """PrepareError when no record has one of the keys (a wrong --*-column, as a CSV header without the
    column); one record without it is a bad row."""
    if not objects:
        return  # no record is an object: each is a bad row that says so
    for what, key in (("image", keys.image), ("caption", keys.caption), ("label", keys.label)):
        if key is not None and not any(key in record for record in objects):
            found = list(objects[0])
            raise PrepareError(f"{path}: no record has the key {key!r} (the first record's keys: "
                               f"{', '.join(map(repr, found)) or 'none'}); choose the {what} key with "
                               f"--{what}-column" + header_hint([key], found))


def _record_pair(record: Any, keys: _RecordKeys) -> tuple[str, list[str], str] | str:
    """(image path, captions, raw label or '') of a record, or what is wrong with it."""
    if not isinstance(record, dict):
        return f'{_describe(record)}, expected an object like {{"{keys.image}": ..., "{keys.caption}": ...}}'
    file = record.get(keys.image)
    if keys.image not in record:
        return f"no {keys.image!r} key ({_keys_of(record)})"
    if not isinstance(file, str) or not file.strip():
        return f"{keys.image!r} is {_describe(file)}, expected an image path (a non-empty string)"
    if problem := url_problem(keys.image, file.strip()):
        return problem
    if keys.caption not in record:
        return f"no {keys.caption!r} key ({_keys_of(record)})"
    captions = _caption_list(record[keys.caption], keys.caption)
    if isinstance(captions, str):
        return captions
    if keys.label is None:
        return file.strip(), captions, ""
    if keys.label not in record:
        return f"no {keys.label!r} key"
    label = _raw_label(record[keys.label])
    if label is None:
        return f"{keys.label!r} is {_describe(record[keys.label])}, expected a class index or a class name"
    return file.strip(), captions, label


def _keys_of(record: dict) -> str:
    return f"its keys: {', '.join(map(repr, record))}" if record else "it has no keys"


def _caption_list(value: Any, key: str) -> list[str] | str:
    """The captions of a string or a list of strings, stripped; or what is wrong with the value."""
    if value == []:
        return f"{key!r} is an empty list, expected a caption (or a list of them)"
    values, held = (value, "holds") if isinstance(value, list) else ([value], "is")
    for caption in values:
        if not isinstance(caption, str):
            return f"{key!r} {held} {_describe(caption)}, expected a string (or a list of strings)"
        if not caption.strip():
            return f"{key!r} {held} {_describe(caption)}, expected a caption (a non-empty string)"
    return [c.strip() for c in values]


def _raw_label(value: Any) -> str | None:
    """A label as assign_labels takes it: the text of a class index (a whole number) or a class name; None for
    another value."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


# ---------------------------------------------------------------------------------------------- COCO


def _is_coco(value: Any) -> bool:
    return isinstance(value, dict) and ("annotations" in value or "images" in value)


def _refuse_keys_for_coco(path: Path, image_key: str | None, caption_key: str | None, label_key: str | None) -> None:
    given = [flag for flag, key in (("--image-column", image_key), ("--caption-column", caption_key),
                                    ("--label-column", label_key)) if key is not None]
    if given:
        raise OptionError(f"{path} is COCO captions, whose keys are fixed (images[].file_name, "
                          f"annotations[].caption; no labels): drop {', '.join(given)}")


def _collect_coco(path: Path, doc: dict, base: Path, out: Collected) -> None:
    """One pair per annotation: images[] maps `id` to `file_name`, annotations[] hold `image_id`, `caption`."""
    images, annotations = _coco_lists(path, doc)
    files = _coco_images(path, images, base, out)
    captioned = set()
    for index, annotation in enumerate(annotations):
        where = f"{path}: annotations[{index}]"
        pair = _coco_annotation(annotation, files)
        if isinstance(pair, str):
            out.bad_row(f"{where}: {pair}")
            continue
        image_id, captions = pair
        out.items += [Item(files[image_id], caption) for caption in captions]
        captioned.add(image_id)
    if uncaptioned := sum(1 for i, file in files.items() if file is not None and i not in captioned):
        out.notes.append(f"{uncaptioned} of the {len(files)} entries of images have no caption in annotations "
                         "and are left out")


def _coco_lists(path: Path, doc: dict) -> tuple[list, list]:
    """images and annotations, or PrepareError naming what a COCO captions file lacks."""
    for key, holds in (("images", '{"id", "file_name"}'), ("annotations", '{"image_id", "caption"}')):
        if key not in doc:
            other = "images" if key == "annotations" else "annotations"
            raise PrepareError(f"{path} has {other!r} but no {key!r}: COCO captions list {holds} objects there")
        if not isinstance(doc[key], list):
            raise PrepareError(f"{path}: {key!r} is {_describe(doc[key])}, expected a list of {holds} objects")
    annotations = doc["annotations"]
    if not annotations:
        raise PrepareError(f"{path}: 'annotations' is empty: no captions to prepare (image_info_*.json files "
                           "list images only)")
    objects = [a for a in annotations if isinstance(a, dict)]
    if objects and not any("caption" in a for a in objects):
        raise PrepareError(f"{path}: no annotation has a 'caption' (the first has "
                           f"{', '.join(map(repr, objects[0]))}): this looks like COCO instances or keypoints, "
                           "not captions (captions_*.json)")
    return doc["images"], annotations


def _coco_images(path: Path, images: list, base: Path, out: Collected) -> dict[Any, Path | None]:
    """id -> image path of each images entry; None for an entry whose file_name is unusable (a bad row)."""
    files: dict[Any, Path | None] = {}
    for index, entry in enumerate(images):
        where = f"{path}: images[{index}]"
        image_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(entry, dict):
            out.bad_row(f'{where}: {_describe(entry)}, expected an object like {{"id": 1, "file_name": "a.jpg"}}')
        elif problem := _id_problem(entry, "id"):
            out.bad_row(f"{where}: {problem}")
        elif image_id in files:
            out.bad_row(f"{where}: id {json.dumps(image_id)} is the id of an earlier entry too; give each its own")
        elif problem := _file_name_problem(entry):
            out.bad_row(f"{where}: {problem}")
            files[image_id] = None
        else:
            files[image_id] = resolve_image(base, entry["file_name"].strip())
    return files


def _coco_annotation(annotation: Any, files: dict[Any, Path | None]) -> tuple[Any, list[str]] | str:
    """(image id, captions) of an annotation, or what is wrong with it."""
    if not isinstance(annotation, dict):
        return f'{_describe(annotation)}, expected an object like {{"image_id": 1, "caption": "..."}}'
    if problem := _id_problem(annotation, "image_id"):
        return problem
    image_id = annotation["image_id"]
    if image_id not in files:
        return f"image_id {json.dumps(image_id)} is not the id of any entry of images"
    if files[image_id] is None:
        return f"its image (id {json.dumps(image_id)}) has an unusable file_name (named above)"
    if "caption" not in annotation:
        return "no 'caption' key"
    captions = _caption_list(annotation["caption"], "caption")
    return captions if isinstance(captions, str) else (image_id, captions)


def _id_problem(entry: dict, key: str) -> str | None:
    if key not in entry:
        return f"no {key!r} key"
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        return f"{key!r} is {_describe(value)}, expected an image id (a number or a string)"
    return None


def _file_name_problem(entry: dict) -> str | None:
    file = entry.get("file_name")
    if "file_name" not in entry:
        return "no 'file_name' key"
    if not isinstance(file, str) or not file.strip():
        return f"'file_name' is {_describe(file)}, expected an image path (a non-empty string)"
    return url_problem("file_name", file.strip())
