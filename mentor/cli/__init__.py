"""The `mentor` command line: job commands generated from the job-kind registry, and the tools
around jobs (predict, label, eval, status, cancel). Nothing imports this layer."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from mentor.errors import MentorError
from mentor.jobs.lifecycle import JobCancelled

log = logging.getLogger("mentor")


class UsageError(MentorError):
    """A command line that does not parse."""


class MentorParser(argparse.ArgumentParser):
    """argparse with mentor's one-line errors: `mentor: error: mentor tune: argument ...`."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    from mentor import recipes  # noqa: F401  (registers the built-in job kinds)
    from mentor.cli import grade, jobs, server, tools

    parser = MentorParser(prog="mentor", description="Tune and distill language models on your own hardware.")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    level.add_argument("-v", "--verbose", action="store_true", help="debug messages and the libraries' own warnings")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=MentorParser)
    command = next((a for a in argv if not a.startswith("-")), None)
    for name, (help_text, kind) in jobs.job_commands().items():
        if kind is None:  # a family: the kind its --method names (parsed only when it is the command)
            kind = jobs.family_kind(name, argv) if command == name else jobs.family(name)[jobs.FAMILIES[name][0]]
            jobs.add_job_parser(sub, name, help_text, kind, family_name=name)
        else:
            jobs.add_job_parser(sub, name, help_text, kind)
    jobs.add_run_parser(sub, argv if command == "run" else ())
    tools.register(sub)
    grade.register(sub)
    server.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from mentor.logs import setup_logging

    debug = "--debug" in argv
    try:
        args = build_parser(argv).parse_args(argv)
        setup_logging(-1 if args.quiet else 1 if args.verbose else 0)
        if getattr(args, "job_kind", None) is not None:
            from mentor.cli.jobs import config_from_args
            from mentor.jobs import run

            kind, config = config_from_args(args)
            run(kind, config)
        else:
            args.func(args)
    except JobCancelled as err:
        print(f"mentor: {err}", file=sys.stderr)
        return 130
    except MentorError as err:
        if debug:
            raise
        print(f"mentor: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mentor: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
