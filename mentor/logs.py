"""mentor's log: what a user should read, on standard output, prefixed "[mentor]"; and the noise of
the libraries underneath (deprecation notices, progress bars of internal loads) kept out of it.

Like transformers, the "mentor" logger gets a handler of its own on first import, so the Python
API speaks too; `setup_logging(verbosity)` sets how much: -1 quiet (warnings and errors),
0 normal, 1 verbose (debug, and the libraries' own warnings back on).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

LOGGER = "mentor"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (so redirections and test captures see it)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        prefix = "[mentor] " if record.levelno < logging.WARNING else f"[mentor] {record.levelname.lower()}: "
        if record.exc_info:  # an internal error (log.exception): its traceback belongs in the log
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(prefix + line if line else line for line in text.split("\n"))


def _library_logger() -> logging.Logger:
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(_Format())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def quiet_libraries() -> None:
    """Keep what users can do nothing about out of their way."""
    # read by the libraries when they are imported; set here, before any of them is
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights" bars of internal loads
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    # bitsandbytes warns at import, on AVX512-BF16 CPUs, that an optional kernels package is missing
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # imported already: tell it directly
        transformers = sys.modules["transformers"]
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def setup_logging(verbosity: int = 0) -> logging.Logger:
    logger = _library_logger()
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    if verbosity <= 0:
        quiet_libraries()
    return logger


_library_logger()
