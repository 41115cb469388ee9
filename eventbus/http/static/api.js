// The public HTTP API, used as any client uses it: the same routes, the same
// tokens (README "API" and "Security").
//
// The token the user enters is kept in sessionStorage (gone with the tab),
// sent as "Authorization: Bearer" on every request, and as the access_token
// parameter of an EventSource, which cannot send headers.

const TOKEN_KEY = "eventbus.token";

/** Where the API is: the path before "/ui/" (so a proxy may mount the bus under a prefix). */
export const BASE = location.pathname.replace(/\/ui(\/[^/]*)?$/, "");

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A refused or failed request: the status (0: no answer) and the server's message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

const unauthorizedListeners = new Set();

/** Call f(error) on every 401: the app then asks for a token. */
export function onUnauthorized(f) {
  unauthorizedListeners.add(f);
}

export function unauthorized(error) {
  for (const f of unauthorizedListeners) f(error);
}

/** "/events/a b/c" from names: each segment percent-encoded. */
export function route(first, ...names) {
  return "/" + [first, ...names.map((n) => encodeURIComponent(String(n)))].join("/");
}

/**
 * One request.  Resolves to {status, headers, text, data} for a 2xx; throws
 * ApiError with the server's own {"error": ...} message otherwise.
 */
export async function call(method, path, { body, headers = {} } = {}) {
  const sent = new Headers(headers);
  const token = getToken();
  if (token) sent.set("Authorization", `Bearer ${token}`);
  let response;
  try {
    response = await fetch(BASE + path, { method, headers: sent, body, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, `the server did not answer (${e.message})`);
  }
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try {
      message = JSON.parse(text).error ?? text;
    } catch {
      // not JSON: show what came
    }
    const error = new ApiError(response.status, message || `HTTP ${response.status}`);
    if (response.status === 401) unauthorized(error);
    throw error;
  }
  return { status: response.status, headers: response.headers, text, data: text ? JSON.parse(text) : null };
}

export async function get(path) {
  return (await call("GET", path)).data;
}

/** Every element of a paged list (follows its Link rel="next", up to maxPages pages). */
export async function getAll(path, maxPages = 20) {
  let items = [];
  let next = path;
  for (let page = 0; next && page < maxPages; page++) {
    const answer = await call("GET", next);
    items = items.concat(answer.data);
    const link = answer.headers.get("Link") || "";
    const found = /<([^>]+)>\s*;\s*rel="next"/.exec(link);
    next = found ? found[1] : null;
  }
  return items;
}

/** An EventSource on the API (the token as access_token). */
export function eventSource(path, query = {}) {
  const params = new URLSearchParams(query);
  const token = getToken();
  if (token) params.set("access_token", token);
  const q = params.toString();
  return new EventSource(BASE + path + (q ? `?${q}` : ""));
}

/** Run at most `limit` of the tasks (functions returning promises) at a time; results in order. */
export async function pooled(tasks, limit) {
  const results = new Array(tasks.length);
  let nextIndex = 0;
  async function worker() {
    while (nextIndex < tasks.length) {
      const i = nextIndex++;
      results[i] = await tasks[i]().then(
        (value) => ({ ok: true, value }),
        (error) => ({ ok: false, error }),
      );
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}
