"""The python grader's worker process (run as a script by `mentor.graders.sandbox`, never imported).

It compiles the user's source once, then grades batches: one JSON line in ({"batch": [[i, sample,
item], ...]}), one JSON line out per sample ({"i": i, "score": x} or {"i": i, "error": "..."}), so
a sample that kills the process costs only itself. Before the user's code runs it limits itself:
address space (RLIMIT_AS), file size, core dumps, CPU time per sample (RLIMIT_CPU, raised from
what was used before each sample), and installs an audit hook, which cannot be removed, refusing
sockets, new processes, ctypes and any file outside its folder (reads of the Python installation
aside, for imports). The parent adds the wall-clock timeout, `unshare --net` where it works, and an
empty environment. Standard library only: the mentor package is not imported here.
"""

import builtins
import json
import math
import os
import resource
import sys

# Modules a grader may use, imported before the audit hook (some load shared libraries through
# ctypes as they import, which the hook refuses afterwards).
PRELOAD = ("collections", "datetime", "decimal", "difflib", "fractions", "functools", "itertools", "math", "random",
           "re", "statistics", "string", "unicodedata", "numpy", "rapidfuzz", "rapidfuzz.fuzz")
REFUSED_PREFIXES = ("socket.", "subprocess.", "ctypes.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                    "os.forkpty", "os.system", "os.kill", "os.killpg", "os.setuid", "os.setgid", "pty.", "gc.get_",
                    "resource.prlimit", "sys.addaudithook", "_posixsubprocess", "signal.pthread_kill", "os.chroot",
                    "os.putenv", "os.unsetenv", "winreg.", "webbrowser.")
REFUSED_IMPORTS = {"_posixsubprocess", "_socket", "socket", "_ctypes", "ctypes", "subprocess", "multiprocessing",
                   "_multiprocessing", "pty", "mmap", "_xxsubinterpreters"}
PATH_EVENTS = {  # event: indexes of path arguments, and whether only the grader's folder is allowed
    "os.listdir": ((0,), False), "os.scandir": ((0,), False), "os.remove": ((0,), True), "os.rename": ((0, 1), True),
    "os.rmdir": ((0,), True), "os.mkdir": ((0,), True), "os.chmod": ((0,), True), "os.chown": ((0,), True),
    "os.link": ((0, 1), True), "os.symlink": ((0, 1), True), "os.truncate": ((0,), True), "os.utime": ((0,), True),
    "os.chdir": ((0,), False), "shutil.rmtree": ((0,), True), "shutil.copyfile": ((0, 1), True),
    "shutil.move": ((0, 1), True), "os.mkfifo": ((0,), True), "os.mknod": ((0,), True),
}


class OutputLimit(Exception):
    pass


class CappedOutput:
    """What the grader prints, kept up to a limit per sample; past it, writing raises."""

    def __init__(self, limit: int):
        self.limit, self.size, self.over = limit, 0, False

    def write(self, text) -> int:
        self.size += len(text)
        if self.size > self.limit:
            self.over = True
            raise OutputLimit(f"printed more than {self.limit} bytes")
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    folder, cpu_seconds, memory_mb, output_bytes, file_mb = (sys.argv[1], float(sys.argv[2]), int(sys.argv[3]),
                                                             int(sys.argv[4]), int(sys.argv[5]))
    # the protocol keeps its own copies of the pipes; fds 0 and 1 become /dev/null, so nothing the
    # grader writes to them (a C library's printf) reaches the protocol
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.chdir(folder)

    def send(obj) -> None:
        proto_out.write(json.dumps(obj).encode() + b"\n")
        proto_out.flush()

    for name in PRELOAD:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - an optional module that is not installed
            pass
    folder = os.path.realpath(folder)
    readable = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path)
                if p and os.path.isdir(p)}
    readable_files = {os.devnull, "/dev/urandom", "/proc/self/statm"}

    def inside(path, roots) -> bool:
        real = os.path.realpath(path)
        return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)

    def path_of(value):
        if isinstance(value, bytes):
            return os.fsdecode(value)
        return value if isinstance(value, str) else getattr(value, "__fspath__", lambda: None)()

    allow_rlimit = [False]  # only the loop below changes limits once the hook is in

    def hook(event, args):
        if event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            path = path_of(path)
            if path is None:  # an fd: only the protocol's, which it already holds
                raise PermissionError("the grader may not open file descriptors")
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                flags is not None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if inside(path, [folder]) or (not writing and (path in readable_files or inside(path, readable))):
                return
            raise PermissionError(f"the grader may not open {path!r}: files outside its own folder are refused")
        if event in PATH_EVENTS:
            indexes, own_only = PATH_EVENTS[event]
            for i in indexes:
                path = path_of(args[i]) if i < len(args) else None
                if path is None:
                    continue
                if not (inside(path, [folder]) or (not own_only and inside(path, readable))):
                    raise PermissionError(f"the grader may not touch {path!r}: outside its own folder")
            return
        if event == "import" and args and str(args[0]).split(".")[0] in REFUSED_IMPORTS:
            raise ImportError(f"the grader may not import {args[0]} (no processes, sockets or ctypes)")
        if event == "resource.setrlimit" and not allow_rlimit[0]:
            raise PermissionError("the grader may not change its limits")
        if event.startswith(REFUSED_PREFIXES):
            raise PermissionError(f"the grader may not do {event} (no network, processes or ctypes)")

    header = json.loads(proto_in.readline())
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * 2**20, file_mb * 2**20))
    # the grader may allocate memory_mb beyond what the runtime and the preloaded modules hold
    memory = _vm_bytes() + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    sys.addaudithook(hook)

    stdout = CappedOutput(output_bytes)
    sys.stdout = sys.stderr = stdout
    namespace = {"__name__": "grader", "__builtins__": builtins}
    try:
        exec(compile(header["source"], "<grader>", "exec", dont_inherit=True), namespace)  # noqa: S102
        grade = namespace.get("grade")
        if not callable(grade):
            raise TypeError("the source defines no function grade(sample, item)")
    except BaseException as err:  # noqa: BLE001 - the user's module body: whatever it raised is its error
        send({"fatal": f"the source failed as it ran: {type(err).__name__}: {str(err)[:1000]}"})
        return
    send({"ready": True})

    while True:
        line = proto_in.readline()
        if not line:
            return
        for i, sample, item in json.loads(line)["batch"]:
            used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
            allow_rlimit[0] = True
            # the soft limit sends SIGXCPU, which ends the process: the parent reports it
            resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(used + cpu_seconds), resource.RLIM_INFINITY))
            allow_rlimit[0] = False
            stdout.size, stdout.over = 0, False
            try:
                score = grade(sample, item)
                if stdout.over:
                    raise OutputLimit(f"printed more than {output_bytes} bytes")
                if isinstance(score, bool) or not isinstance(score, (int, float)) and not hasattr(score, "__float__"):
                    raise TypeError(f"grade() returned {type(score).__name__}, not a number")
                score = float(score)
                if score != score or score in (float("inf"), float("-inf")):
                    raise ValueError(f"grade() returned {score}")
                send({"i": i, "score": score})
            except MemoryError:
                send({"i": i, "error": f"MemoryError: used more than {memory_mb} MB", "kind": "memory"})
            except OutputLimit as err:
                send({"i": i, "error": f"output limit: {err}", "kind": "output"})
            except BaseException as err:  # noqa: BLE001 - the user's code: any failure is that sample's
                if isinstance(err, SystemExit):
                    err = RuntimeError(f"grade() called exit({err.code})")
                send({"i": i, "error": f"{type(err).__name__}: {str(err)[:1000]}", "kind": "runtime"})


if __name__ == "__main__":
    main()
