"""A persistent SQLite cache of teacher answers, so nothing paid for is ever asked twice.

Each answer is committed in its own transaction the moment it arrives (WAL mode, synchronous=FULL),
so a run killed halfway keeps everything answered before the kill, and a rerun asks only for the
rest. One connection per cache object, guarded by a lock, serves threads and asyncio tasks alike;
other processes may write the same file at once (SQLite's busy timeout makes them take turns).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

from mentor.errors import MentorError
from mentor.teachers.completion import Completion, GenerationParams

CACHE_FILENAME = "teacher_cache.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    teacher TEXT NOT NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,
    answer TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(identity: str, prompt: str, params: GenerationParams) -> str:
    """sha256 of teacher, full prompt and params as canonical JSON: change any of them, ask again."""
    blob = json.dumps([identity, prompt, params.canonical_json()], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class TeacherCache:
    """Answers by (teacher, prompt, params); the prompt and params are stored too, for inspection."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an answer cost money: make each commit durable
            self._db.execute(_SCHEMA)
        except sqlite3.Error as err:
            raise MentorError(f"cannot open the teacher cache {self.path}: {err}") from err
        self._lock = threading.Lock()

    def get_many(self, identity: str, prompts: list[str], params: GenerationParams) -> dict[str, list[Completion]]:
        """The cached answers among `prompts`, marked cached=True."""
        keys = {cache_key(identity, p, params): p for p in prompts}
        found: dict[str, list[Completion]] = {}
        key_list = list(keys)
        with self._lock:
            for start in range(0, len(key_list), 500):  # stay under SQLite's bound-parameter limit
                chunk = key_list[start : start + 500]
                rows = self._db.execute(
                    f"SELECT key, answer FROM completions WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                for key, answer in rows:
                    found[keys[key]] = [Completion.from_json(c, cached=True) for c in json.loads(answer)]
        return found

    def get(self, identity: str, prompt: str, params: GenerationParams) -> list[Completion] | None:
        return self.get_many(identity, [prompt], params).get(prompt)

    def put(self, identity: str, prompt: str, params: GenerationParams, completions: list[Completion]) -> None:
        """Store and commit one answer now (a single autocommitted statement)."""
        answer = json.dumps([c.to_json() for c in completions], ensure_ascii=False)
        row = (cache_key(identity, prompt, params), identity, prompt, params.canonical_json(), answer, time.time())
        with self._lock:
            try:
                self._db.execute("INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?, ?, ?)", row)
            except sqlite3.Error as err:  # a full disk, a file gone read-only: say so, never a traceback
                raise MentorError(f"cannot write the teacher cache {self.path}: {err}; the answers saved "
                                  "before this are kept") from err

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
