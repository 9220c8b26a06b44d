"""contract.run_dir.read_pointer: the one rule every reader of checkpoints/latest and checkpoints/best follows."""

from pathlib import Path

import pytest

from contract.run_dir import BEST, LATEST, read_pointer, step_dir_name, step_of


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "run" / "checkpoints" / "step_000010").mkdir(parents=True)
    return tmp_path / "run"


def test_a_pointer_file_names_its_step_directory_from_the_run_dir_or_the_checkpoints_folder(run_dir):
    (run_dir / "checkpoints" / LATEST).write_text("step_000010")
    expected = run_dir / "checkpoints" / "step_000010"
    assert read_pointer(run_dir, LATEST) == expected
    assert read_pointer(run_dir / "checkpoints", LATEST) == expected


@pytest.mark.parametrize("text", ["step_000010\n", "  step_000010 \r\n", "\nstep_000010\n\n"])
def test_whitespace_and_newlines_around_the_name_are_ignored(run_dir, text):
    (run_dir / "checkpoints" / BEST).write_text(text)
    assert read_pointer(run_dir, BEST) == run_dir / "checkpoints" / "step_000010"


def test_a_missing_pointer_or_checkpoints_folder_is_none(run_dir, tmp_path):
    assert read_pointer(run_dir, LATEST) is None
    assert read_pointer(tmp_path / "nowhere", BEST) is None


def test_a_pointer_to_a_step_that_is_gone_is_none(run_dir):
    (run_dir / "checkpoints" / LATEST).write_text("step_000099\n")
    assert read_pointer(run_dir, LATEST) is None


@pytest.mark.parametrize("text", ["../step_000010", "/etc", "step_000010/../../x", "wise_ft", "step_1.pt", "",
                                  "step_000010\nstep_000020"])
def test_names_that_are_no_step_directory_or_leave_the_folder_are_refused(run_dir, text):
    (run_dir / "checkpoints" / LATEST).write_text(text)
    assert read_pointer(run_dir, LATEST) is None


def test_a_step_directory_linked_to_a_folder_outside_is_refused(run_dir, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (run_dir / "checkpoints" / "step_000020").symlink_to(tmp_path / "elsewhere")
    (run_dir / "checkpoints" / LATEST).write_text("step_000020\n")
    assert read_pointer(run_dir, LATEST) is None


def test_a_symlink_to_a_step_directory_is_a_pointer_too(run_dir):
    (run_dir / "checkpoints" / LATEST).symlink_to("step_000010")
    assert read_pointer(run_dir, LATEST) == run_dir / "checkpoints" / "step_000010"


def test_a_symlink_to_a_file_or_a_folder_elsewhere_is_refused(run_dir, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("step_000010\n")  # even content that would be a valid name is not read through a link
    (run_dir / "checkpoints" / LATEST).symlink_to(secret)
    (tmp_path / "step_000010").mkdir()
    (run_dir / "checkpoints" / BEST).symlink_to(tmp_path / "step_000010")
    assert read_pointer(run_dir, LATEST) is None and read_pointer(run_dir, BEST) is None


def test_a_dangling_symlink_is_none(run_dir):
    (run_dir / "checkpoints" / LATEST).symlink_to("step_000077")
    assert read_pointer(run_dir, LATEST) is None


def test_a_large_file_is_no_pointer(run_dir):
    (run_dir / "checkpoints" / LATEST).write_text("step_000010" + " " * 1000)
    assert read_pointer(run_dir, LATEST) is None


def test_only_latest_and_best_are_pointers(run_dir):
    with pytest.raises(ValueError, match="latest, best"):
        read_pointer(run_dir, "config.yaml")


def test_step_directory_names_round_trip():
    assert step_dir_name(100) == "step_000100" and step_of("step_000100") == 100
    assert step_of("wise_ft") is None and step_of(".tmp-step_000100-12") is None
