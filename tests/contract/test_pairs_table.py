"""The pairs table (contract.table), which the trainer, `prepare` and `prepare shards` all read: faults in the
file are DataErrors naming the file and line, not tracebacks from the codec or the csv module."""

from __future__ import annotations

import pytest

from contract.table import DataError, read_pairs_table

from tests.train_support import make_dataset, run_trainer, tiny_config, train_env, write_config


def test_a_byte_that_is_not_utf8_names_its_line_and_the_conversion(tmp_path):
    table = tmp_path / "latin1.csv"
    table.write_bytes(b"filepath,caption\n0.jpg,a cat\n1.jpg,caf\xe9 au lait\n")
    with pytest.raises(DataError, match=r"latin1\.csv:3: byte b'\\xe9' is not UTF-8.*iconv"):
        read_pairs_table(table)


def test_an_unclosed_quote_or_a_huge_value_names_the_line_where_it_starts(tmp_path):
    table = tmp_path / "unclosed.csv"
    table.write_text("filepath,caption\n0.jpg,fine\n1.jpg,\"never closed\n" + "2.jpg,row\n" * 20000)
    with pytest.raises(DataError, match=r"unclosed\.csv:\d+: field larger than field limit.*never closed"):
        read_pairs_table(table)


def test_crlf_a_bom_and_multiline_captions_read_as_before_with_labels_on_their_own_lines(tmp_path):
    table = tmp_path / "pairs.csv"
    table.write_bytes(b'\xef\xbb\xbffilepath,caption,label\r\n0.jpg,"two\r\nlines",1\r\n1.jpg,plain,x\r\n')
    with pytest.raises(DataError, match=r"pairs\.csv line 4: label must be an integer"):
        read_pairs_table(table)  # the record after a two-line caption starts on line 4
    table.write_bytes(b'\xef\xbb\xbffilepath,caption,label\r\n0.jpg,"two\r\nlines",1\r\n1.jpg,plain,\r\n')
    assert read_pairs_table(table) == (["0.jpg", "1.jpg"], ["two\nlines", "plain"], [1, -1])


def test_training_on_a_table_that_is_not_utf8_is_bad_input_naming_the_line(tmp_path):
    data = make_dataset(tmp_path / "data", 1, 1)
    (data / "train.csv").write_bytes((data / "train.csv").read_bytes() + b"x.jpg,caf\xe9\n")
    config = write_config(tmp_path / "c.yaml", tiny_config(data))
    done = run_trainer([str(config), "--run-dir", str(tmp_path / "run")], train_env(tmp_path))
    assert done.returncode == 2, done.stderr
    assert "train.csv:" in done.stderr and "is not UTF-8" in done.stderr and "Traceback" not in done.stderr
