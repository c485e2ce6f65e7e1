"""How a command ends on bad input: one line that names the path or key, and exit status 2.

Every error the suite raises for input it cannot use (a config key, a checkpoint, a data
folder, an audio file) is a ``UserError``, with a message that names the thing and says what
was expected. ``reports_errors`` wraps a command's ``main``: a ``UserError``, or an
``OSError`` about one of the paths the user gave, becomes ``<prog>: <message>`` on stderr and
exit 2; Ctrl-C becomes one line saying what was kept and how to go on, exit 130. Anything
else is a bug in the suite and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from pathlib import Path
from typing import Callable, Iterable

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


class UserError(Exception):
    """Input the suite cannot use; the message names it and what was expected."""


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C, re-raised with a message saying what was kept and how to resume."""


def _about(path: str | Path, given: Iterable[str | Path]) -> bool:
    """Whether an error's path is one the user gave, inside one, or a folder on the way to
    one (``--out a-file/face.png``: the error names ``a-file``)."""
    p = Path(path).resolve()
    for g in given:
        g = Path(g).resolve()
        if p == g or g in p.parents or p in g.parents:
            return True
    return False


def os_error_line(e: OSError) -> str:
    names = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{names}: {e.strerror or e}"


def report(prog: str, run: Callable[[], int], paths: Callable[[], Iterable] | None = None,
           interrupted: str | Callable[[], str] = "interrupted") -> int:
    """``run()``, with the suite's own errors turned into one line and exit 2.

    ``paths`` gives the paths the user named (called when an ``OSError`` arrives, so it may
    read state built during the run); an ``OSError`` about a file elsewhere is not the
    user's input and is raised as it is.
    """
    try:
        return run() or 0
    except UserError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # wherever it was writing
            where = f" writing {e.filename}" if e.filename else ""
            print(f"{prog}: no space left on the device{where} ({e.strerror}); what was "
                  f"finished is kept whole: free space and run the same command again",
                  file=sys.stderr)
            return EXIT_USER_ERROR
        if e.filename is None or paths is None or not _about(e.filename, [p for p in paths() if p]):
            raise
        print(f"{prog}: {os_error_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted) and e.args:
            line = e.args[0]
        else:
            line = interrupted() if callable(interrupted) else interrupted
        print(f"\n{prog}: {line}", file=sys.stderr)
        return EXIT_INTERRUPTED


def argv_paths(argv: list[str]) -> list[str]:
    """What a command line may name as paths: every word, and the value of ``key=value``."""
    return [w for a in argv for w in (a, a.partition("=")[2]) if w and not w.startswith("-")]


def reports_errors(prog: str, interrupted: str | Callable[[], str] = "interrupted"):
    """Decorator form of ``report`` for a ``main(argv)``; the user's paths are those its
    command line names."""
    def wrap(main):
        @functools.wraps(main)
        def wrapped(argv: list[str] | None = None) -> int:
            words = sys.argv[1:] if argv is None else argv
            return report(prog, lambda: main(argv), paths=lambda: argv_paths(words),
                          interrupted=interrupted)
        return wrapped
    return wrap


# --- options and outputs, checked before any work -------------------------------------------

def int_in(low: int, high: int):
    """An argparse ``type``: an integer in ``low..high``, else argparse's usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: expected {low}..{high}")
        return value
    return parse


def check_output_path(option: str, path: Path, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: an existing file where a
    folder is wanted (or a folder where a file is), or a path under a file or in a folder
    that cannot be written to. Creates nothing."""
    if path.exists() and path.is_dir() != folder:
        raise UserError(f"{option} {path} is {'a file' if folder else 'a folder'}; expected "
                        + ("a folder to write into" if folder else
                           f"the file to write (e.g. {option} {path / 'face.png'})"))
    parent = path if path.exists() and folder else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {parent} (permission denied)")
