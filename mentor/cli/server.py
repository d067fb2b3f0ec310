"""`mentor server` (flags generated from ServerSettings, like the job commands from their configs)
and `mentor models` (the registry, read without a running server)."""

from __future__ import annotations

import logging

from mentor.cli.jobs import add_config_flags

log = logging.getLogger("mentor")


def cmd_server(args) -> None:
    import uvicorn

    from mentor.jobs.config import read_job_file
    from mentor.server.app import create_app
    from mentor.server.settings import ServerSettings

    fields = read_job_file(args.config) if args.config else {}
    fields.update({k: v for k, v in args.server_source(parsed_args=args)().items() if v is not None})
    settings = ServerSettings(**fields).prepared()
    app = create_app(settings)
    log.info("mentor server on http://%s:%d (data in %s, %s executor, %d job(s) at once)", settings.host,
             settings.port, settings.data_dir, settings.executor, settings.max_concurrent_jobs)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


def cmd_serve(args) -> None:
    import uvicorn

    from mentor.server.app import create_app
    from mentor.server.settings import ServerSettings

    fields = {k: v for k, v in args.server_source(parsed_args=args)().items() if v is not None}
    settings = ServerSettings(**fields).prepared()
    app = create_app(settings, serve=args.models)
    log.info("serving %s on http://%s:%d", ", ".join(args.models), settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


def _db(args):
    from pathlib import Path

    from mentor.server.db import Database
    from mentor.server.settings import default_data_dir

    return Database(Path(args.data_dir).expanduser() if args.data_dir else default_data_dir())


def cmd_models(args) -> None:
    from mentor.server import registry

    db = _db(args)
    if args.action == "list":
        rows = registry.list_models(db, args.base_model)
        for row in rows:
            metric = row.metrics.get("eval_fraction_of_correct_next_step_preds")
            print(f"{row.name}\t{row.kind}\t{row.base_model}\t{row.weights}" + (f"\teval_acc={metric:.4f}" if metric
                                                                                 else ""))
        if not rows:
            log.info("no tuned models registered in %s", db.engine.url.database)
    elif args.action == "get":
        print(registry.dumps(registry.model_dict(registry.get_model(db, args.name))))
    elif args.action == "lineage":
        print(registry.dumps(registry.lineage(db, args.name).as_dict()))
    elif args.action == "promote":
        if args.step is None:
            from mentor.errors import MentorError

            raise MentorError("mentor models promote needs --step N (the checkpoint's step)")
        row = registry.promote(db, args.name, args.step)
        log.info("registered %s (%s)", row.name, row.path)
    elif args.action == "delete":
        registry.delete_model(db, args.name)
        log.info("deleted %s and its files", args.name)


def register(sub) -> None:
    from mentor.server.settings import ServerSettings

    p = sub.add_parser("server", help="the job service: OpenAI-compatible fine-tuning API, cloud pipeline jobs, "
                       "model registry")
    source = add_config_flags(p, ServerSettings, "mentor server")
    p.set_defaults(func=cmd_server, server_source=source)

    p = sub.add_parser("serve", help="serve models alone (OpenAI-compatible chat and completions), no jobs")
    p.add_argument("models", nargs="+", help="model references: tuned model folders, base models, adapters")
    source = add_config_flags(p, ServerSettings, "mentor serve")
    p.set_defaults(func=cmd_serve, server_source=source)

    p = sub.add_parser("models", help="the registry of tuned models: list, get, lineage, promote a checkpoint, delete")
    p.add_argument("action", choices=["list", "get", "lineage", "promote", "delete"])
    p.add_argument("name", nargs="?", help="a registered model name (ft:BASE:SUFFIX:ID)")
    p.add_argument("--base-model", help="list: only the models tuned on this base")
    p.add_argument("--step", type=int, help="promote: the checkpoint's step")
    p.add_argument("--data-dir", help="the server's data folder (default MENTOR_SERVER_DATA_DIR or ~/.mentor/server)")
    p.set_defaults(func=lambda args: _need_name(args) or cmd_models(args))


def _need_name(args) -> None:
    from mentor.errors import MentorError

    if args.action != "list" and not args.name:
        raise MentorError(f"mentor models {args.action} needs a model name")
