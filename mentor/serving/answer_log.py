"""The one resumable answer log of batch prediction: `mentor predict --input` and the `batch` job kind
(OpenAI's batch API) both answer the lines of a JSONL file through it.

The log lies beside the output it becomes (`.NAME.partial`): a header line holding a key (a hash of the
input file's bytes and of whatever else decides the answers: model, settings), then one line per answered
input line, `{"line": n, "answer": {...}}`, made durable before more are generated. A rerun with the same
key answers only the lines still missing; another key (another input, model or settings) starts afresh,
so an answer is never taken from another question. The outputs appear whole (atomically) and only then
is the log removed: a reader never sees a half-written output, and a kill loses no answer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from mentor.files import atomic_file, file_sha256

LOG_FORMAT = 2  # bump when the log's records change meaning: a log of another format is started afresh


def log_path(output: Path) -> Path:
    """Where the answers that become `output` are kept until every line is answered."""
    return output.with_name(f".{output.name}.partial")


def answer_key(input_path: Path, settings: dict) -> str:
    """Same input bytes, same settings (model, sampling, endpoint: whatever decides the answers): same key."""
    spec = {"format": LOG_FORMAT, "input": file_sha256(input_path), "settings": settings}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


class AnswerLog:
    """{line: answer} of a file's lines answered so far, read back from a killed run's log with the same
    key; `add` appends to it durably, `finish` writes the outputs whole and removes the log."""

    def __init__(self, path: Path, key: str, header: dict | None = None):
        self.path = path
        self.answers: dict[int, dict] = self._resume(key, header or {})

    def _resume(self, key: str, header: dict) -> dict[int, dict]:
        """A torn last line (killed mid-write) is cut off, so the next answer is not glued onto it and lost
        with it; a log of another key is replaced by a fresh header."""
        data = self.path.read_bytes() if self.path.exists() else b""
        complete = data[: data.rfind(b"\n") + 1]
        # split at "\n" only: an answer may hold characters splitlines() also breaks at (\x85, \u2028)
        records = [_loads(line) for line in complete.decode("utf-8", errors="replace").split("\n") if line]
        if not records or not isinstance(records[0], dict) or records[0].get("key") != key:
            self.path.write_text(json.dumps({**header, "key": key}, ensure_ascii=False) + "\n", encoding="utf-8")
            return {}
        if len(complete) < len(data):
            os.truncate(self.path, len(complete))
        return {r["line"]: r["answer"] for r in records[1:]
                if isinstance(r, dict) and isinstance(r.get("line"), int) and isinstance(r.get("answer"), dict)}

    def add(self, answers: Iterable[tuple[int, dict]]) -> None:
        """Append answers and make them durable (one fsync for all of them: a caller answering in
        batches pays one per batch)."""
        with self.path.open("a", encoding="utf-8") as f:
            for line, answer in answers:
                f.write(json.dumps({"line": line, "answer": answer}, ensure_ascii=False) + "\n")
                self.answers[line] = answer
            f.flush()
            os.fsync(f.fileno())

    def finish(self, outputs: dict[Path, Iterable[dict]]) -> None:
        """Write every output as JSONL, each appearing whole, then remove the log (a kill in between
        leaves the log, and a rerun writes the outputs again from it)."""
        for path, rows in outputs.items():
            with atomic_file(path) as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.path.unlink(missing_ok=True)


def _loads(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None
