"""Files written for a user appear whole or not at all.

Every writer of the project (maps, pictures, the query index, exports, split files, the
rendered-maps cache) writes through `atomic_output`: the file is written under a hidden
temporary name in the same folder and renamed into place, so a crash, SIGINT or full disk
never leaves a truncated file under the final name, and the error names the file. A killed
process cannot remove its temporary: the next run into the folder does
(`remove_stale_temporaries`).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: A temporary of `atomic_output`: ".<host>-<pid>-<random>.tmp-<final name>", so the next run
#: into the folder can tell the leftovers of a killed process from files being written.
_TEMPORARY = re.compile(r"\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp-.+")
#: The temporaries of text2brain before they named their process: ".<random>.tmp-<name>".
_OLD_TEMPORARY = re.compile(r"\.[0-9a-f]{8}\.tmp-.+")
#: A temporary of another machine (a shared folder), or of the old kind, is stale after this.
STALE_AFTER_S = 3600.0


class OutputError(OSError):
    """A file could not be written; the message names the file and the cause."""


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; rename it to `path` on success.

    The temporary name ends with the final name, so writers that pick a format by extension
    (nibabel, matplotlib, numpy) see the same one. The file gets the usual permissions, 0666
    less the umask, whatever its writer chose (safetensors writes 0600, as `mkstemp` does). On
    any exception, KeyboardInterrupt included, the temporary is removed and `path` is left as
    it was; an OSError becomes an `OutputError` naming `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{_host()}-{os.getpid()}-{secrets.token_hex(4)}.tmp-{path.name}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only folder: its error must not hide the one that matters
            pass
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            cause = err.strerror or str(err) or type(err).__name__
            raise OutputError(f"cannot write {str(path)!r}: {cause}") from err
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed runs left in `folder`; the files removed.

    A temporary of this machine is stale when its process is gone; one of another machine
    (a folder shared by a cluster's nodes), or of the old unnamed kind, when it has not changed
    for `STALE_AFTER_S`. Files being written by a live process are left alone.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None and not _OLD_TEMPORARY.fullmatch(entry.name):
            continue
        try:
            if match is not None and match["host"] == _host():
                stale = not _process_alive(int(match["pid"]))
            else:
                stale = time.time() - entry.lstat().st_mtime > STALE_AFTER_S
            if stale and entry.is_file():
                entry.unlink()
                removed.append(entry)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed


def _host() -> str:
    """This machine, in 6 hex digits (a host name may hold any character)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a pid no process can have
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask() -> int:
    """The process' umask (only readable by setting it; restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`Path.write_text` (UTF-8), atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
