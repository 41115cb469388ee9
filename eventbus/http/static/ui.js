// What every view shares: its lifetime (timers, streams, all stopped when
// it is left), how a refusal or an error is shown, small widgets.

import { ApiError } from "./api.js";
import { h, replace } from "./dom.js";

/** A view's lifetime: everything it starts is stopped by stop(). */
export class Life {
  constructor() {
    this.stopped = false;
    this.cleanups = [];
  }

  /** Run fn now (or after `ms`) and then every `ms`: never two at once, not while the tab is hidden. */
  every(ms, fn, { now = true } = {}) {
    let timer = null;
    const tick = async () => {
      if (this.stopped) return;
      if (!document.hidden) {
        try {
          await fn();
        } catch (e) {
          if (!(e instanceof ApiError)) throw e;
        }
      }
      if (!this.stopped) timer = setTimeout(tick, ms);
    };
    if (now) tick();
    else timer = setTimeout(tick, ms);
    this.onStop(() => clearTimeout(timer));
  }

  onStop(f) {
    this.cleanups.push(f);
  }

  stop() {
    this.stopped = true;
    for (const f of this.cleanups.splice(0)) f();
  }
}

/** A failed request's message: the server's own words. */
function describe(error) {
  return String(error && error.message ? error.message : error);
}

const TITLES = {
  0: "No answer",
  400: "Refused",
  401: "Not signed in",
  403: "Forbidden",
  404: "Not found",
  409: "Conflict",
  413: "Too large",
  429: "Too many requests",
  503: "Unavailable",
};

/** An error message: a short title for the status, then the server's text verbatim. */
export function problem(error, what = null) {
  const status = error instanceof ApiError ? error.status : null;
  const title = status === null ? "Error" : TITLES[status] || `HTTP ${status}`;
  const hint =
    status === 403
      ? " The token in use does not have the scope this needs; sign in with another token."
      : status === 0
        ? " Is the server running?"
        : "";
  return h(
    "div",
    { class: "problem", role: "alert", dataset: { status: status ?? "" } },
    h("strong", {}, what ? `${what}: ${title}` : title, status ? ` (${status})` : ""),
    " ",
    h("span", { class: "message" }, describe(error)),
    hint ? h("span", { class: "hint" }, hint) : null,
  );
}

/** Show a result (or an error) in a slot, replacing what was there. */
export function show(slot, ...content) {
  replace(slot, ...content);
}

/** A page heading (focused when the view opens, for keyboard and screen-reader users). */
export function heading(text, ...extra) {
  return h("h1", { tabindex: "-1", id: "view-title" }, text, ...extra);
}

/** A panel with a title and an API hint (the console is a living example of the API). */
export function panel(title, apiHint, ...children) {
  return h(
    "section",
    { class: "panel", "aria-label": title },
    h("header", {}, h("h2", {}, title), apiHint ? h("code", { class: "api" }, apiHint) : null),
    ...children,
  );
}

/** A horizontal bar for a value out of max (lag). */
export function bar(value, max, label) {
  const fill = h("span", { class: "fill" });
  fill.style.width = `${max > 0 ? Math.max(value > 0 ? 2 : 0, Math.min(100, (100 * value) / max)) : 0}%`;
  return h("span", { class: "bar", role: "img", "aria-label": label, title: label }, fill);
}

/** A labelled form field. */
export function field(label, input, help = null) {
  return h("label", { class: "field" }, h("span", { class: "label" }, label), input, help ? h("small", {}, help) : null);
}

/**
 * Re-render part of a view without taking the keyboard focus away: an
 * element marked with a data-focus-key keeps the focus across the redraw.
 */
export function keepingFocus(container, redraw) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.dataset.focusKey : undefined;
  redraw();
  if (key !== undefined) {
    const again = container.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}
