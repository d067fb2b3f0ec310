"""The server's database (SQLite through SQLAlchemy): uploaded files, jobs, and the registry of
tuned models. Job folders stay the record of what a job did (state, events, metrics); the database
holds what the service decided (queue, status seen by clients, names) and points at the folders."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, create_engine, event, select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from mentor.errors import MentorError

SCHEMA_VERSION = 1


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def epoch(t: dt.datetime | None) -> int | None:
    return None if t is None else int(t.replace(tzinfo=dt.UTC).timestamp())


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class FileRow(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    lines: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32), index=True)  # OpenAI's statuses
    folder: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str] = mapped_column(Text)
    training_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the body as the client sent it
    api: Mapped[str] = mapped_column(String(16), default="openai")  # openai | cloud
    display_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_metadata: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    requested: Mapped[str | None] = mapped_column(String(16), nullable=True)  # cancel | pause, until honoured
    executor_ref: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker_deaths: Mapped[int] = mapped_column(Integer, default=0)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class ModelRow(Base):
    __tablename__ = "models"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    base_model: Mapped[str] = mapped_column(Text, index=True)
    kind: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(64))
    tuning: Mapped[str | None] = mapped_column(String(16), nullable=True)
    weights: Mapped[str] = mapped_column(String(16))  # adapter | full
    path: Mapped[str] = mapped_column(Text)
    job_folder: Mapped[str] = mapped_column(Text)
    data_hashes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    teacher: Mapped[str | None] = mapped_column(Text, nullable=True)
    teacher_cache_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    best_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    selection: Mapped[str] = mapped_column(Text, default="")
    display_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)


class Database:
    """Engine and sessions for one data folder; the schema is created (or checked) on open."""

    def __init__(self, data_dir: Path):
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "mentor.db"
        _refuse_a_lost_database(path)
        self.engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(self.engine, "connect")
        def _sqlite_pragmas(conn, _):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the scheduler's writes
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        try:
            with self.engine.connect() as conn:  # a truncated file opens, and fails only at the page it lost
                problems = [row[0] for row in conn.execute(text("PRAGMA quick_check"))]
            if problems != ["ok"]:
                raise MentorError(f"{path} is damaged ({problems[0][:200]}); restore it from a backup, or move it "
                                  "away together with the jobs/ and files/ folders beside it to start afresh")
            Base.metadata.create_all(self.engine)
            self.sessions = sessionmaker(self.engine, expire_on_commit=False)
            with self.sessions.begin() as s:
                version = s.get(Meta, "schema_version")
                if version is None:
                    s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                elif int(version.value) > SCHEMA_VERSION:
                    raise MentorError(f"{path} was written by a newer mentor (schema {version.value}); upgrade "
                                      "mentor to use it")
        except DatabaseError as err:  # not a database at all: garbage, or a header cut off
            self.engine.dispose()
            reason = str(err.orig or err).splitlines()[0][:200]
            raise MentorError(f"{path} is not a readable mentor database ({reason}); restore it from a backup, or "
                              "move it away together with the jobs/ and files/ folders beside it to start afresh") \
                from None

    def session(self) -> Session:
        return self.sessions()

    def begin(self):
        return self.sessions.begin()


def _refuse_a_lost_database(path: Path) -> None:
    """A database emptied (0 bytes) or gone beside jobs and uploaded files lost what it held: opening
    it would start an empty server that ignores them, and a new job could reuse their names. Refused."""
    if path.exists() and path.stat().st_size > 0:
        return
    held = [name for name in ("jobs", "files") if (path.parent / name).is_dir() and any((path.parent / name).iterdir())]
    if held:
        state = "is empty (0 bytes)" if path.exists() else "is missing"
        raise MentorError(f"{path} {state} but {' and '.join(f'{path.parent / n}/' for n in held)} hold the "
                          "server's data; restore the database from a backup, or move those folders away to start "
                          "afresh")


__all__ = ["Base", "Database", "FileRow", "JobRow", "ModelRow", "epoch", "now", "select"]
