"""The python grader's worker process (run by `mentor.graders.sandbox` as a script, never imported;
under bubblewrap it is the only file of mentor's the sandbox can see).

Protocol: one JSON line in with the source; "started" once the runtime is loaded and locked down,
then "ready" (or "fatal") once the source's module body ran; then batches: one JSON line in
({"batch": [[i, sample, item], ...]}), one JSON line out per sample ({"i": i, "score": x} or
{"i": i, "error": "..."}), so a sample that kills the process costs only itself.

Before the user's code runs the worker locks itself down, in this order:
1. imports what graders may use (PRELOAD), the only native code it will ever load;
2. a seccomp filter (all threads): no new executable memory (so no further shared library: a
   `.so` the grader writes cannot be loaded), no new processes (clone without CLONE_THREAD, fork,
   execve), no ptrace, unshare, setns or mount;
3. resource limits: address space, file size, no core dumps, processes, CPU time (per sample,
   and for the module body);
4. an audit hook, defence in depth, which refuses sockets, processes, ctypes, files outside its
   folder, frame access (sys._getframe, tb_frame, gi_frame...) and tracing. Its state and helpers
   live in a private namespace of their own (a copy of builtins, immutable tables, C functions):
   nothing the grader can reach (modules, builtins, this module's globals) changes what it does.
The parent adds bubblewrap (namespaces, a read-only view of the interpreter only), an empty
environment and the wall-clock timeout. Standard library only.
"""

import builtins
import json
import math
import os
import resource
import sys

# What a grader may import that loads native code: imported before the lockdown, since no shared
# library can be loaded afterwards (pure-Python modules still import as usual).
PRELOAD = ("array", "base64", "binascii", "bisect", "cmath", "collections", "copy", "csv", "dataclasses", "datetime",
           "decimal", "difflib", "enum", "fractions", "functools", "hashlib", "heapq", "itertools", "json", "math",
           "numbers", "operator", "random", "re", "statistics", "string", "struct", "textwrap", "typing", "unicodedata",
           "zlib", "numpy", "numpy.linalg", "numpy.random", "numpy.fft", "rapidfuzz", "rapidfuzz.fuzz",
           "rapidfuzz.distance", "rapidfuzz.process")

HOOK_SOURCE = r'''
def realpath(path):
    """The path with every symlink resolved, from C functions only (os.path is Python the grader
    could patch)."""
    if not path.startswith("/"):
        path = getcwd() + "/" + path
    todo = [p for p in path.split("/") if p]
    todo.reverse()
    parts = []
    links = 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        current = "/" + "/".join(parts + [part])
        try:
            link = (lstat(current).st_mode & 0o170000) == 0o120000
        except OSError:
            link = False
        if not link:
            parts.append(part)
            continue
        links += 1
        if links > 40:
            raise Refused("too many levels of symbolic links")
        target = readlink(current)
        if target.startswith("/"):
            parts = []
        more = [p for p in target.split("/") if p]
        more.reverse()
        todo.extend(more)
    return "/" + "/".join(parts)


def inside(path, roots):
    real = realpath(path)
    for root in roots:
        if real == root or real.startswith(root.rstrip("/") + "/"):
            return True
    return False


def path_of(value):
    if type(value) is bytes:
        return value.decode("utf-8", "surrogateescape")
    if type(value) is str:
        return value
    if value is None or type(value) is int:
        return None
    raise Refused(f"the grader may open a path given as str or bytes only, not {type(value).__name__}")


def hook(event, args):
    if event == "open":
        path, mode, flags = (list(args) + [None, None, None])[:3]
        path = path_of(path)
        if path is None:
            raise Refused("the grader may not open file descriptors")
        writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
            type(flags) is int and flags & WRITE_FLAGS)
        if inside(path, (FOLDER,)) or (not writing and (path in READABLE_FILES or inside(path, READABLE))):
            return
        raise Refused(f"the grader may not open {path!r}: files outside its own folder are refused")
    if event in PATH_EVENTS:
        indexes, own_only = PATH_EVENTS[event]
        for i in indexes:
            path = path_of(args[i]) if i < len(args) else None
            if path is None:
                continue
            if not (inside(path, (FOLDER,)) or (not own_only and inside(path, READABLE))):
                raise Refused(f"the grader may not touch {path!r}: outside its own folder")
        return
    if event == "import" and args:
        if type(args[0]) is not str or str.__str__(args[0]).split(".")[0] in REFUSED_IMPORTS:
            raise ImportError(f"the grader may not import {args[0]} (no processes, sockets or ctypes)")
        for entry in (args[2] if len(args) > 2 and type(args[2]) is list else ()):
            if type(entry) is not str or not (entry in INITIAL_PATH or inside(entry, READABLE)):
                raise ImportError(f"the grader may not import from {entry!r} (only the installed modules)")
        return
    if event == "object.__getattr__" and len(args) > 1 and args[1] in FRAME_ATTRIBUTES:
        raise Refused(f"the grader may not read {args[1]} (no access to frames)")
    if event == "object.__setattr__" and len(args) > 1 and args[1] == "__code__":
        raise Refused("the grader may not replace a function's code")
    if event in FRAME_EVENTS:
        raise Refused(f"the grader may not do {event} (no access to frames or tracing)")
    if event == "resource.setrlimit" and not ALLOW_RLIMIT[0]:
        raise Refused("the grader may not change its limits")
    if event.startswith(REFUSED_PREFIXES):
        raise Refused(f"the grader may not do {event} (no network, processes or ctypes)")
'''


class Refused(PermissionError, ValueError):
    """What the audit hook raises. A ValueError too: the standard library's callers of
    sys._getframe (namedtuple, typing, enum) expect ValueError when no frame is there, and go on."""


REFUSED_PREFIXES = ("socket.", "subprocess.", "ctypes.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                    "os.forkpty", "os.system", "os.kill", "os.killpg", "os.setuid", "os.setgid", "pty.", "gc.",
                    "resource.prlimit", "sys.addaudithook", "_posixsubprocess", "signal.pthread_kill", "os.chroot",
                    "os.putenv", "os.unsetenv", "winreg.", "webbrowser.", "cpython.", "sys.setrecursionlimit")
REFUSED_IMPORTS = frozenset({"_posixsubprocess", "_socket", "socket", "_ctypes", "ctypes", "subprocess",
                             "multiprocessing", "_multiprocessing", "pty", "mmap", "_xxsubinterpreters", "gc"})
FRAME_EVENTS = frozenset({"sys._getframe", "sys._current_frames", "sys._current_exceptions", "sys.settrace",
                          "sys.setprofile", "sys.monitoring.register_callback"})
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back", "f_locals", "f_globals",
                              "f_builtins", "gi_yieldfrom", "cr_await", "ag_await"})
PATH_EVENTS = {  # event: indexes of path arguments, and whether only the grader's folder is allowed
    "os.listdir": ((0,), False), "os.scandir": ((0,), False), "os.remove": ((0,), True), "os.rename": ((0, 1), True),
    "os.rmdir": ((0,), True), "os.mkdir": ((0,), True), "os.chmod": ((0,), True), "os.chown": ((0,), True),
    "os.link": ((0, 1), True), "os.symlink": ((0, 1), True), "os.truncate": ((0,), True), "os.utime": ((0,), True),
    "os.chdir": ((0,), False), "shutil.rmtree": ((0,), True), "shutil.copyfile": ((0, 1), True),
    "shutil.move": ((0, 1), True), "os.mkfifo": ((0,), True), "os.mknod": ((0,), True),
}

# seccomp: syscall numbers per architecture (AUDIT_ARCH_*), from the kernel's tables
SYSCALLS = {
    "x86_64": {"arch": 0xC000003E, "seccomp": 317, "mmap": 9, "mprotect": 10, "pkey_mprotect": 329, "clone": 56,
               "clone3": 435, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "ptrace": 101, "unshare": 272,
               "setns": 308, "mount": 165, "process_vm_readv": 310, "process_vm_writev": 311, "io_uring_setup": 425},
    "aarch64": {"arch": 0xC00000B7, "seccomp": 277, "mmap": 222, "mprotect": 226, "pkey_mprotect": 288, "clone": 220,
                "clone3": 435, "execve": 221, "execveat": 281, "ptrace": 117, "unshare": 97, "setns": 268,
                "mount": 40, "process_vm_readv": 270, "process_vm_writev": 271, "io_uring_setup": 425},
}


def _seccomp_filter(nr: dict) -> bytes:
    """A classic BPF program for seccomp (see the module's docstring for what it refuses)."""
    import struct

    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38  # ENOSYS for clone3: glibc then falls back to clone
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    arg0, arg2 = 16, 32  # low 32 bits of args[0] and args[2] in struct seccomp_data (little-endian)
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, nr["arch"]), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    if "fork" in nr:  # x86_64: the x32 ABI's numbers
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]
    for name in ("mmap", "mprotect", "pkey_mprotect"):  # PROT_EXEC (4) in the protection argument
        prog += [(jeq, 0, 4, nr[name]), (ld, 0, 0, arg2), (jset, 0, 1, 4), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    # clone: threads (CLONE_THREAD, 0x10000) only
    prog += [(jeq, 0, 4, nr["clone"]), (ld, 0, 0, arg0), (jset, 1, 0, 0x10000), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    prog += [(jeq, 0, 1, nr["clone3"]), (ret, 0, 0, enosys)]
    for name in ("fork", "vfork", "execve", "execveat", "ptrace", "unshare", "setns", "mount", "process_vm_readv",
                 "process_vm_writev", "io_uring_setup"):
        if name in nr:
            prog += [(jeq, 0, 1, nr[name]), (ret, 0, 0, eperm)]
    prog.append((ret, 0, 0, allow))
    return b"".join(struct.pack("HBBI", *op) for op in prog)


def _lock_down() -> None:
    """Installs the seccomp filter on every thread; raises when the kernel refuses it."""
    import ctypes  # numpy has imported it already; the audit hook refuses it from here on
    import platform

    nr = SYSCALLS.get(platform.machine())
    if nr is None:
        raise OSError(f"no seccomp filter for {platform.machine()}")
    code = _seccomp_filter(nr)

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buffer = ctypes.create_string_buffer(code, len(code))
    program = Program(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &program)
    if libc.syscall(nr["seccomp"], 1, 1, ctypes.byref(program)) != 0:
        raise OSError(ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER) failed")


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
    site = sys.argv[6] if len(sys.argv) > 6 and sys.argv[6] else None
    seccomp = len(sys.argv) > 7 and sys.argv[7] == "seccomp"
    if site:
        sys.path.append(site)  # the packages the sandbox shows (numpy, rapidfuzz), read-only
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

    header = json.loads(proto_in.readline())
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - an optional module that is not installed
            pass
    if seccomp:
        _lock_down()
    folder = os.path.realpath(folder)
    allow_rlimit = [False]  # only the loop below changes limits once the hook is in
    private = {
        "__builtins__": dict(builtins.__dict__), "Refused": Refused, "FOLDER": folder,
        "READABLE": tuple(sorted({os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)})),
        "INITIAL_PATH": frozenset(p for p in sys.path if type(p) is str),
        "READABLE_FILES": frozenset({os.devnull, "/dev/urandom", "/proc/self/statm"}),
        "WRITE_FLAGS": os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
        "REFUSED_PREFIXES": REFUSED_PREFIXES, "REFUSED_IMPORTS": REFUSED_IMPORTS, "FRAME_EVENTS": FRAME_EVENTS,
        "FRAME_ATTRIBUTES": FRAME_ATTRIBUTES, "PATH_EVENTS": dict(PATH_EVENTS), "ALLOW_RLIMIT": allow_rlimit,
        "lstat": os.lstat, "readlink": os.readlink, "getcwd": os.getcwd,
    }
    exec(compile(HOOK_SOURCE, "<sandbox hook>", "exec", dont_inherit=True), private)  # noqa: S102 - our own code
    hook = private["hook"]

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * 2**20, file_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # counts where the worker's real uid is not root
    # the grader may allocate memory_mb beyond what the runtime and the preloaded modules hold
    memory = _vm_bytes() + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # the loop's own references: the grader can rebind module attributes, not main's locals
    setrlimit, getrusage, ceil, rusage_self = resource.setrlimit, resource.getrusage, math.ceil, resource.RUSAGE_SELF
    rlimit_cpu, infinity = resource.RLIMIT_CPU, resource.RLIM_INFINITY

    def cpu_limit() -> None:
        usage = getrusage(rusage_self)  # no builtins here (sum): the grader could rebind them
        used = usage.ru_utime + usage.ru_stime
        # the soft limit sends SIGXCPU, which ends the process: the parent reports it
        setrlimit(rlimit_cpu, (ceil(used + cpu_seconds), infinity))

    cpu_limit()  # the module body's CPU time
    send({"started": True})
    sys.addaudithook(hook)
    del hook, private

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
            allow_rlimit[0] = True
            cpu_limit()
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
