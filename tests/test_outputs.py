"""Every command checks the locations it writes to when it starts: one line on stderr, exit 2.

Table-driven: each command that writes, with each kind of bad location -- an existing
file where a folder is expected, an existing folder where a file is expected, a path
under a regular file, and a path on a virtual file system (/proc) where nothing can be
created (the tests run as root, so permission bits would not stop them). The commands
run in this process through the console entry point, with options that keep them
small should a check not fire.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streamflow.cli.main import main
from streamflow.cli.outputs import output_file, output_folder
from streamflow.errors import ConfigError

FOLDER_KINDS = ("existing file", "under a file", "virtual file system")
FILE_KINDS = ("existing folder", "under a file", "virtual file system")


def bad_location(tmp_path: Path, kind: str) -> str:
    regular = tmp_path / "regular-file"
    regular.write_text("not a folder\n")
    folder = tmp_path / "a-folder"
    folder.mkdir(exist_ok=True)
    return str({"existing file": regular, "existing folder": folder, "under a file": regular / "inside",
                "virtual file system": Path("/proc/streamflow-no-such/inside")}[kind])


# command -> argv with {} where the bad location goes; small sizes in case the check did not fire
WRITES_FOLDER = {
    "run": ["run", "--events", "100", "--no-monitor", "--no-report", "--run-dir", "{}"],
    "consume": ["consume", "--preset", "gaussian", "--idle-timeout", "1", "--run-dir", "{}"],
    "sink": ["sink", "--idle-timeout", "1", "--run-dir", "{}"],
    "proxy": ["proxy", "--from", "tcp://127.0.0.1:1", "--idle-timeout", "1", "--run-dir", "{}"],
    "coordinates": ["coordinates", "--events", "100", "--eval-events", "100", "--out", "{}"],
    "ephemeral": ["ephemeral", "synthetic", "--events", "100", "--test-events", "100", "--out", "{}"],
    "keys": ["keys", "{}", "--name", "test"],
    "report": ["report", "{}"],
}
WRITES_FILE = {
    "sink": ["sink", "--idle-timeout", "1", "--output", "{}"],
    "sample": ["sample", "no-such.ckpt.pt", "--events", "10", "--output", "{}"],
}


def run_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], float]:
    start = time.monotonic()
    code = main(argv)
    return code, capsys.readouterr().err.splitlines(), time.monotonic() - start


@pytest.mark.parametrize("kind", FOLDER_KINDS)
@pytest.mark.parametrize("command", sorted(WRITES_FOLDER))
def test_a_bad_output_folder_is_one_line_and_exit_2_before_any_work(command, kind, tmp_path, capsys) -> None:
    location = bad_location(tmp_path, kind)
    code, err, seconds = run_command([a.replace("{}", location) for a in WRITES_FOLDER[command]], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"streamflow {command}: error: ") and location in err[0], err
    assert seconds < 10, f"{command} took {seconds:.1f} s to find out"


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("command", sorted(WRITES_FILE))
def test_a_bad_output_file_is_one_line_and_exit_2_before_any_work(command, kind, tmp_path, capsys) -> None:
    location = bad_location(tmp_path, kind)
    code, err, _ = run_command([a.replace("{}", location) for a in WRITES_FILE[command]], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"streamflow {command}: error: ") and location in err[0], err


def test_the_sink_refuses_an_existing_file_that_is_not_hdf5_at_start(tmp_path, capsys) -> None:
    (tmp_path / "notes.h5").write_text("not HDF5\n")
    code, err, _ = run_command(["sink", "--run-dir", str(tmp_path), "--output", "notes.h5"], capsys)
    assert code == 2 and len(err) == 1 and "is not an HDF5 file" in err[0], err


def test_good_locations_pass_and_are_left_as_they_were(tmp_path) -> None:
    assert not output_folder(tmp_path / "new" / "run", "--run-dir").exists()  # made by the command, later
    existing = tmp_path / "kept.h5"
    existing.write_bytes(b"12345")
    assert output_file(existing, "--output") == existing and existing.read_bytes() == b"12345"
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        output_folder(existing, "--out")
