"""The python grader's sandbox, parent side: one worker process per grader, grading a batch of
samples per call, restarted when it dies or overruns.

Layers, outermost first:
1. bubblewrap (`bwrap`): new user, pid, network, ipc, uts and cgroup namespaces (no network
   interface but loopback of its own, no other process visible), a fresh /proc and /dev, a root
   holding only read-only binds of /usr, /lib*, the base Python installation, the worker script
   and the packages graders may import (numpy, rapidfuzz); no /etc, /home, /root, no repository,
   no data folder. Its one writable place is /tmp, a tmpfs of WORK_MB, its folder. An empty
   environment, uid/gid 65534 inside, no capabilities, no further user namespaces, its own
   session, killed with its parent.
2. The interpreter runs isolated (-I -S): no site-packages, no .pth, no mentor package.
3. Inside the worker (`sandbox_child.py`): a seccomp filter (no processes, no exec, no new
   executable memory, so no shared library written by the grader), resource limits (address space,
   CPU time per sample, file size, processes), then an audit hook as defence in depth.
4. Here: a wall-clock timeout per sample (the worker is killed and started again for the rest),
   a start that fails or overruns failing the grader for good, and at most MAX_SANDBOXES workers
   grading at once in this process.

Where bubblewrap is missing or cannot start a sandbox, python graders are refused when built,
unless the operator sets MENTOR_GRADERS_PYTHON_SANDBOX=weak (trusted, single-user setups only):
then the worker runs as a plain process (`unshare --net` where it works) with layers 2 to 4.
"""

from __future__ import annotations

import importlib.util
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

from mentor.errors import MentorError

log = logging.getLogger("mentor")

CHILD = Path(__file__).with_name("sandbox_child.py")
STARTUP_SECONDS = 30.0  # the worker imports numpy and locks itself down before the grader's module body runs
MAX_LINE = 1 << 20  # a reply line longer than this is not the worker's protocol: the grader wrote it
FILE_MB = 64  # largest file a grader may write in its folder
WORK_MB = 128  # the size of its folder (a tmpfs) under bubblewrap
SITE_PACKAGES = ("numpy", "rapidfuzz")  # what the sandbox shows of the installed packages
MODE_VARIABLE = "MENTOR_GRADERS_PYTHON_SANDBOX"
MAX_SANDBOXES = int(os.environ.get("MENTOR_GRADERS_PYTHON_MAX_SANDBOXES") or max(2, os.cpu_count() or 2))
_slots = threading.BoundedSemaphore(MAX_SANDBOXES)  # workers grading at once in this process
INSIDE_CHILD, INSIDE_SITE = "/opt/mentor/sandbox_child.py", "/opt/mentor/site"
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1"}


def sandbox_mode() -> str:
    """"bwrap" (the default) or "weak" (the operator's opt-out), from MENTOR_GRADERS_PYTHON_SANDBOX."""
    mode = os.environ.get(MODE_VARIABLE, "").strip().lower() or "bwrap"
    if mode not in ("bwrap", "weak"):
        raise MentorError(f"{MODE_VARIABLE}={mode!r}: use bwrap (the default) or weak")
    return mode


@lru_cache(maxsize=1)
def network_namespace_works() -> bool:
    """Whether `unshare --net` can start a process here (root, or user namespaces allowed)."""
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _interpreter() -> tuple[str, str]:
    """The real interpreter (not the venv's link to it) and its installation's folder."""
    return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)


@lru_cache(maxsize=1)
def _site_binds() -> tuple[tuple[str, str], ...]:
    """(host folder, folder in the sandbox) for each package graders may import, and its bundled libraries."""
    binds = []
    for name in SITE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            continue
        package = os.path.dirname(os.path.realpath(spec.origin))
        for folder in (package, os.path.join(os.path.dirname(package), f"{name}.libs")):
            if os.path.isdir(folder):
                binds.append((folder, f"{INSIDE_SITE}/{os.path.basename(folder)}"))
    return tuple(binds)


def bwrap_command(argv: list[str], work_mb: int = WORK_MB) -> list[str]:
    """`argv` (a command inside the sandbox) under bubblewrap, as the module's docstring describes."""
    exe, base = _interpreter()
    command = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
               "--proc", "/proc", "--dev", "/dev", "--size", str(work_mb * 2**20), "--tmpfs", "/tmp",
               "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            command += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            command += ["--ro-bind", top, top]
    if not (base == "/usr" or base.startswith("/usr/")):
        command += ["--ro-bind", base, base]  # at its own path: the interpreter's RUNPATH names it
    if not exe.startswith(base.rstrip("/") + "/") and not exe.startswith("/usr/"):
        command += ["--ro-bind", exe, exe]
    for host, inside in _site_binds():
        command += ["--ro-bind", host, inside]
    command += ["--ro-bind", str(CHILD), INSIDE_CHILD, "--chdir", "/tmp", "--clearenv"]
    for key, value in {**ENV, "HOME": "/tmp", "TMPDIR": "/tmp"}.items():
        command += ["--setenv", key, value]
    command += ["--uid", "65534", "--gid", "65534", "--", *argv]  # nobody inside, however it was started
    return command


@lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """None where bubblewrap starts the interpreter in a sandbox here, else why not (one line)."""
    if not shutil.which("bwrap"):
        return "bubblewrap is not installed"
    exe, _ = _interpreter()
    try:
        done = subprocess.run(bwrap_command([exe, "-I", "-S", "-c", "pass"]), capture_output=True, timeout=30,
                              env=ENV)
    except (OSError, subprocess.SubprocessError) as err:
        return f"bubblewrap could not start ({err})"
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"bubblewrap cannot start a sandbox here ({lines[-1] if lines else f'exit status {done.returncode}'})"
    return None


def check_available() -> str:
    """The sandbox mode python graders run in; MentorError (one line, how to enable them) when none is."""
    mode = sandbox_mode()
    if mode == "bwrap":
        problem = bwrap_problem()
        if problem:
            raise MentorError(f"python graders run only inside a bubblewrap sandbox, and {problem}: install it "
                              f"(apt install bubblewrap), or set {MODE_VARIABLE}=weak to run them unconfined by "
                              "namespaces (trusted, single-user setups only)")
    return mode


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
        self.mode = check_available()  # refused here, when the grader is built, where no sandbox works
        self.source = source
        self.cpu_seconds, self.wall_seconds = cpu_seconds, wall_seconds
        self.memory_mb, self.output_bytes = memory_mb, output_bytes
        self.proc: subprocess.Popen | None = None
        self.folder: Path | None = None
        self.fatal: str | None = None  # the source itself fails as it runs, or no worker starts: every sample gets this
        self.restarts = 0
        self._buffer = b""
        self._lock = threading.Lock()

    # -- the worker process -------------------------------------------------------------------

    def _command(self) -> tuple[list[str], str]:
        """The worker's command line and the folder it works in, as it sees it."""
        limits = [str(self.cpu_seconds), str(self.memory_mb), str(self.output_bytes), str(FILE_MB)]
        exe, _ = _interpreter()
        if self.mode == "bwrap":
            return bwrap_command([exe, "-I", "-S", INSIDE_CHILD, "/tmp", *limits, INSIDE_SITE, "seccomp"]), "/tmp"
        assert self.folder is not None
        work = self.folder / "work"
        work.mkdir()
        site = {os.path.dirname(host) for host, _ in _site_binds()}
        command = [exe, "-I", "-S", str(CHILD), str(work), *limits, site.pop() if len(site) == 1 else "", "seccomp"]
        if network_namespace_works():
            command = ["unshare", "--net", "--", *command]
        return command, str(work)

    def _start(self) -> None:
        """A worker with the source loaded; a worker that dies or overruns as it starts fails the
        grader (self.fatal), rather than costing every later sample the startup timeout again."""
        self.folder = Path(tempfile.mkdtemp(prefix="mentor-grader-"))
        command, work = self._command()
        env = {**ENV, "HOME": work, "TMPDIR": work}
        with open(self.folder / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                                         cwd=self.folder, start_new_session=True)
        self._buffer = b""
        try:
            self._send({"source": self.source})
            reply = self._read(time.monotonic() + STARTUP_SECONDS, "starting", STARTUP_SECONDS)
            if not reply.get("started"):
                raise _Died(f"the grader's worker answered {str(reply)[:200]} on starting")
            # the grader's module body runs now, under its limits
            reply = self._read(time.monotonic() + self.wall_seconds, "running the source's module body")
        except _Died as died:
            self.fatal = f"the grader's worker did not start: {died}"
            self._stop()
            return
        if "fatal" in reply:
            self.fatal = str(reply["fatal"])
            self._stop()
        elif not reply.get("ready"):
            self.fatal = f"the grader's worker answered {str(reply)[:200]} on starting"
            self._stop()

    def _send(self, obj) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(obj, default=str).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _Died(self._death("")) from None

    def _read(self, deadline: float, doing: str, limit: float | None = None) -> dict:
        """The worker's next reply line; _Died when it dies, overruns `deadline` or breaks the protocol."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise _Died(f"timeout: the grader took longer than {limit or self.wall_seconds:g} s ({doing})")
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
        if code is not None and code > 128 and self.mode == "bwrap":
            code = 128 - code  # bubblewrap exits 128 + N when the worker died of signal N
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
        """One outcome per (sample, item); never raises for what the grader does. Waits while
        MAX_SANDBOXES other workers of this process are grading."""
        with self._lock, _slots:
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

