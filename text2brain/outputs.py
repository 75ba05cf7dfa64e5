"""Files written for a user appear whole or not at all.

Every writer of the project (maps, pictures, the query index, exports, split files, the
rendered-maps cache) writes through `atomic_output`: the file is written under a hidden
temporary name in the same folder and renamed into place, so a crash, SIGINT or full disk
never leaves a truncated file under the final name, and the error names the file.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
    tmp = path.with_name(f".{secrets.token_hex(4)}.tmp-{path.name}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            cause = err.strerror or str(err) or type(err).__name__
            raise OutputError(f"cannot write {str(path)!r}: {cause}") from err
        raise


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
