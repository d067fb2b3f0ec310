"""Teacher traffic against a server that answers one request at a time: fixed 1 and fixed 8 requests
in flight (the old defaults: unstreamed, a timeout 6 times the answer time, as 120 s is to the 20 s
answers of the issue) against the adaptive limit (streamed, up to 8), labeling the same prompts.

    .venv/bin/python bench/teacher_concurrency.py [--prompts 16] [--service 1.0] [--overhead 0.1]
        [--serve-model smollm2-135m|tiny] [--serve-prompts 12] [--serve-tokens 48] [--no-transformers-serve]

Two servers:
- a loopback server that serialises answers with a lock, `--service` seconds each, after
  `--overhead` seconds of request handling outside the lock (parsing, tokenising: what a real
  server does while another request generates). Like `transformers serve`, it computes an
  unstreamed answer to the end even when the client has left, and stops a stream whose client
  left. It counts requests whose client left before the answer: abandoned.
- `transformers serve` on SmolLM2-135M (a local folder; `--serve-model tiny`: a tiny Llama built
  from a config), one request at a time on one CPU thread (several threads on a shared machine
  make answer times swing threefold). There abandoned requests are the client's timeouts on
  unstreamed requests: the server computes those to the end (a closed stream it stops).

Prints one markdown table per server: wall time, prompts answered and failed, requests sent,
timeouts, abandoned requests, server seconds spent on abandoned requests, and wall time relative
to the adaptive run. Target: adaptive beats fixed 1 and fixed 8, with no request abandoned.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mentor.teachers import GenerationParams, OpenAITeacher, TeacherCache, TeacherError  # noqa: E402

log = logging.getLogger("bench")
WORK = ROOT / "bench" / ".work" / "teacher-concurrency"
OLD_TIMEOUT_RATIO = 6  # the old default timeout (120 s) over the answer time of the server (20 s)


@dataclass
class Counts:
    requests: int = 0
    answered: int = 0
    abandoned: int = 0
    abandoned_seconds: float = 0.0  # server time spent on requests whose client had left
    in_flight: int = 0
    latencies: list = field(default_factory=list)  # arrival to whole answer, answered requests


class SerialServer:
    """An OpenAI-compatible chat route on loopback that generates one answer at a time."""

    def __init__(self, service: float, overhead: float, words: int = 20):
        self.service, self.overhead, self.words = service, overhead, words
        self.counts = Counts()
        self.lock: asyncio.Lock | None = None
        app = FastAPI()
        app.post("/v1/chat/completions")(self.chat)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> SerialServer:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def text(self, prompt: str) -> list[str]:
        return [f"w{i}-{len(prompt)}" for i in range(self.words)]

    async def chat(self, request: Request):
        body = await request.json()
        arrived = time.monotonic()
        self.lock = self.lock or asyncio.Lock()
        self.counts.requests += 1
        self.counts.in_flight += 1
        prompt = body["messages"][-1]["content"]
        if body.get("stream"):
            return StreamingResponse(self.events(body, prompt, arrived), media_type="text/event-stream")
        try:
            await asyncio.sleep(self.overhead)
            async with self.lock:
                await asyncio.sleep(self.service)  # computed to the end, client or not
            if await request.is_disconnected():
                self.counts.abandoned += 1
                self.counts.abandoned_seconds += self.service
            else:
                self.counts.answered += 1
                self.counts.latencies.append(time.monotonic() - arrived)
            words = self.text(prompt)
            return JSONResponse(
                {
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(words)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words)},
                }
            )
        finally:
            self.counts.in_flight -= 1

    async def events(self, body: dict, prompt: str, arrived: float):
        def event(delta: dict, finish: str | None = None, **extra) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return "data: " + json.dumps({"object": "chat.completion.chunk", "choices": [choice], **extra}) + "\n\n"

        started, done = None, False
        try:
            yield event({"role": "assistant"})  # at once, as servers do while a request waits its turn
            await asyncio.sleep(self.overhead)
            words = self.text(prompt)
            async with self.lock:
                started = time.monotonic()
                for i, word in enumerate(words):
                    await asyncio.sleep(self.service / len(words))
                    yield event({"content": word if i == 0 else " " + word})
            yield event({}, "stop", usage={"prompt_tokens": len(prompt.split()), "completion_tokens": len(words)})
            yield "data: [DONE]\n\n"
            done = True
            self.counts.answered += 1
            self.counts.latencies.append(time.monotonic() - arrived)
        finally:
            if not done:  # the client left: the stream is cancelled, and the generation with it
                self.counts.abandoned += 1
                self.counts.abandoned_seconds += time.monotonic() - started if started else 0.0
            self.counts.in_flight -= 1


SCENARIOS = {
    "fixed 1 (old: unstreamed, short timeout)": dict(concurrency=1, adaptive=False, stream=False, old_timeout=True),
    "fixed 8 (old defaults: unstreamed, short timeout)": dict(
        concurrency=8, adaptive=False, stream=False, old_timeout=True
    ),
    "fixed 8, streamed, new timeout": dict(concurrency=8, adaptive=False, stream=True, old_timeout=False),
    "adaptive up to 8 (new defaults)": dict(concurrency=8, adaptive=True, stream=True, old_timeout=False),
}


def run(name: str, base_url: str, model: str, prompts: list[str], service: float, max_tokens: int) -> dict:
    """Label `prompts` once with a fresh cache; what it took, from the client's side."""
    options = dict(SCENARIOS[name])
    old_timeout = options.pop("old_timeout")
    kwargs = {"timeout": OLD_TIMEOUT_RATIO * service} if old_timeout else {}
    with tempfile.TemporaryDirectory() as tmp:
        teacher = OpenAITeacher(
            model, base_url, cache=TeacherCache(Path(tmp) / "cache.sqlite"), progress=False, **options, **kwargs
        )
        started = time.monotonic()
        failed = 0
        try:
            teacher.complete(prompts, GenerationParams(max_new_tokens=max_tokens, temperature=0.0))
        except TeacherError as err:
            failed = len(prompts) - len(err.partial)
        wall = time.monotonic() - started
        teacher.close()
    s = teacher.stats
    log.info("%s: %.1f s, %s, limit at the end %d", name, wall, s.summary(), teacher.limiter.limit)
    return {
        "wall": wall,
        "answered": len(prompts) - failed,
        "failed": failed,
        "requests": s.calls,
        "timeouts": s.timeouts,
        "limit": teacher.limiter.limit,
    }


def table(title: str, rows: dict[str, dict], server_side: bool) -> None:
    adaptive = rows["adaptive up to 8 (new defaults)"]["wall"]
    print(f"\n{title}\n")
    print(
        "| client | wall s | answered | failed | requests sent | timeouts | abandoned | server s on abandoned "
        "| p50 / max latency s | wall vs adaptive |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        latency = f"{r['p50']:.1f} / {r['max']:.1f}" if server_side and r.get("p50") is not None else "-"
        abandoned_s = f"{r['abandoned_seconds']:.0f}" if "abandoned_seconds" in r else "-"
        print(
            f"| {name} | {r['wall']:.1f} | {r['answered']} | {r['failed']} | {r['requests']} | {r['timeouts']} | "
            f"{r['abandoned']} | {abandoned_s} | {latency} | {r['wall'] / adaptive:.2f}x |"
        )


def loopback(args) -> dict[str, dict]:
    prompts = [f"Question {i}: what is {i} times {i + 1}?" for i in range(args.prompts)]
    rows = {}
    with SerialServer(args.service, args.overhead) as server:
        for name in SCENARIOS:
            server.counts = Counts()
            result = run(name, server.base_url, "serial", prompts, args.service, 32)
            deadline = time.monotonic() + 600
            while server.counts.in_flight and time.monotonic() < deadline:  # abandoned work drains first
                time.sleep(0.1)
            c = server.counts
            rows[name] = {
                **result,
                "abandoned": c.abandoned,
                "abandoned_seconds": c.abandoned_seconds,
                "p50": statistics.median(c.latencies) if c.latencies else None,
                "max": max(c.latencies, default=0.0),
            }
            if c.requests != result["requests"]:
                log.warning("%s: the server saw %d requests, the client sent %d", name, c.requests, result["requests"])
    return rows


def drain(base_url: str, hello: dict, idle: float) -> float:
    """Wait until the server is idle again (abandoned requests it still computes go first): until a
    one-token answer takes about as long as on an idle server (`idle` seconds). Returns its time."""
    deadline = time.monotonic() + 600
    while True:
        started = time.monotonic()
        httpx.post(f"{base_url}/chat/completions", json=hello, timeout=600)
        took = time.monotonic() - started
        if took < 3 * idle + 0.05 or time.monotonic() > deadline:
            return took


def transformers_serve(args) -> dict[str, dict] | None:
    from mentor.models import resolve

    exe = Path(sys.executable).with_name("transformers")
    if args.serve_model == "tiny":
        from mentor.models.tiny import build_tiny

        folder = WORK / "tiny-llama-wide"
        if not (folder / "config.json").exists():
            build_tiny("llama-wide", folder)
    else:
        folder = Path(resolve(args.serve_model))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    WORK.mkdir(parents=True, exist_ok=True)
    logfile = WORK / "transformers-serve.log"
    proc = subprocess.Popen(
        [str(exe), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=logfile.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.warning("transformers serve did not start (see %s); skipped", logfile)
                return None
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        prompts = [f"Write one sentence about the number {i}." for i in range(args.serve_prompts)]
        body = {"model": str(folder), "max_tokens": args.serve_tokens, "temperature": 0.0}
        hello = {**body, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi."}]}
        httpx.post(f"{base_url}/chat/completions", json=hello, timeout=300)  # loads the model
        idle = drain(base_url, hello, idle=60.0)
        rows, service = {}, None
        for name in SCENARIOS:  # fixed 1 first: its answers, one after another, time the server
            result = run(name, base_url, str(folder), prompts, service or 60.0, args.serve_tokens)
            service = service or result["wall"] / len(prompts)
            # unstreamed requests the client gave up on are computed to the end; streamed ones are stopped
            rows[name] = {**result, "abandoned": 0 if SCENARIOS[name]["stream"] else result["timeouts"]}
            drain(base_url, hello, idle)
        rows["_service"] = {"service": service}
        return rows
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--service", type=float, default=1.0, help="seconds the loopback server takes an answer")
    p.add_argument("--overhead", type=float, default=0.1, help="seconds of request handling outside its lock")
    p.add_argument("--serve-model", default="smollm2-135m", help="a model reference, or tiny (a Llama from a config)")
    p.add_argument("--serve-prompts", type=int, default=12)
    p.add_argument("--serve-tokens", type=int, default=48)
    p.add_argument("--loopback", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--transformers-serve", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    rows = loopback(args) if args.loopback else None
    serve = transformers_serve(args) if args.transformers_serve else None
    if rows:
        table(
            f"Loopback server, one answer at a time: {args.prompts} prompts, {args.service:g} s an answer under a lock "
            f"+ {args.overhead:g} s outside it; old timeout {OLD_TIMEOUT_RATIO * args.service:g} s, new 300 s of "
            f"silence; {os.cpu_count()} CPU cores",
            rows,
            server_side=True,
        )
    if serve:
        service = serve.pop("_service")["service"]
        table(
            f"transformers serve, {args.serve_model} on the CPU, one answer at a time: {args.serve_prompts} prompts of "
            f"up to {args.serve_tokens} tokens, {service:.2f} s an answer (fixed 1: one after another); old timeout {OLD_TIMEOUT_RATIO * service:.1f} s "
            f"(abandoned = timed-out unstreamed requests, which it computes to the end)",
            serve,
            server_side=False,
        )
    for title, r in (("loopback", rows), ("transformers serve", serve)):
        if not r:
            continue
        a = r["adaptive up to 8 (new defaults)"]
        one = r["fixed 1 (old: unstreamed, short timeout)"]
        eight = r["fixed 8 (old defaults: unstreamed, short timeout)"]
        print(
            f"\n{title}: adaptive vs fixed 1: {one['wall'] / a['wall']:.2f}x faster; vs fixed 8 (old): "
            f"{eight['wall'] / a['wall']:.2f}x faster, {eight['answered']} vs {a['answered']} answered; "
            f"adaptive abandoned {a['abandoned']} request(s), timed out {a['timeouts']}"
        )


if __name__ == "__main__":
    main()
