"""One error path for the commands: a user's mistake is one line on stderr and exit status 2.

A bad file, path or value (OSError, ValueError, TypeError, a corpus file that fails its check)
is reported as `text2brain COMMAND: error: MESSAGE`, without the traceback, which says nothing
to a user and buries the message; Ctrl-C as `text2brain COMMAND: interrupted: ...`, saying
what was written, with exit status 130. `--debug`, or TEXT2BRAIN_DEBUG=1 in the environment,
lets the exception through with its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

DEBUG_ENV = "TEXT2BRAIN_DEBUG"
DEBUG_FLAG = "--debug"
#: What an interrupted command says of its files when it has nothing more precise to say.
INTERRUPTED_FILES = "every file written so far is whole; none was left half-written"


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    """The --debug flag in a command's options (read by `run_command`)."""
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"show the traceback of an error instead of one line (also: {DEBUG_ENV}=1)",
    )


def debugging(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


class MissingExtraError(ImportError):
    """A feature needs a package of an optional extra that is not installed.

    The message names the feature, the missing package and the install command, so the fix
    is in the error itself.
    """

    def __init__(self, feature: str, package: str, extra: str) -> None:
        self.extra = extra
        super().__init__(
            f'{feature} needs {package}, which is not installed: pip install "text2brain[{extra}]"',
            name=package,
        )


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the command had written by then as its message (for `run_command`)."""


def corpus_file_errors() -> tuple[type[BaseException], ...]:
    """The corpus-file error class, when its module was imported (so the error can exist)."""
    files = sys.modules.get("text2brain.neuroquery_files")
    return (files.CorpusFileError,) if files is not None else ()


def is_user_error(err: BaseException) -> bool:
    """An error a user can act on from its message: a bad file, path or value."""
    user_errors = (OSError, ValueError, TypeError, MissingExtraError, *corpus_file_errors())
    return isinstance(err, user_errors)


def run_command(
    name: str,
    command: Callable[[list[str]], None],
    argv: list[str],
    user_error: Callable[[BaseException], bool] = is_user_error,
) -> None:
    """Run `text2brain NAME` with its arguments; a user error is one line and exit status 2,
    Ctrl-C one line (what was written) and exit status 130, as a shell reports SIGINT."""
    try:
        command(argv)
    except KeyboardInterrupt as err:
        if debugging(argv):
            raise
        done = str(err) if isinstance(err, Interrupted) and str(err) else INTERRUPTED_FILES
        print(f"text2brain {name}: interrupted: {done}", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if debugging(argv) or not user_error(err):
            raise
        message = " ".join(str(err).splitlines()) or type(err).__name__
        print(f"text2brain {name}: error: {message}", file=sys.stderr)
        sys.exit(2)
