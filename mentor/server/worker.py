"""One job, run in a process of its own: `python -m mentor.server.worker JOB_FOLDER`.

The job's kind and fields are the folder's job config (written by the server); the job model
does the rest (lock, state, events, resume). A worker that dies leaves the folder as a kill
leaves it, and the next worker on the same folder resumes from the last checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import mentor  # noqa: F401  (registers the job kinds, sets up logging)
    from mentor.errors import MentorError
    from mentor.jobs import JobCancelled, read_job_config, run
    from mentor.logs import setup_logging

    setup_logging()
    folder = Path((argv or sys.argv[1:])[0])
    try:
        fields = read_job_config(folder)  # a damaged order is one line naming it, as any other error
        kind = fields.pop("kind", None)
        if not kind:
            raise MentorError(f"{folder}: its job config names no job kind")
        run(kind, fields)
    except JobCancelled:
        return 130
    except MentorError as err:
        print(f"mentor: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
