"""The web console in a real headless Chromium (Debian's `chromium`, driven by Playwright) against a
real `mentor server` on loopback: log in, upload, create a job from the generated form, watch its
curve grow through a reload and a closed tab, open the model, ask it in the playground, cancel a
second job. Also the API the console is built on. Screenshots go to tests/screenshots/console/."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from server_fixtures import TOKEN, Server

from conftest import shift_task, write_jsonl

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parent / "screenshots" / "console"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("console-data")
    rows = shift_task(64, 0)
    distill = [{**r, "teacher_completion": f"Shift each letter. The answer is {r['output_text']}."} for r in rows[:16]]
    return {"dir": d, "train": write_jsonl(d / "train.jsonl", rows), "eval": write_jsonl(d / "eval.jsonl", shift_task(12, 1)),
            "distill": write_jsonl(d / "distill.jsonl", distill),
            "bad": write_jsonl(d / "bad.jsonl", [rows[0], {"input_text": "abc"}]),
            "test": write_jsonl(d / "test.jsonl", [{**r, "teacher_completion": f"The answer is {r['output_text']}."}
                                                   for r in shift_task(6, 2)])}


@pytest.fixture(scope="module")
def server(tmp_path_factory, files):
    srv = Server(tmp_path_factory.mktemp("console-srv") / "data", "--max-concurrent-jobs", "2",
                 "--allowed-data-roots", json.dumps([str(files["dir"])])).start()
    yield srv
    srv.stop()


def api(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


def wait_status(client: httpx.Client, job_id: str, statuses=("succeeded", "failed", "cancelled"), timeout=240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"{job_id} still {job['status']}")


@pytest.fixture(scope="module")
def distilled(server, files) -> dict:
    """A distillation job with a test set, made by its fields: its model has a report (student vs teacher)."""
    c = api(server)
    job = c.post("/v1/mentor/jobs", json={"kind": "standard", "suffix": "rep", "config": {
        "model": "tiny:llama", "data": str(files["distill"]), "test_data": str(files["test"]),
        "teacher": "recorded:field=teacher_completion", "task": "extract", "train_steps": 2, "batch_size": 4}})
    assert job.status_code == 200, job.text
    done = wait_status(c, job.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    return done


def test_console_api(server, files, distilled):
    """Kinds with their schemas, a job of any kind by its fields, metrics rows, model files and report."""
    c = api(server)
    assert httpx.get(server.url + "/console/").status_code == 200  # the page itself needs no token ...
    assert httpx.get(server.url + "/v1/mentor/kinds").status_code == 401  # ... its data does
    kinds = {k["id"]: k for k in c.get("/v1/mentor/kinds").json()["data"]}
    assert {"tune", "dpo", "step-by-step", "standard", "logit", "reward-model", "rlhf", "batch"} <= set(kinds)
    tune = kinds["tune"]
    assert tune["input_fields"] == ["data", "evaluation_data"] and "output" not in tune["schema"]["properties"]
    assert tune["schema"]["properties"]["train_steps"]["default"] == 300

    bad = c.post("/v1/mentor/jobs", json={"kind": "tune", "config": {"model": "tiny:llama", "data": str(files["train"]),
                                                                     "train_steps": 0}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "train_steps"
    assert "greater than or equal to 1" in bad.json()["error"]["message"]
    outside = c.post("/v1/mentor/jobs", json={"kind": "tune", "config": {"model": "tiny:llama", "data": "/etc/passwd"}})
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "data"
    assert c.post("/v1/mentor/jobs", json={"kind": "nope"}).json()["error"]["param"] == "kind"

    name = distilled["fine_tuned_model"]
    assert distilled["api"] == "mentor" and distilled["request"]["kind"] == "standard"
    rows = c.get(f"/v1/mentor/jobs/{distilled['id']}/metrics").json()["data"]
    assert rows and all("step" in r for r in rows) and any("train_total_loss" in r for r in rows)
    report = c.get(f"/v1/mentor/models/{name}/report").json()
    assert [r["name"] for r in report["results"]][0].startswith("student") and report["main_metric"]
    assert any(r["name"].startswith("teacher") for r in report["results"])
    listed = c.get(f"/v1/mentor/models/{name}/files").json()["data"]
    assert any(f["path"].endswith(".safetensors") for f in listed)
    card = c.get("/v1/mentor/model_file", params={"model": name, "path": "README.md"})
    assert card.status_code == 200 and card.content
    escape = c.get("/v1/mentor/model_file", params={"model": name, "path": "../../../../etc/passwd"})
    assert escape.status_code == 404


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium: install Debian's `chromium` package (scripts/setup does, when run as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e .[test])")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def points(page, chart: str) -> int:
    box = page.query_selector(f'figure[data-chart="{chart}"]')
    return int(box.get_attribute("data-points")) if box else 0


def test_console_in_a_browser(server, files, browser, distilled):
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.set_default_timeout(60_000)

    # log in: a wrong token is refused, the right one kept
    page.goto(server.url + "/console/")
    page.wait_for_selector("#login")
    page.fill("#token", "wrong")
    page.click("#login button[type=submit]")
    page.wait_for_selector("text=The server refused this token.")
    page.fill("#token", TOKEN)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#jobs")

    # a job that is not there: said on the page, not an empty page polled forever
    page.goto(server.url + "/console/#/jobs/ftjob-" + "0" * 24)
    alert = page.wait_for_selector("text=Cannot refresh")
    assert "no fine-tuning job" in alert.inner_text()

    # the form of the tune kind, generated from its schema; files uploaded from it
    page.goto(server.url + "/console/#/new/tune")
    page.wait_for_selector("form.job-form")
    page.fill("#field-model", "tiny:llama")
    page.set_input_files('input[data-upload="data"]', str(files["train"]))
    page.wait_for_function("document.querySelector('#field-data').value.startsWith('file-')")
    page.set_input_files('input[data-upload="evaluation_data"]', str(files["eval"]))
    page.wait_for_function("document.querySelector('#field-evaluation_data').value.startsWith('file-')")
    # bad input: the server's message next to the field, no job made
    page.fill("#field-train_steps", "0")
    page.click("#create")
    error = page.wait_for_selector('[data-error-for="train_steps"]:not([hidden])')
    assert "greater than or equal to 1" in error.inner_text()
    assert "#/new" in page.url
    # a file that fails validation: the line and field it concerns, next to the field
    page.set_input_files('input[data-upload="evaluation_data"]', str(files["bad"]))
    error = page.wait_for_selector('[data-error-for="evaluation_data"]:not([hidden])')
    assert "bad.jsonl:2: field 'output_text': missing" in error.inner_text()
    page.set_input_files('input[data-upload="evaluation_data"]', str(files["eval"]))
    page.wait_for_selector('[data-error-for="evaluation_data"]', state="hidden")
    page.fill("#field-suffix", "console")
    for field, value in {"train_steps": "160", "batch_size": "4", "evaluation_interval": "8",
                         "learning_rate_multiplier": "4"}.items():
        page.fill(f"#field-{field}", value)
    page.uncheck("#field-early_stopping")
    assert page.is_checked("#field-keep_checkpoints")  # the server's default, which the form shows
    page.fill("#field-lora_target_modules", "q_proj, v_proj")  # a text or a list: a comma makes a list
    page.click("#create")
    page.wait_for_url("**/#/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[-1]
    made = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert (made["config"]["lora_target_modules"], made["config"]["keep_checkpoints"]) == (["q_proj", "v_proj"], True)

    # the curve grows while it trains; a reload and a closed tab change nothing about the job
    page.wait_for_function("Number(document.querySelector('figure[data-chart=\"Loss\"]')?.dataset.points) > 0",
                           timeout=180_000)
    first = points(page, "Loss")
    page.reload()
    page.wait_for_selector('figure[data-chart="Loss"]')
    other = context.new_page()
    other.goto(server.url + f"/console/#/jobs/{job_id}")
    other.wait_for_selector('figure[data-chart="Loss"]')
    other.close()
    page.wait_for_selector('[data-state="succeeded"]', timeout=240_000)
    page.wait_for_selector("#model-link")
    assert points(page, "Loss") > first, "the loss curve did not grow"
    assert points(page, "Next-token accuracy") > 0 and points(page, "Predictions per evaluation") > 0
    assert page.query_selector('#events [data-event="finished"]')
    assert "null" not in page.inner_text(".actions")
    page.screenshot(path=str(SHOTS / "job-1280.png"), full_page=True)

    # the model: metrics, lineage back to the job and its data
    page.click("#model-link")
    page.wait_for_selector("#lineage")
    assert job_id in page.inner_text("#lineage") and "train.jsonl" in page.inner_text("#lineage")
    assert page.query_selector("#metrics") and page.query_selector("#files")
    page.screenshot(path=str(SHOTS / "model-1280.png"), full_page=True)
    model = page.inner_text("h1")
    assert model.startswith("ft:tiny:llama:console:")

    # the playground: the tuned model and its base side by side
    page.click("text=Try in the playground")
    page.wait_for_selector("#prompt")
    page.select_option("#model-b", "tiny:llama")
    page.fill("#max-tokens", "8")
    page.fill("#prompt", "abc")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.msg.assistant .stats').length == 2", timeout=120_000)
    stats = page.inner_text(".column .stats")
    assert "completion tokens" in stats and " s · " in stats
    page.screenshot(path=str(SHOTS / "playground-1280.png"), full_page=True)

    # a second job, cloned from the first with more steps, cancelled from its page
    page.goto(server.url + f"/console/#/new/tune?clone={job_id}")
    page.wait_for_selector("form.job-form")
    assert page.input_value("#field-model") == "tiny:llama"
    page.fill("#field-train_steps", "5000")
    page.click("#create")
    page.wait_for_url("**/#/jobs/ftjob-*")
    second = page.url.rsplit("/", 1)[-1]
    assert second != job_id
    page.wait_for_selector('[data-state="running"]', timeout=120_000)
    page.click('[data-action="cancel"]')
    page.wait_for_selector('[data-state="cancelled"]', timeout=120_000)

    # the distilled model: its report (student vs teacher) as a table and a chart; then deleted
    page.goto(server.url + "/console/#/models/" + distilled["fine_tuned_model"])
    page.wait_for_selector("#report")
    report = page.inner_text("#report")
    assert "student: standard" in report and "teacher (recorded" in report
    assert page.query_selector("#report canvas")
    page.screenshot(path=str(SHOTS / "distilled-model-1280.png"), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-model")
    page.wait_for_url("**/#/models")
    page.wait_for_selector(f'tr[data-model="{model}"]')
    assert not page.query_selector(f'tr[data-model="{distilled["fine_tuned_model"]}"]')

    # a job whose data fails inside the worker: its page names the file, line and field
    failed = api(server).post("/v1/mentor/jobs", json={"kind": "tune", "config": {
        "model": "tiny:llama", "data": str(files["bad"]), "train_steps": 2}}).json()
    page.goto(server.url + f"/console/#/jobs/{failed['id']}")
    page.wait_for_selector('[data-state="failed"]', timeout=120_000)
    shown = page.inner_text("#job-problems .error")
    assert "file " in shown and "bad.jsonl" in shown and "line 2" in shown and "output_text" in shown, shown

    # the pages at a phone's width: nothing wider than the window
    phone = browser.new_context(viewport={"width": 390, "height": 844})
    small = phone.new_page()
    small.goto(server.url + f"/console/#token={TOKEN}")
    for route, ready, shot in ((f"#/jobs/{job_id}", '[data-state="succeeded"]', "job-390.png"),
                               (f"#/models/{model}", "#lineage", "model-390.png"),
                               ("#/jobs", "#jobs", None), ("#/new/step-by-step", "form.job-form", None),
                               ("#/playground", "#prompt", None)):
        small.goto(server.url + "/console/" + route)
        small.wait_for_selector(ready)
        small.wait_for_timeout(300)
        width = small.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{route} is {width} px wide at 390"
        if shot:
            small.screenshot(path=str(SHOTS / shot), full_page=True)
    phone.close()
    context.close()
    assert not errors, errors


def test_the_console_knows_the_servers_active_statuses():
    """The console's set of statuses a job can still be stopped in is the server's (mentor.jobs.ACTIVE),
    written out in JavaScript: a status added to one and not the other is caught here."""
    import re

    from mentor.jobs import ACTIVE

    source = (Path(__file__).resolve().parent.parent / "mentor" / "server" / "console" / "jobs.js").read_text()
    written = re.search(r"const ACTIVE = new Set\(\[(.*?)\]\)", source)
    assert written and json.loads(f"[{written[1]}]") == list(ACTIVE)
