"""One server per data folder: two schedulers over one folder start each other's jobs and settle
them from half-written folders (a succeeded job reported `worker_died`). The lock is the OS's
(flock through `filelock`): it is held while the process lives and dropped by the kernel when it
dies, so a killed server never leaves a stale lock behind. Who holds it is written beside it, for
the refusal to name."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from filelock import FileLock, Timeout

from mentor.errors import MentorError
from mentor.files import atomic_write

LOCK_FILE = "server.lock"
HOLDER_FILE = "server.json"  # pid, host and port of the server holding the lock


def lock_data_folder(data_dir: Path, host: str | None = None, port: int | None = None) -> FileLock:
    """Take the data folder for this process, or raise naming the server that has it. Keep the
    returned lock referenced for as long as the server runs (dropping it releases the folder)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(data_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise MentorError(
            f"the data folder {data_dir} is in use by another mentor server ({_holder(data_dir)}); "
            "stop it, or give this one another --data-dir"
        ) from None
    atomic_write(
        data_dir / HOLDER_FILE,
        json.dumps({"pid": os.getpid(), "machine": socket.gethostname(), "host": host, "port": port}),
    )
    return lock


def _holder(data_dir: Path) -> str:
    try:
        holder = json.loads((data_dir / HOLDER_FILE).read_text())
        where = f" on http://{holder['host']}:{holder['port']}" if holder.get("host") and holder.get("port") else ""
        return f"pid {holder['pid']} on {holder.get('machine') or 'this machine'}{where}"
    except (OSError, ValueError, KeyError, TypeError):  # written a moment after the lock is taken
        return "its pid is not recorded yet"
