"""Files that are never seen half-written: a reader finds the old version or the whole new one."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from mentor.errors import MentorError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; when the block ends without error the file
    written there is made durable and renamed to `path`, else removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)  # else a crash just after the rename can leave an empty file under the final name
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)  # the rename itself


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """An open file that appears at `path` only once the block ends without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        yield f


def atomic_write(path: str | Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


@contextmanager
def atomic_folder(folder: str | Path, keep_old: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `folder`; when the block ends without error it replaces
    `folder` whole. On error the temporary folder is removed and `folder` is left as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists() and not keep_old:
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def cut_torn_line(path: str | Path) -> None:
    """Cut a last line left without its newline (the writer was killed mid-line) from a file that
    is appended to line by line, so the next line appended is not glued onto it and lost with it."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def append_line(path: str | Path, line: str) -> None:
    """Append one line (a JSONL record) whole, after cutting a torn last line."""
    cut_torn_line(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_path(dst: Path) -> None:
    """Fail before any model loads if `dst` cannot be written: a folder, or an unwritable parent."""
    if dst.is_dir():
        raise MentorError(f"output path {dst} is a directory; give a file path such as {dst / 'predictions.jsonl'}")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=dst.parent):
            pass
    except OSError as err:
        raise MentorError(f"cannot write the output file {dst}: its folder {dst.parent} is not writable "
                          f"({err.strerror or err})") from None
