// The Webhooks view: every subscription the token may manage (GET
// /subscriptions) with its status, lag, failures, last error and attempt;
// Enable for a disabled one; a form to create one, whose secret is shown
// once, as the server shows it once.

import { call, get, route } from "./api.js";
import { channelHref } from "./channelparts.js";
import { count, h, num, replace, timeAgo } from "./dom.js";
import { field, heading, keepingFocus, Life, panel, problem } from "./ui.js";

export const REFRESH_MS = 3000;

export function webhooksView(main) {
  const life = new Life();
  const body = h("tbody");
  const listProblem = h("div");
  const status = h("p", { class: "muted status", "aria-live": "polite" });
  const actionResult = h("div", { id: "webhook-action", "aria-live": "polite" });
  let subscriptions = [];

  async function enable(id, button) {
    button.disabled = true;
    try {
      await call("POST", `${route("subscriptions", id)}/enable`);
      replace(actionResult, h("p", { class: "ok" }, `Subscription ${id} is active again.`));
    } catch (e) {
      replace(actionResult, problem(e, `Enabling subscription ${id}`));
    }
    await refresh();
  }

  function row(s) {
    const disabled = s.status === "disabled";
    const channel = s.channel === "*" ? h("span", {}, s.context, " / *") : h("a", { href: channelHref(s.context, s.channel), dataset: { focusKey: `channel ${s.id}` } }, s.context, " / ", s.channel);
    const enableButton = h("button", { type: "button", class: "enable", dataset: { focusKey: `enable ${s.id}` } }, "Enable");
    enableButton.addEventListener("click", () => enable(s.id, enableButton));
    return h(
      "tr",
      { dataset: { subscription: s.id } },
      h("td", { class: "n", "data-label": "Id" }, num(s.id)),
      h("td", { "data-label": "Channel" }, channel),
      h("td", { class: "url", "data-label": "URL" }, s.url),
      h(
        "td",
        { "data-label": "Status" },
        h("span", { class: `badge ${disabled ? "bad" : "good"} status` }, s.status),
        disabled && s.disabled_reason ? h("small", { class: "reason" }, s.disabled_reason) : null,
      ),
      h("td", { class: "n", "data-label": "Lag" }, num(s.lag)),
      h("td", { class: "n failures", "data-label": "Failures" }, num(s.consecutive_failures)),
      h("td", { class: "error-text", "data-label": "Last error" }, s.last_error ?? h("span", { class: "muted" }, "—")),
      h("td", { "data-label": "Last attempt" }, timeAgo(s.last_attempt)),
      h("td", { "data-label": "" }, disabled ? enableButton : null),
    );
  }

  function render() {
    keepingFocus(body, () => {
      replace(body, subscriptions.map(row));
      if (!subscriptions.length) {
        replace(body, h("tr", {}, h("td", { colspan: 9, class: "empty" }, "No subscriptions yet.")));
      }
    });
    status.textContent = `${count(subscriptions.length, "subscription")} · refreshed every ${REFRESH_MS / 1000} s`;
  }

  async function refresh() {
    try {
      subscriptions = await get(route("subscriptions"));
      replace(listProblem);
    } catch (e) {
      replace(listProblem, problem(e, "Listing subscriptions"));
      throw e;
    }
    render();
  }

  // -- a new subscription -----------------------------------------------------------------
  const contextInput = h("input", { id: "new-context", required: true, autocomplete: "off" });
  const channelInput = h("input", { id: "new-channel", required: true, autocomplete: "off", placeholder: "a channel, or *" });
  const urlInput = h("input", { id: "new-url", type: "url", required: true, autocomplete: "off", placeholder: "https://…" });
  const startInput = h(
    "select",
    { id: "new-start" },
    h("option", { value: "latest" }, "latest: only new events"),
    h("option", { value: "earliest" }, "earliest: the whole channel"),
  );
  const createResult = h("div", { id: "create-result", "aria-live": "polite" });
  const form = h(
    "form",
    { id: "new-subscription", novalidate: true },
    h("div", { class: "row" }, field("Context", contextInput), field("Channel", channelInput), field("Start", startInput)),
    field("URL", urlInput, "the receiver; it gets one signed POST per event"),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Create")),
    createResult,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const sent = {
      context: contextInput.value.trim(),
      channel: channelInput.value.trim(),
      url: urlInput.value.trim(),
      start: startInput.value,
    };
    try {
      const answer = await call("POST", route("subscriptions"), {
        body: JSON.stringify(sent),
        headers: { "Content-Type": "application/json" },
      });
      const secret = h("code", { id: "new-secret", class: "secret" }, answer.data.secret);
      const copy = h("button", { type: "button" }, "Copy");
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(answer.data.secret);
          copy.textContent = "Copied";
        } catch {
          getSelection().selectAllChildren(secret);
        }
      });
      const done = h("button", { type: "button", onclick: () => replace(createResult) }, "I have stored it");
      replace(
        createResult,
        h(
          "div",
          { class: "secret-box", role: "alert" },
          h("p", {}, h("strong", {}, `Subscription ${answer.data.id} created.`), " Its signing secret is shown this once; store it now:"),
          h("p", {}, secret, " ", copy),
          done,
        ),
      );
      await refresh();
    } catch (error) {
      replace(createResult, problem(error, "Creating the subscription"));
    }
  });

  replace(
    main,
    heading("Webhooks"),
    panel(
      "Subscriptions",
      "GET /subscriptions",
      status,
      listProblem,
      actionResult,
      h(
        "div",
        { class: "scroll" },
        h(
          "table",
          { id: "webhooks-table", class: "grid" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Id", "Channel", "URL", "Status", "Lag", "Failures", "Last error", "Last attempt", ""].map((t) =>
                h("th", { scope: "col", class: ["Id", "Lag", "Failures"].includes(t) ? "n" : null }, t),
              ),
            ),
          ),
          body,
        ),
      ),
    ),
    h("div", { class: "narrow-panel" }, panel("New subscription", "POST /subscriptions", form)),
  );
  life.every(REFRESH_MS, refresh);
  return life;
}
