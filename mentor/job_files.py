"""A job folder's own files: their names, what makes a folder a job's, and the one reader of its
state. The job layer (mentor.jobs) writes them and reads them for everyone above it; this module
sits below the layers so the model resolver (mentor.models) can tell a job folder from a model
folder without reading the files by name itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from mentor.errors import DamagedJobFile

CONFIG_FILE = "config.yaml"  # the job: its kind and every config field (usable as `--config`)
STATE_FILE = "state.json"  # its state, progress, input hashes and error
RESULT_FILE = "result.json"  # the finished job's result (a TunedModel)
JOB_FILES = (STATE_FILE, CONFIG_FILE)  # what makes a folder a mentor job's


def is_job_folder(folder: str | Path) -> bool:
    return any((Path(folder) / name).is_file() for name in JOB_FILES)


def has_result(folder: str | Path) -> bool:
    """The job finished and wrote its result."""
    return (Path(folder) / RESULT_FILE).is_file()


def read_state(folder: str | Path) -> dict:
    """The job's state, or {} when there is none or it cannot be read."""
    try:
        return load_state(folder)
    except DamagedJobFile:
        return {}


def load_state(folder: str | Path) -> dict:
    """The job's state ({} when the folder has none yet); a state.json that is not a JSON object
    (edited by hand, or not mentor's) is a DamagedJobFile naming it."""
    path = Path(folder) / STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise DamagedJobFile(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        state = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        state = None
    if not isinstance(state, dict):
        raise DamagedJobFile(f"{path} is damaged (not a JSON object as mentor writes it); restore it, or delete the "
                             "folder to start the job over")
    return state
