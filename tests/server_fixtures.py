"""A real `mentor server` on loopback in a subprocess, for tests that drive it as clients do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TOKEN = "test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, *args: str, env: dict | None = None):
        self.data_dir, self.args, self.port = Path(data_dir), list(args), free_port()
        self.env = {**os.environ, "MENTOR_API_TOKEN": TOKEN, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Server:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir.parent / f"server-{self.port}.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mentor.cli", "server", "--data-dir", str(self.data_dir),
                                      "--port", str(self.port), "--poll-seconds", "0.2", *self.args],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: see {log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=TOKEN, max_retries=0)

    def wait(self, job_id: str, statuses=("succeeded", "failed", "cancelled"), timeout: float = 300,
             until=None):
        c = self.client()
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = c.fine_tuning.jobs.retrieve(job_id)
            if job.status in statuses or (until is not None and until(job)):
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")
