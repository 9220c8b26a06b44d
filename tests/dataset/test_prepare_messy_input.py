"""`cliplab prepare` on the messy input researchers bring: CSVs in the wrong encoding or shape, symlink loops,
directories named like images, hidden files in class folders. Each gives a clear error naming the file,
line or column and the fix, or is handled; never a traceback."""

import os
from pathlib import Path

from tests.dataset.test_prepare import cliplab_prepare, make_image, read_rows, run_prepare


def pairs_folder(root: Path, n: int = 4) -> Path:
    for i in range(n):
        make_image(root / f"{i}.jpg", colour=(i * 40, 0, 0))
    return root


def test_a_symlink_loop_in_a_csv_is_an_unreadable_image_not_a_traceback(tmp_path):
    root = pairs_folder(tmp_path / "pairs")
    os.symlink("loop-b.jpg", root / "loop-a.jpg")
    os.symlink("loop-a.jpg", root / "loop-b.jpg")
    rows = ["filepath,caption"] + [f"{i}.jpg,photo {i}" for i in range(4)] + ["loop-a.jpg,a loop"]
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    proc = cliplab_prepare("csv", str(root / "pairs.csv"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "loop-a.jpg: unreadable (a symlink loop)" in proc.stdout and "unreadable: 1" in proc.stdout
    assert len(read_rows(tmp_path / "out" / "train.csv")) + len(read_rows(tmp_path / "out" / "val.csv")) == 4


def test_a_directory_named_like_an_image_is_unreadable_not_missing(tmp_path):
    root = pairs_folder(tmp_path / "pairs")
    (root / "folder.jpg").mkdir()
    rows = ["filepath,caption"] + [f"{i}.jpg,photo {i}" for i in range(4)] + ["folder.jpg,a folder"]
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    code, out, _ = run_prepare("csv", str(root / "pairs.csv"), "--out", str(tmp_path / "out"))
    assert code == 0
    assert "folder.jpg: unreadable (a directory, not an image file)" in out and "missing: 0" in out


def test_a_csv_that_is_not_utf8_names_the_line_and_how_to_convert_it(tmp_path):
    root = pairs_folder(tmp_path / "pairs")
    (root / "latin1.csv").write_bytes(b"filepath,caption\n0.jpg,fine\n1.jpg,caf\xe9 au lait\n")
    code, _, err = run_prepare("csv", str(root / "latin1.csv"), "--out", str(tmp_path / "out"))
    assert code == 1
    assert "latin1.csv:3: byte b'\\xe9' is not UTF-8" in err and "iconv -f latin1 -t utf-8" in err
    assert not (tmp_path / "out").exists()


def test_a_bom_and_crlf_and_quoted_multiline_captions_are_read(tmp_path):
    root = pairs_folder(tmp_path / "pairs")
    text = '\ufefffilepath,caption\r\n0.jpg,"a, quoted\r\ncaption"\r\n1.jpg,b\r\n2.jpg,c\r\n3.jpg,d\r\n'
    (root / "excel.csv").write_bytes(text.encode("utf-8"))
    code, _, err = run_prepare("csv", str(root / "excel.csv"), "--out", str(tmp_path / "out"))
    assert code == 0, err
    rows = read_rows(tmp_path / "out" / "train.csv") + read_rows(tmp_path / "out" / "val.csv")
    assert {r["caption"] for r in rows} == {"a, quoted\ncaption", "b", "c", "d"}


def test_a_caption_column_named_twice_is_an_error_not_a_silent_pick(tmp_path):
    root = pairs_folder(tmp_path / "pairs")
    (root / "dup.csv").write_text("filepath,caption,caption\n0.jpg,short,the long one\n1.jpg,a,b\n")
    code, _, err = run_prepare("csv", str(root / "dup.csv"), "--out", str(tmp_path / "out"))
    assert code == 1 and "dup.csv: the header names column(s) 'caption' more than once" in err


def test_an_unclosed_quote_or_a_huge_value_names_the_line_instead_of_a_traceback(tmp_path):
    root = pairs_folder(tmp_path / "pairs")
    rows = ["filepath,caption", "0.jpg,fine", '1.jpg,"5 inch screen'] + [f"2.jpg,row {i}" for i in range(20000)]
    (root / "unclosed.csv").write_text("\n".join(rows) + "\n")
    code, _, err = run_prepare("csv", str(root / "unclosed.csv"), "--out", str(tmp_path / "out"))
    assert code == 1 and "Traceback" not in err
    assert "unclosed.csv:3: field larger than field limit" in err and "never closed" in err


def test_a_header_without_rows_says_so(tmp_path):
    (tmp_path / "header.csv").write_text("filepath,caption\n")
    code, _, err = run_prepare("csv", str(tmp_path / "header.csv"), "--out", str(tmp_path / "out"))
    assert code == 1 and "header.csv has a header and no data rows" in err


def test_header_names_are_stripped_like_the_trainers_reader_strips_them(tmp_path):
    root = pairs_folder(tmp_path / "pairs")
    rows = [" filepath , caption "] + [f"{i}.jpg,photo {i}" for i in range(4)]
    (root / "spaced.csv").write_text("\n".join(rows) + "\n")
    code, _, err = run_prepare("csv", str(root / "spaced.csv"), "--out", str(tmp_path / "out"))
    assert code == 0, err


def test_a_missing_column_hints_at_letter_case_and_at_another_separator(tmp_path):
    (tmp_path / "case.csv").write_text("Filepath,Caption\na.jpg,x\n")
    (tmp_path / "semi.csv").write_text("filepath;caption\na.jpg;x\n")
    _, _, case_err = run_prepare("csv", str(tmp_path / "case.csv"), "--out", str(tmp_path / "o1"))
    _, _, semi_err = run_prepare("csv", str(tmp_path / "semi.csv"), "--out", str(tmp_path / "o2"))
    assert "did you mean 'Filepath' for 'filepath', 'Caption' for 'caption'?" in case_err
    assert "pass --delimiter ';'" in semi_err


def test_hidden_files_and_folders_in_class_folders_are_not_listed(tmp_path):
    root = tmp_path / "pets"
    for cls in ("cat", "dog"):
        for i in range(2):
            make_image(root / cls / f"{i}.jpg")
    (root / "cat" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # AppleDouble, not an image
    make_image(root / "dog" / ".thumbnails" / "0.jpg")
    code, out, _ = run_prepare("folders", str(root), "--out", str(tmp_path / "out"), "--val-per-class", "1")
    assert code == 0
    assert "images listed: 4" in out and "unreadable: 0" in out
    rows = read_rows(tmp_path / "out" / "train.csv") + read_rows(tmp_path / "out" / "val.csv")
    assert not any("/." in r["filepath"] for r in rows)


def test_shards_from_a_csv_not_in_utf8_or_with_an_unclosed_quote_name_the_file_not_a_traceback(tmp_path):
    root = pairs_folder(tmp_path / "pairs")
    (root / "latin1.csv").write_bytes(b"filepath,caption\n0.jpg,caf\xe9\n")
    rows = ["filepath,caption", '0.jpg,"never closed'] + [f"1.jpg,row {i}" for i in range(20000)]
    (root / "unclosed.csv").write_text("\n".join(rows) + "\n")
    for name, expected in (("latin1.csv", "byte b'\\xe9' is not UTF-8"), ("unclosed.csv", "never closed")):
        proc = cliplab_prepare("shards", str(root / name), "--out", str(tmp_path / "shards"))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{root / name}:" in proc.stderr and expected in proc.stderr


def test_an_unclosed_quote_that_swallows_rows_stops_prepare_naming_the_line_not_a_lower_count(tmp_path):
    root = pairs_folder(tmp_path / "pairs")
    (root / "pairs.csv").write_text('filepath,caption\n0.jpg,a red one\n1.jpg,"a dark one\n2.jpg,three\n3.jpg,four\n')
    code, out, err = run_prepare("csv", str(root / "pairs.csv"), "--out", str(tmp_path / "out"))
    assert code == 1 and out == ""  # was: prepared, "images listed: 2", the dark one's caption holding two rows
    assert f"{root / 'pairs.csv'}:3: a '\"' opens the caption value on this line" in err
    assert "2 of which look like rows of this table (line 4: '2.jpg,three')" in err
    assert "Close the quote on line 3" in err
    assert not (tmp_path / "out").exists()
