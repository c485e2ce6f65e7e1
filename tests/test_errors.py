"""How a command ends: the suite's own errors and the OS errors of the user's paths become
one line and exit 2; a bug keeps its traceback; Ctrl-C says what was kept."""

from __future__ import annotations

import pytest

from voice2face.config import ConfigError
from voice2face.errors import Interrupted, argv_paths, report


def test_user_errors_become_one_line(capsys):
    def bad():
        raise ConfigError("trainer.max_steps: not an integer")
    assert report("voice2face x", bad) == 2
    assert capsys.readouterr().err == "voice2face x: trainer.max_steps: not an integer\n"
    assert issubclass(ConfigError, ValueError)  # callers that catch ValueError still do


def test_os_errors_of_the_users_paths_only(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")

    def write_under_the_file():
        (a_file / "face.png").write_text("")
    paths = lambda: argv_paths(["--out", str(a_file / "face.png")])  # noqa: E731
    assert report("voice2face x", write_under_the_file, paths=paths) == 2
    assert str(a_file / "face.png") in capsys.readouterr().err
    # about a folder on the way to the user's path
    def make_folder_under_the_file():
        (a_file / "face.png").parent.mkdir(parents=True, exist_ok=True)
    assert report("voice2face x", make_folder_under_the_file, paths=paths) == 2
    assert f"{a_file}: File exists" in capsys.readouterr().err
    # the same error about a path the user did not give is a bug: raised as it is
    with pytest.raises(NotADirectoryError):
        report("voice2face x", write_under_the_file, paths=lambda: [str(tmp_path / "other")])


def test_bugs_keep_their_traceback():
    def bug():
        raise RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        report("voice2face x", bug)
    with pytest.raises(KeyError, match="key"):  # not a UserError, although it is about input
        report("voice2face x", lambda: {}["key"])


def test_interrupts(capsys):
    def ctrl_c():
        raise KeyboardInterrupt
    assert report("voice2face x", ctrl_c, interrupted=lambda: "nothing kept") == 130
    assert capsys.readouterr().err.strip() == "voice2face x: nothing kept"

    def ctrl_c_with_news():
        raise Interrupted("kept runs/r: resume with run.resume=runs/r")
    assert report("voice2face x", ctrl_c_with_news) == 130
    assert capsys.readouterr().err.strip().endswith("kept runs/r: resume with run.resume=runs/r")


def test_argv_paths():
    assert argv_paths(["a.wav", "--out", "o.png", "data.root=/d", "-x"]) == \
        ["a.wav", "o.png", "data.root=/d", "/d"]


def test_a_full_disk_anywhere_is_one_line(capsys):
    import errno

    def write():  # as a tar writer's f.write reports it: no file name
        raise OSError(errno.ENOSPC, "No space left on device")
    assert report("voice2face x", write, paths=lambda: []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("voice2face x: no space left on the device")
    assert "run the same command again" in err
