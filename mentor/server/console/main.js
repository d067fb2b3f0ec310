// The console's entry: the token (login form, or `#token=...` once in the URL), and a router
// from the URL fragment to a view. A view returns a function that stops its polling.

import { get, token } from "./api.js";
import { jobPage, jobsList } from "./jobs.js";
import { modelPage, modelsList } from "./models.js";
import { newJob } from "./newjob.js";
import { playground } from "./playground.js";
import { h } from "./ui.js";

const view = document.getElementById("view");
const logout = document.getElementById("logout");
let stopView = null;

function login(root) {
  const input = h("input", { id: "token", type: "password", autocomplete: "current-password", required: true });
  const problem = h("div", { class: "error", role: "alert", hidden: true });
  const form = h("form", { class: "login", id: "login" },
    h("h1", {}, "Log in"),
    h("p", { class: "muted" }, "The server's API token: printed once when the server first started, and kept in its data "
      + "folder (api_token), or the MENTOR_API_TOKEN it was started with."),
    h("label", { class: "field" }, h("span", { class: "label" }, "API token"), input),
    problem, h("button", { type: "submit" }, "Log in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    token.set(input.value.trim());
    try {
      await get("/v1/models");
      location.hash = "#/jobs";
    } catch (err) {
      token.clear();
      problem.textContent = err.status === 401 ? "The server refused this token." : err.message;
      problem.hidden = false;
    }
  });
  root.append(form);
}

/** A URL part as text; one a hand-edited address left malformed ("%") stays as written. */
function safeDecode(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

const ROUTES = [
  [/^#\/login$/, (root) => login(root)],
  [/^#\/jobs\/([^/?]+)$/, (root, id) => jobPage(root, id)],
  [/^#\/new(?:\/([^/?]+))?(?:\?clone=([^&]+))?$/, (root, kind, clone) => newJob(root, kind, clone)],
  [/^#\/models\/(.+)$/, (root, name) => modelPage(root, safeDecode(name))],
  [/^#\/models$/, (root) => modelsList(root)],
  [/^#\/playground(?:\?(.*))?$/, (root, query) => playground(root, query)],
  [/^#\/jobs$/, (root) => jobsList(root)],
];

function route() {
  const hash = location.hash || "#/jobs";
  const fromUrl = /^#token=(.+)$/.exec(hash);
  if (fromUrl) { // a token handed over in the link: keep it, and take it out of the address bar
    token.set(decodeURIComponent(fromUrl[1]));
    history.replaceState(null, "", "#/jobs");
    return route();
  }
  if (stopView) stopView();
  stopView = null;
  view.replaceChildren();
  const [pattern, render] = ROUTES.find(([p]) => p.test(hash)) || ROUTES[ROUTES.length - 1];
  const match = pattern.exec(hash) || [];
  stopView = render(view, ...match.slice(1)) || null;
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("current", hash.startsWith(`#/${link.dataset.nav}`));
  }
  logout.hidden = !token.get();
}

window.addEventListener("mentor:unauthorized", () => {
  if (location.hash !== "#/login") location.hash = "#/login";
});
logout.addEventListener("click", () => {
  token.clear();
  location.hash = "#/login";
});
window.addEventListener("hashchange", route);
route();
