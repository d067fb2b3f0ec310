// Models: the registry, and a model's page with its metrics, lineage, test report, files and delete.

import { ApiError, api, download, get } from "./api.js";
import { COLORS, bytes, h, number, table, when } from "./ui.js";

const modelHref = (name) => `#/models/${encodeURIComponent(name)}`;
const KEY_METRICS = ["eval_fraction_of_correct_next_step_preds", "eval_total_loss", "train_total_loss"];

export function modelsList(root) {
  const holder = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  root.append(h("h1", {}, "Models"), holder);
  (async () => {
    const list = await get("/v1/models");
    const tuned = list.data.filter((m) => m.owned_by === "mentor");
    const rows = await Promise.all(tuned.map((m) => get(`/v1/models/${encodeURIComponent(m.id)}`)));
    holder.replaceChildren(
      rows.length ? table(["Model", "Base", "Kind", "Tuning", ...KEY_METRICS.map((k) => k.replaceAll("_", " ")), "Created"],
        rows.map((m) => h("tr", { dataset: { model: m.id } },
          h("td", { class: "wrap" }, h("a", { href: modelHref(m.id) }, m.id)),
          h("td", { class: "wrap" }, m.base_model), h("td", {}, m.kind), h("td", {}, m.tuning || "–"),
          KEY_METRICS.map((k) => h("td", { class: "num" }, number((m.metrics || {})[k]))),
          h("td", {}, when(m.created))))) : h("p", { class: "muted" }, "No tuned models yet."),
      h("h2", {}, "Base models"),
      h("ul", { class: "plain" }, list.data.filter((m) => m.owned_by !== "mentor").map((m) =>
        h("li", {}, m.id, " ", h("a", { href: `#/playground?model=${encodeURIComponent(m.id)}` }, "try"))),
      ),
    );
  })().catch((err) => holder.replaceChildren(h("div", { class: "error" }, err.message)));
}

/** The uploaded files a model's job read, by config field (every role its lineage records):
 * {data: {id, filename}, prompt_dataset: {...}, ...}. */
async function uploadsOf(lineage) {
  const ids = Object.fromEntries(Object.entries(lineage?.data || {}).map(([field, d]) => [field, d.file_id]));
  const out = {};
  await Promise.all(Object.entries(ids).filter(([, id]) => id).map(async ([field, id]) => {
    out[field] = await get(`/v1/files/${id}`).catch(() => ({ id, filename: "(deleted)" }));
  }));
  return out;
}

function lineageView(model, uploads) {
  const lin = model.lineage;
  const job = lin.job;
  const data = Object.entries(lin.data || {}).map(([field, d]) => {
    const upload = uploads[field];
    return h("li", {}, `${field}: `, h("span", { class: "wrap", title: d.path || "" },
      upload ? `${upload.filename} (${upload.id})` : d.path || "?"),
    h("code", { title: `sha256 ${d.sha256 || ""}` }, ` ${(d.sha256 || "").slice(0, 12)}`));
  });
  return h("div", { class: "lineage", id: "lineage" },
    h("div", { class: "node" }, h("div", { class: "node-kind" }, "base model"),
      lin.base_model.startsWith("ft:") ? h("a", { href: modelHref(lin.base_model) }, lin.base_model) : h("span", { class: "wrap" }, lin.base_model)),
    h("div", { class: "arrow" }, "→"),
    h("div", { class: "node" }, h("div", { class: "node-kind" }, "job"),
      job ? h("a", { href: `#/jobs/${job.id}` }, `${job.kind} ${job.id}`) : "–",
      h("ul", { class: "plain" }, data,
        lin.teacher ? h("li", {}, "teacher: ", h("span", { class: "wrap" }, lin.teacher.reference)) : null)),
    h("div", { class: "arrow" }, "→"),
    h("div", { class: "node current" }, h("div", { class: "node-kind" }, "model"), model.id),
    lin.derived.length ? h("div", { class: "derived" }, "Tuned from this model: ",
      lin.derived.map((name) => h("a", { href: modelHref(name) }, name))) : null);
}

function reportView(report) {
  const metric = report.main_metric;
  const names = report.results.map((r) => r.name);
  const canvas = h("canvas", {});
  const box = h("div", { class: "report", id: "report" },
    h("p", {}, report.title),
    table(["Model", metric, "answered", "n", "s / example", "tokens / example", "parameters"],
      report.results.map((r) => h("tr", {}, h("td", {}, r.name), h("td", { class: "num" }, number(r.metrics[metric])),
        h("td", { class: "num" }, number(r.metrics.answered)), h("td", { class: "num" }, number(r.metrics.n)),
        h("td", { class: "num" }, number(r.seconds_per_example)), h("td", { class: "num" }, number(r.tokens_per_example)),
        h("td", { class: "num" }, r.parameters ? `${(r.parameters / 1e6).toFixed(1)}M` : "–")))),
    h("figure", { class: "chart" }, h("div", { class: "chart-area" }, canvas)),
    h("ul", { class: "plain muted" }, report.notes.map((n) => h("li", {}, n))));
  const chart = new window.Chart(canvas, {
    type: "bar",
    data: { labels: names, datasets: [{ label: metric, data: report.results.map((r) => r.metrics[metric]),
      backgroundColor: names.map((n, i) => (n.startsWith("teacher") ? "#9ca3af" : COLORS[i % COLORS.length])) }] },
    options: { animation: false, responsive: true, maintainAspectRatio: false, plugins: { legend: { display: false } },
      scales: { y: { beginAtZero: true, title: { display: true, text: metric } } } },
  });
  return { box, chart };
}

export function modelPage(root, name) {
  const holder = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  root.append(holder);
  let chart = null;
  (async () => {
    const model = await get(`/v1/models/${encodeURIComponent(name)}`);
    const [files, report, uploads] = await Promise.all([
      get(`/v1/mentor/models/${encodeURIComponent(name)}/files`),
      get(`/v1/mentor/models/${encodeURIComponent(name)}/report`).catch((err) => {
        if (err instanceof ApiError && err.status === 404) return null;
        throw err;
      }),
      uploadsOf(model.lineage),
    ]);
    const metrics = Object.entries(model.metrics || {});
    const deleteButton = h("button", { type: "button", class: "danger", id: "delete-model", onclick: async () => {
      if (!window.confirm(`Delete ${name} and its job folder?`)) return;
      try {
        await api("DELETE", `/v1/models/${encodeURIComponent(name)}`);
        location.hash = "#/models";
      } catch (err) {  // e.g. 409: a queued job or an adapter still needs it
        failure.textContent = err.message;
        failure.hidden = false;
      }
    } }, "Delete");
    const failure = h("div", { class: "error", role: "alert", id: "model-error", hidden: true });
    let reportPart = h("p", { class: "muted" }, "This model's job wrote no test report.");
    if (report) {
      const made = reportView(report);
      chart = made.chart;
      reportPart = made.box;
    }
    holder.replaceChildren(
      h("div", { class: "title-row" }, h("h1", { class: "wrap" }, name)),
      h("div", { class: "actions" },
        h("a", { class: "button", href: `#/playground?model=${encodeURIComponent(name)}` }, "Try in the playground"),
        model.job_id ? h("a", { class: "button secondary", href: `#/jobs/${model.job_id}` }, "Its job") : null,
        deleteButton),
      failure,
      h("dl", { class: "facts" },
        h("dt", {}, "Kind"), h("dd", {}, `${model.kind}${model.method ? ` (${model.method})` : ""}`),
        h("dt", {}, "Tuning"), h("dd", {}, model.tuning || "–"),
        h("dt", {}, "Weights"), h("dd", {}, model.weights || "–"),
        h("dt", {}, "Chosen"), h("dd", {}, model.selection || "–"),
        h("dt", {}, "Created"), h("dd", {}, when(model.created))),
      h("h2", {}, "Lineage"), lineageView(model, uploads),
      h("h2", {}, "Metrics"),
      metrics.length ? table(["Metric", "Value"], metrics.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: "num" }, number(v)))),
        { id: "metrics" }) : h("p", { class: "muted" }, "No metrics recorded."),
      h("h2", {}, "Test report"), reportPart,
      h("h2", {}, "Files"),
      table(["File", "Size", ""], files.data.map((f) => h("tr", {}, h("td", { class: "wrap" }, f.path), h("td", { class: "num" }, bytes(f.bytes)),
        h("td", {}, h("button", { type: "button", class: "link", onclick: () => download(
          `/v1/mentor/model_file?model=${encodeURIComponent(name)}&path=${encodeURIComponent(f.path)}`, f.path.split("/").pop())
          .catch((err) => { failure.textContent = err.message; failure.hidden = false; }) },
        "download")))), { id: "files" }),
    );
  })().catch((err) => holder.replaceChildren(h("div", { class: "error", role: "alert" }, err.message)));
  return () => chart?.destroy();
}
