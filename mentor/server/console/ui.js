// Small DOM helpers shared by the views. Text always goes in as text, never as HTML.

/** h("a", {href: "#/jobs", class: "x"}, "text", child...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  const rest = seconds % 60;
  if (hours) return `${hours} h ${minutes} min`;
  if (minutes) return `${minutes} min ${rest} s`;
  return `${rest} s`;
}

export const now = () => Date.now() / 1000;

export function when(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleString() : "–";
}

export function number(value) {
  if (typeof value !== "number") return value === null || value === undefined ? "–" : String(value);
  if (Number.isInteger(value)) return value.toLocaleString();
  return Math.abs(value) >= 100 ? value.toFixed(1) : value.toPrecision(4);
}

export function bytes(n) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function badge(state) {
  return h("span", { class: `badge state-${state}`, dataset: { state } }, state.replace("_", " "));
}

export function progressBar(step, total) {
  const fraction = total ? Math.min(1, step / total) : 0;
  return h("div", { class: "progress", title: `${step} of ${total || "?"} steps` },
    h("div", { class: "progress-fill", style: `width: ${(fraction * 100).toFixed(1)}%` }),
    h("span", { class: "progress-text" }, total ? `${step} / ${total}` : `${step}`));
}

/** A job's error as the user needs it: the message, and the file, line and field it concerns. */
export function errorBox(error) {
  const where = [error.file && `file ${error.file}`, error.line && `line ${error.line}`,
    error.param && `field ${error.param}`].filter(Boolean).join(", ");
  return h("div", { class: "error", role: "alert" }, h("strong", {}, "Error: "), error.message,
    where ? h("div", { class: "where" }, where) : null);
}

/** An alert that `poll` fills when a call fails and empties when one succeeds again. */
export function pollAlert() {
  const box = h("div", { class: "error", role: "alert", hidden: true });
  box.show = (err) => {
    box.hidden = !err;
    box.textContent = err ? `Cannot refresh: ${err.message}` : "";
  };
  return box;
}

export function table(head, rows, attrs = {}) {
  return h("div", { class: "table-wrap" },
    h("table", attrs, h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))),
      h("tbody", {}, rows)));
}

/** A line chart of metric series by step; `update` replaces its points without animation. */
export function lineChart(title, yLabel) {
  const canvas = h("canvas", {});
  const box = h("figure", { class: "chart", dataset: { chart: title, points: "0" } },
    h("figcaption", {}, title), h("div", { class: "chart-area" }, canvas));
  const chart = new window.Chart(canvas, {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
      interaction: { mode: "nearest", intersect: false },
      scales: { x: { type: "linear", title: { display: true, text: "step" } },
        y: { title: { display: true, text: yLabel } } },
      plugins: { legend: { labels: { boxWidth: 12 } } },
    },
  });
  const update = (series) => {
    const names = Object.keys(series).sort();
    chart.data.datasets = names.map((name, i) => ({
      label: name, data: series[name], borderColor: COLORS[i % COLORS.length],
      backgroundColor: COLORS[i % COLORS.length], pointRadius: series[name].length > 40 ? 0 : 2, borderWidth: 2,
    }));
    chart.update("none");
    box.dataset.points = String(names.reduce((sum, n) => sum + series[n].length, 0));
  };
  return { box, chart, update };
}

export const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];
