"""Job commands, generated from the job-kind registry: every config field is a flag with its
description and default, and a YAML job file (`--config`) holds the same fields (flags win).

The flags are made by pydantic-settings' `CliSettingsSource` from the same pydantic model that
validates the job, so the command line cannot drift from the config: it is argparse underneath
(one parser for commands, flags and help), kebab-case flags, `--flag/--no-flag` for booleans,
comma-separated lists. Family commands (`tune`, `distill`) pick the kind by `--method`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from pydantic_settings import CliSettingsSource

from mentor.errors import MentorError
from mentor.jobs import JobConfig, JobKind, family, get_kind, kinds, load_config
from mentor.jobs.config import read_job_file

FAMILIES = {
    "tune": ("supervised", "tuning: supervised (full or LoRA) or DPO from preference pairs (--method)"),
    "distill": ("step-by-step", "distil a teacher into a student (--method): from its text (step-by-step, standard, "
                                "finetune baseline) or its weights (logit, feature, relation, self)"),
}


def add_config_flags(parser: argparse.ArgumentParser, config: type[JobConfig], prog: str) -> CliSettingsSource:
    """The config's fields as flags of `parser`; returns the source that reads them back."""
    parser.add_argument("--config", metavar="JOB.yaml", help="YAML job file holding these same fields; flags override it")
    return CliSettingsSource(config, root_parser=parser, cli_prog_name=prog, cli_kebab_case=True,
                             cli_implicit_flags=True, cli_avoid_json=True, cli_hide_none_type=True,
                             cli_parse_none_str="null", cli_exit_on_error=True)  # errors go through parser.error


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def family_kind(name: str, argv: Sequence[str]) -> JobKind:
    """The kind a family command runs: `--method` on the command line, else the job file's, else the default."""
    methods = family(name)
    method = _option(argv, "--method")
    if method is None and (path := _option(argv, "--config")):
        try:
            method = read_job_file(path).get("method")
        except Exception:  # noqa: BLE001 - the job file's problems are reported when it is loaded
            method = None
    method = method or FAMILIES[name][0]
    if method not in methods:
        raise MentorError(f"mentor {name}: argument --method: invalid choice: '{method}' "
                          f"(choose from {', '.join(methods)})")
    return methods[method]


def job_commands() -> dict[str, tuple[str, JobKind | None]]:
    """command -> (help, kind or None for a family chosen by --method)."""
    commands: dict[str, tuple[str, JobKind | None]] = {name: (text, None) for name, (_, text) in FAMILIES.items()}
    for kind in kinds().values():
        if kind.family in (None, "tune") and kind.name not in commands:
            commands[kind.name] = (kind.summary, kind)
    return commands


def add_job_parser(sub, command: str, help_text: str, kind: JobKind, family_name: str | None = None):
    description = help_text
    if family_name:
        methods = family(family_name)
        description += "\n\nmethods (--method):\n" + "\n".join(f"  {m:14} {k.summary}" for m, k in methods.items())
        description += f"\n\nthe flags below are those of --method {kind.method}; `mentor {command} --method M --help` " \
                       "shows another method's"
    parser = sub.add_parser(command, help=help_text, description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    source = add_config_flags(parser, kind.config, f"mentor {command}")
    parser.set_defaults(job_kind=kind, job_source=source)
    return parser


def add_run_parser(sub, argv: Sequence[str]):
    """`mentor run KIND ...`: any registered kind by name."""
    names = sorted(kinds())
    chosen = next((a for a in argv if a in names), None)
    run = sub.add_parser("run", help="run a job of any kind: mentor run KIND --flags (or --config job.yaml)",
                         description="job kinds:\n" + "\n".join(f"  {k.name:14} {k.summary}" for k in kinds().values()),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    kind_sub = run.add_subparsers(dest="kind", metavar="KIND", required=True, parser_class=type(run))
    for name in names:
        if name == chosen or chosen is None:
            add_job_parser(kind_sub, name, get_kind(name).summary, get_kind(name))
    return run


def config_from_args(args: argparse.Namespace) -> tuple[JobKind, JobConfig]:
    """The validated config the command line (and its job file) describe."""
    kind: JobKind = args.job_kind
    source: CliSettingsSource = args.job_source
    # a list flag given as null arrives as [None]: it means "none", as for any other flag
    fields: dict[str, Any] = {k: None if v == [None] else v for k, v in source(parsed_args=args)().items()}
    return kind, load_config(kind.config, getattr(args, "config", None), fields)
