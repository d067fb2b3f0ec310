// "New job": a form per job kind, drawn from the kind's config schema (the registry that also
// makes the command line); validation is the server's, its message shown next to the field.

import { ApiError, get, post } from "./api.js";
import { h } from "./ui.js";

const NONE = "";

/** The schema of one field, with Optional[...] unwrapped and $refs resolved. */
function fieldType(prop, defs) {
  let p = prop;
  let optional = false;
  if (p.anyOf) {
    const kinds = p.anyOf.filter((s) => s.type !== "null");
    optional = kinds.length < p.anyOf.length;
    const list = kinds.find((s) => s.type === "array");
    // a text or a list of texts (LoRA target modules): a comma makes it a list
    const either = list && kinds.length === 2 && kinds.some((s) => s.type === "string");
    p = { ...p, ...(kinds.length === 1 ? kinds[0] : { type: "string", orList: either ? list : null }) };
    delete p.anyOf;
  }
  if (p.$ref) p = { ...defs[p.$ref.split("/").pop()], ...p };
  if (p.allOf && p.allOf.length === 1 && p.allOf[0].$ref) p = { ...defs[p.allOf[0].$ref.split("/").pop()], ...p };
  return { ...p, optional };
}

function fileChooser(name, files, value, onUpload) {
  const select = h("select", { name, id: `field-${name}`, dataset: { field: name } },
    h("option", { value: NONE }, "— none —"),
    files.map((f) => h("option", { value: f.id, selected: f.id === value }, `${f.filename} (${f.id})`)));
  if (value && !files.some((f) => f.id === value)) select.append(h("option", { value, selected: true }, value));
  const upload = h("input", { type: "file", accept: ".jsonl,.json,application/jsonl", dataset: { upload: name },
    "aria-label": `upload a file for ${name}` });
  upload.addEventListener("change", () => onUpload(upload, select));
  return [select, h("label", { class: "upload" }, "or upload: ", upload)];
}

function inputFor(name, type, value) {
  const attrs = { name, id: `field-${name}`, dataset: { field: name } };
  if (type.enum) {
    return h("select", attrs, type.optional ? h("option", { value: NONE }, "— default —") : null,
      type.enum.map((v) => h("option", { value: String(v), selected: String(v) === String(value ?? "") }, String(v))));
  }
  if (type.type === "boolean") return h("input", { ...attrs, type: "checkbox", checked: Boolean(value) });
  if (type.type === "integer" || type.type === "number") {
    return h("input", { ...attrs, type: "number", step: type.type === "integer" ? "1" : "any",
      min: type.minimum ?? type.exclusiveMinimum ?? null, max: type.maximum ?? type.exclusiveMaximum ?? null,
      value: value ?? "" });
  }
  if (type.type === "array" || type.type === "object") {
    const text = value === null || value === undefined ? "" : type.type === "array" && value.every?.((v) => typeof v !== "object")
      ? value.join(", ") : JSON.stringify(value);
    return h("input", { ...attrs, type: "text", value: text, placeholder: type.type === "array" ? "a, b, c" : "{}" });
  }
  if (type.orList && Array.isArray(value)) return h("input", { ...attrs, type: "text", value: value.join(", ") });
  return h("input", { ...attrs, type: "text", value: value ?? "", placeholder: type.orList ? "a, or a, b, c" : null });
}

/** The value a field's input holds, as JSON; undefined when left empty. Throws on bad JSON. */
function readValue(el, type) {
  if (type.type === "boolean") return el.checked;
  if (el.validity?.badInput) throw new Error("not a number");
  const text = el.value.trim();
  if (text === NONE) return undefined;
  if (type.type === "integer" || type.type === "number") return Number(text);
  if (type.orList && (text.startsWith("[") || text.includes(","))) return readValue(el, type.orList);
  if (type.type === "array") {
    if (text.startsWith("[")) return JSON.parse(text);
    const items = text.split(",").map((s) => s.trim()).filter(Boolean);
    const itemType = (type.items || {}).type;
    return itemType === "integer" || itemType === "number" ? items.map(Number) : items;
  }
  if (type.type === "object") return JSON.parse(text);
  if (type.enum && typeof type.enum[0] === "number") return Number(text);
  return text;
}

export function newJob(root, kindName, cloneId) {
  const status = h("div", { class: "error", role: "alert", id: "form-error", hidden: true });
  const container = h("div", {});
  root.append(h("h1", {}, cloneId ? `Clone ${cloneId}` : "New job"), container);

  (async () => {
    const [kinds, files, clone, models] = await Promise.all([
      get("/v1/mentor/kinds"), get("/v1/files"), cloneId ? get(`/v1/fine_tuning/jobs/${cloneId}`) : null,
      get("/v1/models")]);
    const byName = Object.fromEntries(kinds.data.map((k) => [k.id, k]));
    const kind = byName[kindName] || byName.tune;
    const picker = h("select", { id: "kind", onchange: () => { location.hash = `#/new/${picker.value}`; } },
      kinds.data.map((k) => h("option", { value: k.id, selected: k.id === kind.id },
        k.family && k.family !== k.id ? `${k.family}: ${k.id}` : k.id)));
    const start = clone ? (clone.api === "mentor" && clone.request.config ? clone.request.config : clone.config) : {};
    const form = buildForm(kind, files.data, start, clone);
    // model fields suggest the base and tuned models the server knows (any other reference still works)
    const known = h("datalist", { id: "known-models" }, models.data.map((m) => h("option", { value: m.id })));
    for (const name of ["model", "teacher", "reward_model"]) form.querySelector(`#field-${name}`)?.setAttribute("list", "known-models");
    container.append(h("label", { class: "field" }, h("span", { class: "label" }, "Job kind"), picker),
      h("p", { class: "muted" }, kind.summary || ""), status, known, form);
  })().catch((err) => {
    status.textContent = err.message;
    status.hidden = false;
    container.append(status);
  });

  function buildForm(kind, files, start, clone) {
    const { properties = {}, required = [], $defs: defs = {} } = kind.schema;
    const types = {};
    const rows = [];
    const setError = (name, message) => {
      const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      if (!slot) return false;
      slot.textContent = message;
      slot.hidden = false;
      slot.closest(".field")?.classList.add("invalid");
      return true;
    };
    const onUpload = async (input, select) => {
      const file = input.files[0];
      if (!file) return;
      const body = new FormData();
      body.append("purpose", "fine-tune");
      body.append("file", file);
      const name = select.dataset.field;
      try {
        const saved = await post("/v1/files", body);
        for (const other of form.querySelectorAll("select[data-field]")) {
          if (kind.input_fields.includes(other.dataset.field)) {
            other.append(h("option", { value: saved.id }, `${saved.filename} (${saved.id})`));
          }
        }
        select.value = saved.id;
        clearError(name);
      } catch (err) {
        setError(name, err.message);
      }
    };
    const clearError = (name) => {
      const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      if (slot) slot.hidden = true;
      slot?.closest(".field")?.classList.remove("invalid");
    };

    for (const [name, prop] of Object.entries(properties)) {
      if (prop.const !== undefined) continue; // the kind's own method: not a choice
      const type = fieldType(prop, defs);
      types[name] = type;
      const value = start[name] !== undefined ? start[name] : prop.default;
      const isFile = kind.input_fields.includes(name);
      const control = isFile ? fileChooser(name, files, value, onUpload) : [inputFor(name, type, value)];
      rows.push(h("div", { class: `field${type.type === "boolean" ? " check" : ""}`, dataset: { name } },
        h("label", { class: "label", for: `field-${name}` }, prop.title || name,
          required.includes(name) ? h("span", { class: "required", title: "required" }, " *") : null),
        ...control,
        prop.description ? h("small", { class: "help" }, prop.description) : null,
        h("div", { class: "field-error", dataset: { errorFor: name }, hidden: true })));
    }
    const suffix = h("input", { name: "suffix", id: "field-suffix", value: clone?.user_provided_suffix || "",
      pattern: "[A-Za-z0-9._-]*" });
    const displayName = h("input", { name: "display_name", id: "field-display_name" });
    const submit = h("button", { type: "submit", id: "create" }, "Create job");
    const form = h("form", { class: "job-form", novalidate: true },
      h("fieldset", {}, h("legend", {}, "Name"),
        h("div", { class: "field", dataset: { name: "suffix" } }, h("label", { class: "label", for: "field-suffix" }, "Suffix"),
          suffix, h("small", { class: "help" }, "goes into the tuned model's name: ft:BASE:SUFFIX:ID"),
          h("div", { class: "field-error", dataset: { errorFor: "suffix" }, hidden: true })),
        h("div", { class: "field" }, h("label", { class: "label", for: "field-display_name" }, "Display name"), displayName)),
      h("fieldset", {}, h("legend", {}, `${kind.id} settings`), rows),
      submit);

    form.addEventListener("input", (e) => e.target.dataset?.field && clearError(e.target.dataset.field));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      status.hidden = true;
      for (const slot of form.querySelectorAll(".field-error")) slot.hidden = true;
      for (const f of form.querySelectorAll(".invalid")) f.classList.remove("invalid");
      const config = {};
      let bad = false;
      for (const [name, type] of Object.entries(types)) {
        const el = form.querySelector(`[data-field="${CSS.escape(name)}"]`);
        let value;
        try {
          value = readValue(el, type);
        } catch (err) {
          const message = err.message === "not a number" ? "not a number"
            : `not valid JSON${type.type === "array" || type.orList ? " or a comma-separated list" : ""}`;
          bad = setError(name, message) || true;
          continue;
        }
        const fallback = properties[name].default;
        if (value === undefined) continue;
        if (JSON.stringify(value) === JSON.stringify(fallback) && start[name] === undefined) continue;
        config[name] = value;
      }
      if (bad) return;
      submit.disabled = true;
      try {
        const job = await post("/v1/mentor/jobs", {
          kind: kind.id, config, suffix: suffix.value || null, display_name: displayName.value || null });
        location.hash = `#/jobs/${job.id}`;
      } catch (err) {
        const param = err instanceof ApiError && err.param ? err.param.replace(/^config\./, "") : null;
        if (!(param && setError(param.split(".")[0], err.message))) {
          status.textContent = err.message;
          status.hidden = false;
        }
      } finally {
        submit.disabled = false;
      }
    });
    return form;
  }
}
