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


def test_an_unclosed_quote_that_swallows_later_rows_names_the_line_it_opened_on_and_the_fix(tmp_path):
    table = tmp_path / "pairs.csv"
    table.write_text('filepath,caption\n0.jpg,a cat\n1.jpg,"a dog\n2.jpg,a bird\n3.png,a fish\n')
    with pytest.raises(DataError) as caught:
        read_pairs_table(table)  # was: 2 rows, the dog's caption holding the bird and the fish
    message = str(caught.value)
    assert message.startswith(f"{table}:3: a '\"' opens the caption value on this line and is not closed on it: "
                              "the value runs over the next 2 line(s), 2 of which look like rows of this table "
                              "(line 4: '2.jpg,a bird'), and those rows are lost in it.")
    assert message.endswith('Close the quote on line 3, or write a quote that belongs to the text as "" inside a '
                            "quoted value")


def test_a_quote_closed_rows_later_and_blank_lines_still_name_the_opening_line(tmp_path):
    table = tmp_path / "pairs.tsv"
    table.write_text('filepath\tcaption\n0.jpg\tfine\n\n\n1.jpg\t"a dog\n2.jpg\ta bird\n3.jpg\t"a ""fish"" here"\n'
                     "4.jpg\tlast\n")
    with pytest.raises(DataError, match=r"pairs\.tsv:5: .* over the next 2 line\(s\), 2 of which look like rows "
                                        r".*\(line 6: '2\.jpg\\ta bird'\)"):
        read_pairs_table(table)
    table = tmp_path / "caption-first.csv"
    table.write_text('caption,filepath\n"a dog,0.jpg\na bird,1.jpg')  # path column second, no final newline
    with pytest.raises(DataError, match=r"first\.csv:2: .* 1 of which looks like rows of this table \(line 3: "):
        read_pairs_table(table)


def test_multi_line_captions_that_hold_commas_and_file_names_still_read(tmp_path):
    table = tmp_path / "pairs.csv"
    table.write_text('filepath,caption,label\n0.jpg,"a cat, asleep\non a mat, by the door",1\n'
                     '1.jpg,"see also 2.jpg\nand 3.jpg, left",2\n2.jpg,"ends in a newline\n"\n')
    assert read_pairs_table(table) == (
        ["0.jpg", "1.jpg", "2.jpg"],
        ["a cat, asleep\non a mat, by the door", "see also 2.jpg\nand 3.jpg, left", "ends in a newline"],
        [1, 2, -1])
