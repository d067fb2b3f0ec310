"""One job, run in a process of its own: `python -m mentor.server.worker JOB_FOLDER`.

The job's kind and fields are the folder's config.yaml (written by the server); the job model
does the rest (lock, state, events, resume). A worker that dies leaves the folder as a kill
leaves it, and the next worker on the same folder resumes from the last checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> int:
    import mentor  # noqa: F401  (registers the job kinds, sets up logging)
    from mentor.errors import MentorError
    from mentor.jobs import JobCancelled, run
    from mentor.logs import setup_logging

    setup_logging()
    folder = Path((argv or sys.argv[1:])[0])
    fields = yaml.safe_load((folder / "config.yaml").read_text())
    kind = fields.pop("kind")
    try:
        run(kind, fields)
    except JobCancelled:
        return 130
    except MentorError as err:
        print(f"mentor: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
