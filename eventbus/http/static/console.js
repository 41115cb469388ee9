// The console's entry point: which view the address shows, signing in with
// a token, and the header.  Each view is a module with a function that
// draws it into <main> and returns its lifetime (stopped when it is left).

import { ApiError, getToken, onUnauthorized, setToken } from "./api.js";
import { channelView } from "./channel.js";
import { channelsView } from "./channels.js";
import { consumersView } from "./consumers.js";
import { h, replace } from "./dom.js";
import { field, heading, problem } from "./ui.js";
import { webhooksView } from "./webhooks.js";

const main = document.getElementById("main");
const who = document.getElementById("who");
const banner = document.getElementById("banner");

const NAME = "[^/]+";
const ROUTES = [
  { pattern: /^#\/channels$/, nav: "channels", title: () => "Channels", view: channelsView },
  {
    pattern: new RegExp(`^#/c/(${NAME})/(${NAME})$`),
    nav: "channels",
    title: (p) => `${p.context}/${p.channel}`,
    view: channelView,
  },
  {
    pattern: new RegExp(`^#/c/(${NAME})/(${NAME})/consumers$`),
    nav: "channels",
    title: (p) => `Consumers of ${p.context}/${p.channel}`,
    view: consumersView,
  },
  { pattern: /^#\/webhooks$/, nav: "webhooks", title: () => "Webhooks", view: webhooksView },
];

let current = null; // the lifetime of the view shown
let signInShown = false;

function match(hash) {
  for (const r of ROUTES) {
    const found = r.pattern.exec(hash);
    if (found) {
      let params = {};
      try {
        if (found.length > 2) params = { context: decodeURIComponent(found[1]), channel: decodeURIComponent(found[2]) };
      } catch {
        return null;
      }
      return { ...r, params };
    }
  }
  return null;
}

function leave() {
  if (current) current.stop();
  current = null;
}

function mount() {
  leave();
  signInShown = false;
  banner.hidden = true;
  const route = match(location.hash);
  if (!route) {
    location.replace("#/channels");
    return;
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === route.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${route.title(route.params)} · eventbus`;
  current = route.view(main, route.params);
  const title = document.getElementById("view-title");
  if (title && document.activeElement !== title) title.focus({ preventScroll: true });
}

function renderWho() {
  const token = getToken();
  if (token) {
    replace(
      who,
      h("span", { class: "muted", title: "the token is kept in this tab only (sessionStorage)" }, `token …${token.slice(-4)}`),
      h("button", { type: "button", id: "sign-out", onclick: () => (setToken(""), renderWho(), mount()) }, "Sign out"),
    );
  } else {
    replace(
      who,
      h("span", { class: "muted" }, "no token"),
      h("button", { type: "button", id: "sign-in", onclick: () => signIn(null) }, "Use a token"),
    );
  }
}

/** Ask for a token: after a 401 (error), or when the user asks (null). */
function signIn(error) {
  if (error && getToken()) {
    setToken(""); // refused: invalid, expired or revoked
    renderWho();
  }
  if (signInShown && error) {
    const slot = document.getElementById("sign-in-problem");
    if (slot) replace(slot, problem(error, "The server asks for a token"));
    return;
  }
  leave();
  signInShown = true;
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    required: true,
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "ebt_…",
  });
  const form = h(
    "form",
    { id: "sign-in-form", class: "panel narrow" },
    field("Token", input, "kept in this browser tab only, and sent as Authorization: Bearer"),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Sign in"), error ? null : h("button", { type: "button", onclick: () => mount() }, "Cancel")),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    setToken(token);
    renderWho();
    mount();
  });
  replace(
    main,
    heading("Sign in"),
    h("div", { id: "sign-in-problem" }, error ? problem(error, "The server asks for a token") : null),
    h(
      "p",
      { class: "muted" },
      error
        ? "This server needs a token for this. "
        : "Without a token this server lets you in because you are on its own machine (--auth local). Enter a token to act with its scopes instead. ",
      "An operator creates one with ",
      h("code", {}, "eventbus token create NAME --scope read:CONTEXT/*"),
      " (add consume, publish or manage scopes for more).",
    ),
    form,
  );
  document.title = "Sign in · eventbus";
  input.focus();
}

onUnauthorized((error) => signIn(error));

function fail(reason) {
  if (reason instanceof ApiError && reason.status === 401) return; // the sign-in shows it
  replace(banner, h("strong", {}, "Something went wrong: "), String(reason && reason.message ? reason.message : reason));
  banner.hidden = false;
}
window.addEventListener("error", (e) => fail(e.error || e.message));
window.addEventListener("unhandledrejection", (e) => fail(e.reason));
window.addEventListener("hashchange", mount);

renderWho();
mount();
