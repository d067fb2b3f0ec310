// Jobs: the list, and a job's page with live curves, events and controls. The browser only
// watches: the job runs on the server whatever happens to the tab.

import { get, poll, post } from "./api.js";
import { badge, duration, errorBox, h, lineChart, now, number, pollAlert, progressBar, when } from "./ui.js";

// the server's active statuses (mentor.jobs.ACTIVE): not ended, so a job can still be cancelled;
// a paused one is not under way (nothing runs, no time remains to show)
const ACTIVE = new Set(["validating_files", "queued", "running", "paused"]);
const underWay = (job) => ACTIVE.has(job.status) && job.status !== "paused";
const POLL_MS = 2000;

function elapsed(job) {
  const start = job.started_at || job.created_at;
  return (job.finished_at || now()) - start;
}

function remaining(job) {
  return job.estimated_finish ? job.estimated_finish - now() : null;
}

export function jobsList(root) {
  const body = h("tbody", {});
  const alert = pollAlert();
  root.append(
    h("div", { class: "title-row" }, h("h1", {}, "Jobs"), h("a", { class: "button", href: "#/new" }, "New job")), alert,
    h("div", { class: "table-wrap" }, h("table", { id: "jobs" },
      h("thead", {}, h("tr", {}, ["Job", "Kind", "Base model", "State", "Progress", "Elapsed", "Remaining"]
        .map((c) => h("th", {}, c)))), body)),
  );
  return poll(async () => {
    const page = await get("/v1/fine_tuning/jobs?limit=100");
    body.replaceChildren(...page.data.map((job) => h("tr", { dataset: { job: job.id } },
      h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.display_name || job.id)),
      h("td", {}, job.kind),
      h("td", { class: "wrap" }, job.model),
      h("td", {}, badge(job.status)),
      h("td", {}, progressBar(job.progress.step || 0, job.progress.total_steps)),
      h("td", {}, duration(elapsed(job))),
      h("td", {}, underWay(job) ? duration(remaining(job)) : "–"))));
    if (!page.data.length) {
      body.replaceChildren(h("tr", {}, h("td", { colspan: 7 }, "No jobs yet: ", h("a", { href: "#/new" }, "create one"), ".")));
    }
  }, POLL_MS, alert.show);
}

/** Metric series grouped into charts: the losses (total and each distillation term), next-token
 * accuracy, tokens predicted (the cloud's six metrics are in the first three), the optimizer, speed. */
function groupOf(name) {
  if (name.endsWith("_loss")) return ["Loss", "loss"];
  if (name.includes("fraction_of_correct") || name.includes("accuracy")) return ["Next-token accuracy", "fraction"];
  if (name.endsWith("num_predictions")) return ["Predictions per evaluation", "tokens"];
  if (name === "learning_rate" || name === "grad_norm") return ["Optimizer", "value"];
  if (name.endsWith("per_second")) return ["Speed", "per second"];
  return ["Other", "value"];
}

const GROUP_ORDER = ["Loss", "Next-token accuracy", "Predictions per evaluation", "Optimizer", "Speed", "Other"];

function seriesByGroup(rows) {
  const groups = {};
  for (const row of rows) {
    for (const [name, value] of Object.entries(row)) {
      if (name === "step" || typeof value !== "number") continue;
      const [group] = groupOf(name);
      groups[group] ??= {};
      (groups[group][name] ??= []).push({ x: row.step, y: value });
    }
  }
  return groups;
}

export function jobPage(root, jobId) {
  const head = h("div", {});
  const actions = h("div", { class: "actions" });
  const problems = h("div", { id: "job-problems" });
  const summary = h("dl", { class: "facts" });
  const result = h("div", {});
  const charts = h("div", { class: "charts", id: "charts" });
  const events = h("ol", { class: "events", id: "events" });
  const actionError = h("div", { class: "error", role: "alert", hidden: true });
  const alert = pollAlert();
  root.append(head, alert, actions, actionError, problems, summary, result,
    h("h2", {}, "Curves"), charts, h("h2", {}, "Events"), events);
  const made = {};

  const act = (label, what, cls = "") => h("button", {
    type: "button", class: cls, dataset: { action: what },
    onclick: async () => {
      actionError.hidden = true;
      try {
        await post(`/v1/fine_tuning/jobs/${jobId}/${what}`);
        await refresh();
      } catch (err) {
        actionError.textContent = err.message;
        actionError.hidden = false;
      }
    },
  }, label);

  let lastStatus = null;
  async function refresh() {
    const [job, metrics, eventPage] = await Promise.all([
      get(`/v1/fine_tuning/jobs/${jobId}`),
      get(`/v1/mentor/jobs/${jobId}/metrics`),
      get(`/v1/fine_tuning/jobs/${jobId}/events?limit=1000`),
    ]);
    head.replaceChildren(h("div", { class: "title-row" },
      h("h1", {}, job.display_name || job.id), badge(job.status)));
    if (job.status !== lastStatus) {
      lastStatus = job.status;
      actions.replaceChildren(...[
        underWay(job) && act("Pause", "pause"),
        job.status === "paused" && act("Resume", "resume"),
        ACTIVE.has(job.status) && act("Cancel", "cancel", "danger"),
        h("a", { class: "button secondary", href: `#/new/${job.kind}?clone=${job.id}` }, "Clone this job"),
      ].filter(Boolean));
    }
    problems.replaceChildren(job.error ? errorBox(job.error) : "");
    const step = job.progress.step || 0;
    summary.replaceChildren(
      h("dt", {}, "Kind"), h("dd", {}, job.kind),
      h("dt", {}, "Base model"), h("dd", { class: "wrap" }, job.model),
      h("dt", {}, "Progress"), h("dd", {}, progressBar(step, job.progress.total_steps)),
      h("dt", {}, "Created"), h("dd", {}, when(job.created_at)),
      h("dt", {}, "Elapsed"), h("dd", {}, duration(elapsed(job))),
      h("dt", {}, "Remaining"), h("dd", {}, underWay(job) ? duration(remaining(job)) : "–"),
      h("dt", {}, "Training data"), h("dd", { class: "wrap" }, job.training_file || job.config.data || "–"),
    );
    const best = eventPage.data.find((e) => e.data.event === "best_checkpoint");
    result.replaceChildren(
      job.fine_tuned_model ? h("p", { class: "result" }, "Model: ",
        h("a", { href: `#/models/${encodeURIComponent(job.fine_tuned_model)}`, id: "model-link" },
          job.fine_tuned_model)) : "",
      best ? h("p", { id: "chosen-checkpoint" }, `Chosen checkpoint: step ${best.data.step}`,
        best.data.metric ? ` (${best.data.metric} ${number(best.data.value)})` : "") : "",
    );
    const groups = Object.entries(seriesByGroup(metrics.data));
    groups.sort(([a], [b]) => GROUP_ORDER.indexOf(a) - GROUP_ORDER.indexOf(b));
    for (const [group, series] of groups) {
      if (!made[group]) {
        const [, yLabel] = groupOf(Object.keys(series)[0]);
        made[group] = lineChart(group, yLabel);
        charts.append(made[group].box);
      }
      made[group].update(series);
    }
    if (!metrics.data.length) charts.replaceChildren(h("p", { class: "muted" }, "No metrics yet."));
    else charts.querySelector(":scope > p.muted")?.remove();
    events.replaceChildren(...eventPage.data.map((e) => h("li", { class: `level-${e.level}`, dataset: { event: e.data.event } },
      h("time", {}, when(e.created_at)), " ", h("span", { class: "event-type" }, e.data.event), " ", e.message)));
    return ACTIVE.has(job.status);
  }

  const stop = poll(refresh, POLL_MS, alert.show);
  return () => {
    stop();
    for (const made_ of Object.values(made)) made_.chart.destroy();
  };
}
