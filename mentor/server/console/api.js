// The server's API as the console calls it: the same endpoints and token as any client.

const TOKEN_KEY = "mentor-token";

export const token = {
  get: () => localStorage.getItem(TOKEN_KEY),
  set: (value) => localStorage.setItem(TOKEN_KEY, value),
  clear: () => localStorage.removeItem(TOKEN_KEY),
};

/** An error answer: the server's message, and the field (`param`) it concerns when it names one. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.param = error.param || null;
    this.code = error.code || null;
  }
}

function headers(extra = {}) {
  const value = token.get();
  return value ? { ...extra, Authorization: `Bearer ${value}` } : extra;
}

/** JSON in, JSON out; a FormData body goes as multipart. 401 sends the user to the login form. */
export async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers = headers({ "Content-Type": "application/json" });
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (!resp.ok) {
    let data = null;
    try {
      data = await resp.json();
    } catch {
      data = null;
    }
    if (resp.status === 401) window.dispatchEvent(new CustomEvent("mentor:unauthorized"));
    throw new ApiError(resp.status, data);
  }
  return resp.json();
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body === undefined ? {} : body);

/** A file from the API saved by the browser (a plain link could not carry the token). */
export async function download(path, filename) {
  const resp = await fetch(path, { headers: headers() });
  if (!resp.ok) {
    const data = await resp.json().catch(() => null);
    if (resp.status === 401) window.dispatchEvent(new CustomEvent("mentor:unauthorized"));
    throw new ApiError(resp.status, data);
  }
  const url = URL.createObjectURL(await resp.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Calls `fn` now and every `ms` until stopped. A failed call is shown by `onError` (and cleared by
 * `onError(null)` once a call succeeds again) and retried at the next tick, except a 404: what is
 * watched is gone. */
export function poll(fn, ms, onError = () => {}) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try {
      const again = await fn();
      onError(null);
      if (again === false) stopped = true;
    } catch (err) {
      onError(err);
      if (err instanceof ApiError && err.status === 404) stopped = true;
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
