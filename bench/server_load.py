"""Load check of `mentor server`: many concurrent job-status and list requests while two jobs train.

    .venv/bin/python bench/server_load.py [--clients 16] [--requests 2000]

Starts a real server on loopback, uploads a file, starts two jobs on tiny models (both train while the
load runs), and sends status (GET /v1/fine_tuning/jobs/ID), list (GET /v1/fine_tuning/jobs) and
events requests from concurrent clients. Prints p50/p99 latency and errors per request kind.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_fixtures import TOKEN, Server  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mentor-load-"))
    rng = random.Random(0)
    rows = []
    for _ in range(64):
        w = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        rows.append({"input_text": w, "output_text": "".join(chr(ord(c) + 1) for c in w)})
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    srv = Server(work / "data", "--max-concurrent-jobs", "2").start()
    try:
        c = srv.client()
        file_id = c.files.create(file=data.open("rb"), purpose="fine-tune").id
        jobs = [c.fine_tuning.jobs.create(model="tiny:llama", training_file=file_id,
                                          hyperparameters={"batch_size": 2, "train_steps": 100000,
                                                           "evaluation_interval": 200}).id for _ in range(2)]
        for j in jobs:  # both are training (past their start-up) before the load begins
            srv.wait(j, statuses=(), until=lambda j: (j.model_extra["progress"]["step"] or 0) >= 1, timeout=180)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        kinds = {"status": lambda: f"/v1/fine_tuning/jobs/{rng.choice(jobs)}", "list": lambda: "/v1/fine_tuning/jobs",
                 "events": lambda: f"/v1/fine_tuning/jobs/{rng.choice(jobs)}/events?limit=20"}
        results: dict[str, list[float]] = {k: [] for k in kinds}
        errors: dict[str, int] = {k: 0 for k in kinds}
        client = httpx.Client(base_url=srv.url, headers=headers, timeout=30,
                              limits=httpx.Limits(max_connections=args.clients))

        def one(i: int) -> None:
            kind = list(kinds)[i % len(kinds)]
            started = time.perf_counter()
            try:
                ok = client.get(kinds[kind]()).status_code == 200
            except httpx.HTTPError:
                ok = False
            results[kind].append(time.perf_counter() - started)
            errors[kind] += not ok

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - started
        steps = [c.fine_tuning.jobs.retrieve(j).model_extra["progress"]["step"] for j in jobs]
        for j in jobs:
            c.fine_tuning.jobs.cancel(j)
    finally:
        srv.stop()

    print(f"\n{args.requests} requests from {args.clients} concurrent clients in {wall:.1f} s "
          f"({args.requests / wall:.0f} requests/s) while two jobs trained (at steps {steps})\n")
    print("| request | n | p50 ms | p99 ms | max ms | errors |\n|---|---:|---:|---:|---:|---:|")
    for kind, times in results.items():
        ms = sorted(t * 1000 for t in times)
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        print(f"| {kind} | {len(ms)} | {statistics.median(ms):.1f} | {p99:.1f} | {ms[-1]:.1f} | {errors[kind]} |")
    total_errors = sum(errors.values())
    print(f"\nerrors: {total_errors}")
    sys.exit(1 if total_errors else 0)


if __name__ == "__main__":
    main()
