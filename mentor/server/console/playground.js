// Playground: chat with any servable model, or send one prompt to two models side by side
// (a student and its teacher or base), with latency and token counts.

import { get, post } from "./api.js";
import { h } from "./ui.js";

function modelSelect(id, models, chosen, allowNone) {
  return h("select", { id },
    allowNone ? h("option", { value: "" }, "— none —") : null,
    models.map((m) => h("option", { value: m, selected: m === chosen }, m)));
}

/** One column: a model's conversation, kept so follow-up prompts carry the history. */
function column(label) {
  const log = h("div", { class: "transcript" });
  const box = h("section", { class: "column", dataset: { column: label } }, h("h2", {}, label), log);
  const messages = [];
  return {
    box,
    async ask(model, prompt, options) {
      messages.push({ role: "user", content: prompt });
      log.append(h("div", { class: "msg user" }, prompt));
      const pending = h("div", { class: "msg assistant pending" }, "…");
      log.append(pending);
      const started = performance.now();
      try {
        const answer = await post("/v1/chat/completions", { model, messages, ...options });
        const ms = performance.now() - started;
        const text = answer.choices[0].message.content;
        messages.push({ role: "assistant", content: text });
        pending.replaceChildren(h("div", { class: "answer" }, text),
          h("div", { class: "stats" }, `${(ms / 1000).toFixed(2)} s · ${answer.usage.prompt_tokens} prompt tokens · `
            + `${answer.usage.completion_tokens} completion tokens · ${answer.choices[0].finish_reason}`));
        pending.classList.remove("pending");
      } catch (err) {
        messages.pop();
        pending.classList.replace("pending", "failed");
        pending.textContent = err.message;
      }
    },
    reset() {
      messages.length = 0;
      log.replaceChildren();
    },
  };
}

export function playground(root, query) {
  const params = new URLSearchParams(query || "");
  const holder = h("div", {});
  root.append(h("h1", {}, "Playground"), holder);
  (async () => {
    const list = await get("/v1/models");
    const names = list.data.map((m) => m.id);
    const chosen = params.get("model") || names.find((n) => n.startsWith("ft:")) || names[0];
    const first = modelSelect("model-a", names, chosen, false);
    const second = modelSelect("model-b", names, params.get("compare") || "", true);
    const maxTokens = h("input", { id: "max-tokens", type: "number", min: 1, max: 4096, value: 64 });
    const temperature = h("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0 });
    const prompt = h("textarea", { id: "prompt", rows: 3, placeholder: "Ask something…", required: true });
    const columns = h("div", { class: "columns" });
    let left = null;
    let right = null;
    const layout = () => {
      left = column(first.value);
      right = second.value ? column(second.value) : null;
      columns.replaceChildren(left.box, right ? right.box : "");
      columns.classList.toggle("two", Boolean(right));
    };
    first.addEventListener("change", layout);
    second.addEventListener("change", layout);
    layout();
    const send = h("button", { type: "submit", id: "send" }, "Send");
    const form = h("form", { class: "playground-form" },
      h("div", { class: "row" },
        h("label", { class: "field" }, h("span", { class: "label" }, "Model"), first),
        h("label", { class: "field" }, h("span", { class: "label" }, "Compare with"), second),
        h("label", { class: "field small" }, h("span", { class: "label" }, "Max tokens"), maxTokens),
        h("label", { class: "field small" }, h("span", { class: "label" }, "Temperature"), temperature)),
      prompt,
      h("div", { class: "actions" }, send, h("button", { type: "button", class: "secondary", onclick: layout }, "Clear")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = prompt.value.trim();
      if (!text) return;
      const options = { max_tokens: Number(maxTokens.value) || 64, temperature: Number(temperature.value) || 0 };
      send.disabled = true;
      prompt.value = "";
      try {
        await Promise.all([left.ask(first.value, text, options), right?.ask(second.value, text, options)]);
      } finally {
        send.disabled = false;
      }
    });
    holder.append(form, columns);
  })().catch((err) => holder.replaceChildren(h("div", { class: "error", role: "alert" }, err.message)));
}
