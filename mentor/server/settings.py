"""How `mentor server` runs: where its data lives, who may call it, how many jobs run at once."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mentor.errors import MentorError


class ServerSettings(BaseSettings):
    """Server settings; each is also an environment variable MENTOR_SERVER_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="MENTOR_SERVER_", extra="forbid")

    data_dir: Path = Field(Path("~/.mentor/server"), description="jobs, uploaded files and the registry database")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    max_concurrent_jobs: int = Field(1, ge=1, description="jobs running at once; the others wait in the queue")
    executor: Literal["local", "ray"] = Field("local", description="local: a subprocess per job; ray: a Ray job "
                                                                  "per job on the cluster at ray_address")
    ray_address: str = Field("http://127.0.0.1:8265", description="the Ray cluster's job-submission address")
    job_cpus: float = Field(1.0, gt=0, description="CPUs a job asks the executor for (ray)")
    job_gpus: float = Field(0.0, ge=0, description="GPUs a job asks the executor for (ray)")
    insecure_no_auth: bool = Field(False, description="accept requests without the API token (loopback only)")
    max_upload_bytes: int = Field(512 * 2**20, ge=1, description="largest uploaded file")
    max_body_bytes: int = Field(2**20, ge=1, description="largest JSON request body")
    allowed_data_roots: list[Path] = Field(default_factory=list, description="folders whose files a job may name by "
                                                                           "path (uploads are always allowed)")
    allowed_teacher_urls: list[str] = Field(default_factory=list, description="base URLs of OpenAI-compatible "
                                            "servers a job may name as its teacher (openai:MODEL@URL); the server's "
                                            "API key goes to them. A teacher without @URL uses OPENAI_BASE_URL")
    max_worker_restarts: int = Field(3, ge=0, description="times a job whose worker died is resumed before it fails")
    poll_seconds: float = Field(0.5, gt=0, description="how often the scheduler looks at jobs")
    serving_memory_mb: float | None = Field(None, gt=0, description="memory for served models and adapters; the "
                                                                 "least recently used are evicted beyond it")
    max_batch: int = Field(16, ge=1, description="requests answered in one batch")
    batch_window_ms: float = Field(10.0, ge=0, description="how long a batch waits for one more request (each arrival "
                                   "restarts it, up to 8 times): a few ms against seconds of generating")

    def prepared(self) -> ServerSettings:
        """Absolute folders, and the no-auth switch refused away from loopback."""
        data = self.data_dir.expanduser().resolve()
        roots = [p.expanduser().resolve() for p in self.allowed_data_roots]
        if self.insecure_no_auth and not _is_loopback(self.host):
            raise MentorError(f"--insecure-no-auth is only allowed on a loopback address, not {self.host}")
        return self.model_copy(update={"data_dir": data, "allowed_data_roots": roots})

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'mentor.db'}"


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def grader_settings(settings: ServerSettings):
    """How graders run under this server (job creation, /graders/run and /graders/validate alike; its
    workers are told the same through worker_env): a score_model's judge may be any server a teacher
    may, allowed_teacher_urls being the one allow-list, whatever MENTOR_GRADERS_ALLOWED_JUDGE_URLS says."""
    from mentor.graders import GraderSettings

    return GraderSettings(allowed_judge_urls=[str(u) for u in settings.allowed_teacher_urls])


def default_data_dir() -> Path:
    return Path(os.environ.get("MENTOR_SERVER_DATA_DIR", "~/.mentor/server")).expanduser()
