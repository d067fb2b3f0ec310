"""`mentor server`: the job service (OpenAI's fine-tuning API and the cloud's pipeline jobs over one
job model), the registry of tuned models, and the files they are made from.

    app = create_app(ServerSettings(data_dir="..."))   # FastAPI; `mentor server` runs it with uvicorn
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mentor import recipes  # noqa: F401  (registers the built-in job kinds)
from mentor.errors import MentorError
from mentor.server import auth, openapi
from mentor.server.db import Database
from mentor.server.errors import ApiError, disk_full, no_space
from mentor.server.executors import make_executor
from mentor.server.folder_lock import lock_data_folder
from mentor.server.routes import batches, cloud, console, files, fine_tuning, graders, inference, jobs, models
from mentor.server.scheduler import Scheduler
from mentor.server.services.models import endpoints
from mentor.server.settings import ServerSettings
from mentor.serving.engine import Engine
from mentor.serving.pool import ModelPool, Servable

log = logging.getLogger("mentor")


@dataclass
class Context:
    settings: ServerSettings
    db: Database
    scheduler: Scheduler
    token: str | None
    pool: ModelPool
    engine: Engine
    served: dict  # `mentor serve`'s models by the names it was given
    folder_lock: object = None  # the data folder's lock, held as long as the app lives
    scorers: dict = field(default_factory=dict)  # reward models by folder: (RewardModel, its lock)
    scorers_lock: threading.Lock = field(default_factory=threading.Lock)


ENVELOPE = 64 * 1024  # room for the multipart envelope around an uploaded file


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           type: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(ApiError(status, message, param, code, type).body(), status_code=status)


def create_app(settings: ServerSettings, start_scheduler: bool = True, serve: list[str] | None = None) -> FastAPI:
    """The service; with `serve` (model references), only those models' inference endpoints
    (`mentor serve`): no jobs, no uploads."""
    settings = settings.prepared()
    # the job service owns its data folder alone; `mentor serve` only reads models
    folder_lock = lock_data_folder(settings.data_dir, settings.host, settings.port) if serve is None else None
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.data_dir)
    token = None if settings.insecure_no_auth else auth.api_token(settings.data_dir)
    scheduler = Scheduler(settings, db, make_executor(settings))
    budget = int(settings.serving_memory_mb * 2**20) if settings.serving_memory_mb else None
    pool = ModelPool(budget)
    engine = Engine(pool, max_batch=settings.max_batch, window_seconds=settings.batch_window_ms / 1000)

    served = {}
    for ref in serve or []:
        served[ref] = Servable.of(ref, name=ref)
        if not served[ref].is_reward_model:  # (a reward model is loaded as a scorer, on its first request)
            pool.acquire([served[ref]])  # loaded before the first request
            pool.release([served[ref]])
    start_scheduler = start_scheduler and serve is None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_scheduler:
            scheduler.start()
        yield
        engine.close()
        if start_scheduler:
            scheduler.stop()

    app = FastAPI(title="mentor", version="0.1.0", lifespan=lifespan,
                  description="Tune and distill language models: jobs, files and tuned models.")
    app.state.ctx = Context(settings, db, scheduler, token, pool, engine, served, folder_lock)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is not None and not auth.check(request.headers.get("authorization"), token):
            if request.url.path != "/health" and not (serve is None and console.is_public(request.url.path)):
                return _error(401, "a valid API token is required (Authorization: Bearer TOKEN)", code="invalid_api_key",
                              type="authentication_error")
        length = request.headers.get("content-length")
        upload = request.url.path == "/v1/files"
        limit = settings.max_upload_bytes if upload else settings.max_body_bytes
        if length is not None:  # refused before a byte is read
            if not length.isdigit():
                return _error(400, "bad Content-Length header")
            if int(length) > limit + (ENVELOPE if upload else 0):
                return _error(413, f"the request body is larger than the limit of {limit} bytes", code="too_large")
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(MentorError)
    async def mentor_error(request: Request, err: MentorError):
        return _error(400, str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = "; ".join(f"{'.'.join(map(str, e.get('loc', ())[1:])) or 'body'}: "
                            f"{str(e.get('msg')).removeprefix('Value error, ')}" for e in err.errors()[:5])
        return _error(400, message or "invalid request", where)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        if err.status_code == 413:  # a body counted past the limit as it arrived
            return _error(413, "the request body is larger than the limit", code="too_large")
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception):
        if disk_full(err):  # said as what it is: the client can retry once space is freed
            log.error("no space left on device on %s %s: %s", request.method, request.url.path, err)
            body = no_space(f"answering {request.method} {request.url.path}")
            return JSONResponse(body.body(), status_code=body.status)
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal server error (see the server's log)", type="server_error")

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok"}

    routers = (inference.router,) if serve is not None else (files.router, fine_tuning.router, jobs.router,
                                                                  models.router, cloud.router, inference.router,
                                                                  batches.router, graders.router)
    for router in routers:  # each route also counts its body as it arrives: a chunked one has no Content-Length
        app.include_router(router, max_body_size=settings.max_upload_bytes + ENVELOPE if router is files.router
                           else settings.max_body_bytes)
    if serve is None:
        console.mount(app)
    openapi.install(app, token_required=token is not None)
    if serve is not None:
        @app.get("/v1/models")
        def served_models() -> dict:
            return {"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "mentor",
                 "kind": "reward-model" if model.is_reward_model else "model",
                 "endpoints": endpoints("reward-model" if model.is_reward_model else "model")}
                for name, model in served.items()]}
    return app
