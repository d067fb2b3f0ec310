"""The python grader's sandbox, parent side: one worker process per grader, grading a batch of
samples per call, restarted when it dies or overruns.

Layers, outermost first: a separate process with an empty environment (no API keys) in its own
temporary folder; `unshare --net` (a network namespace with no interfaces) where probing shows it
works (root, or unprivileged user namespaces); a wall-clock timeout per sample enforced here (the
worker is killed and started again for the samples after it); and inside the worker
(`sandbox_child.py`) resource limits and an audit hook refusing sockets, processes, ctypes and
files outside its folder. Audit hooks are no security boundary on their own (CPython says so):
the process, its limits and the timeout are what contain a grader that works around them.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("mentor")

CHILD = Path(__file__).with_name("sandbox_child.py")
STARTUP_SECONDS = 30.0  # the worker imports numpy and compiles the source before its first sample
MAX_LINE = 1 << 20  # a reply line longer than this is not the worker's protocol: the grader wrote it
FILE_MB = 64  # largest file a grader may write in its folder


@lru_cache(maxsize=1)
def network_namespace_works() -> bool:
    """Whether `unshare --net` can start a process here (root, or user namespaces allowed)."""
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@dataclass
class Outcome:
    """One sample's result: a score, or an error and its kind (OpenAI's error flag)."""

    score: float = 0.0
    error: str | None = None
    kind: str | None = None


class _Died(Exception):
    def __init__(self, message: str):
        super().__init__(message)


class SandboxWorker:
    """Grades batches with `source`'s grade(sample, item) in a worker process (see the module)."""

    def __init__(self, source: str, cpu_seconds: float = 10.0, wall_seconds: float = 20.0, memory_mb: int = 2048,
                 output_bytes: int = 64 * 1024):
        self.source = source
        self.cpu_seconds, self.wall_seconds = cpu_seconds, wall_seconds
        self.memory_mb, self.output_bytes = memory_mb, output_bytes
        self.proc: subprocess.Popen | None = None
        self.folder: Path | None = None
        self.fatal: str | None = None  # the source itself fails as it runs: every sample gets this
        self.restarts = 0
        self._buffer = b""
        self._lock = threading.Lock()

    # -- the worker process -------------------------------------------------------------------

    def _start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mentor-grader-"))
        work = self.folder / "work"
        work.mkdir()
        # -I: no environment variables, no user site, not the script's folder on the path
        command = [sys.executable, "-I", str(CHILD), str(work), str(self.cpu_seconds), str(self.memory_mb),
                   str(self.output_bytes), str(FILE_MB)]
        if network_namespace_works():
            command = ["unshare", "--net", "--", *command]
        env = {"PATH": os.defpath, "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(self.folder / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                                         cwd=work, start_new_session=True)
        self._buffer = b""
        self._send({"source": self.source})
        reply = self._read(time.monotonic() + STARTUP_SECONDS + self.wall_seconds, "starting")
        if "fatal" in reply:
            self.fatal = str(reply["fatal"])
            self._stop()
        elif not reply.get("ready"):
            raise _Died(f"the grader's worker answered {str(reply)[:200]} on starting")

    def _send(self, obj) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(obj, default=str).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _Died(self._death("")) from None

    def _read(self, deadline: float, doing: str) -> dict:
        """The worker's next reply line; _Died when it dies, overruns `deadline` or breaks the protocol."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise _Died(f"timeout: the grader took longer than {self.wall_seconds:g} s ({doing})")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _Died(self._death(doing))
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE:
                self._kill()
                raise _Died("output limit: the grader wrote past its output channel's limit")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply = json.loads(line)
            if not isinstance(reply, dict):
                raise ValueError
        except ValueError:
            self._kill()
            raise _Died("the grader wrote into its worker's output channel") from None
        return reply

    def _death(self, doing: str) -> str:
        """Why the worker ended, in words."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill()
            code = self.proc.returncode
        if code == -signal.SIGXCPU:
            return f"CPU time limit: the grader used more than {self.cpu_seconds:g} s of CPU time"
        if code == -signal.SIGXFSZ:
            return f"file size limit: the grader wrote a file larger than {FILE_MB} MB"
        tail = ""
        if self.folder is not None and (self.folder / "stderr.log").exists():
            tail = (self.folder / "stderr.log").read_bytes()[-300:].decode("utf-8", "replace").strip()
        what = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        return f"the grader's process died ({what}{', ' + doing if doing else ''}){': ' + tail if tail else ''}"

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: anything it started goes too
            except ProcessLookupError:
                pass
            self.proc.wait()

    def _stop(self) -> None:
        if self.proc is not None:
            self._kill()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            self.proc = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    # -- grading ------------------------------------------------------------------------------

    def grade_many(self, pairs: list[tuple[dict, dict]]) -> list[Outcome]:
        """One outcome per (sample, item); never raises for what the grader does."""
        with self._lock:
            outcomes: list[Outcome | None] = [None] * len(pairs)
            pending = list(range(len(pairs)))
            while pending:
                if self.fatal:
                    for i in pending:
                        outcomes[i] = Outcome(error=self.fatal, kind="python_grader_runtime_error")
                    break
                try:
                    if self.proc is None or self.proc.poll() is not None:
                        if self.proc is not None:
                            self._stop()
                            self.restarts += 1
                        self._start()
                        if self.fatal:
                            continue
                    self._send({"batch": [[i, pairs[i][0], pairs[i][1]] for i in pending]})
                    while pending:
                        reply = self._read(time.monotonic() + self.wall_seconds, "grading")
                        i = reply.get("i")
                        if i != pending[0]:
                            self._kill()
                            raise _Died("the grader wrote into its worker's output channel")
                        pending.pop(0)
                        if "error" in reply:
                            outcomes[i] = Outcome(error=str(reply["error"]), kind="python_grader_runtime_error")
                        else:
                            outcomes[i] = Outcome(score=float(reply["score"]))
                except _Died as died:
                    # the sample being graded is the one that killed it; the worker starts again for the rest
                    self._stop()
                    self.restarts += 1
                    if pending:
                        outcomes[pending.pop(0)] = Outcome(error=str(died), kind="python_grader_runtime_error")
            return [o if o is not None else Outcome(error="not graded", kind="other_error") for o in outcomes]

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __del__(self):  # a grader never closed: its worker and folder go with it
        try:
            self._stop()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

