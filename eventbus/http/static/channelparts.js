// Parts of the channel pages: the tabs between a channel's events and its
// consumers, and the retention panel (PATCH /channels/{c}/{ch}).

import { call, route } from "./api.js";
import { duration, h, num, replace } from "./dom.js";
import { field, panel, problem } from "./ui.js";

export function channelHref(context, channel, tab = "events") {
  const base = `#/c/${encodeURIComponent(context)}/${encodeURIComponent(channel)}`;
  return tab === "events" ? base : `${base}/${tab}`;
}

export function channelTabs(context, channel, current) {
  const tab = (name, label) =>
    h("a", { href: channelHref(context, channel, name), "aria-current": name === current ? "page" : null }, label);
  return h(
    "nav",
    { class: "tabs", "aria-label": "Channel" },
    tab("events", "Events"),
    tab("consumers", "Consumers"),
    h("a", { href: "#/channels", class: "back" }, "All channels"),
  );
}

function sourceOf(retention, name) {
  const source = retention.source;
  const from = typeof source === "string" ? source : source && source[name];
  return from === "channel" ? "this channel's setting" : "server default";
}

/** The retention panel: the policy in force, and a form to change it. */
export function retentionPanel(context, channel, onUpdate) {
  const shown = h("dl", { class: "pairs", id: "retention" });
  const ageInput = h("input", {
    id: "retention-max-age",
    type: "number",
    min: 1,
    step: "any",
    placeholder: "server default",
  });
  const eventsInput = h("input", {
    id: "retention-max-events",
    type: "number",
    min: 1,
    step: 1,
    placeholder: "server default",
  });
  const result = h("div", { id: "retention-result", "aria-live": "polite" });
  const form = h(
    "form",
    { id: "retention-form", novalidate: true },
    field("Max age (seconds)", ageInput, "empty: the server's default"),
    field("Max events", eventsInput, "empty: the server's default"),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Save")),
    result,
  );
  const details = h("details", {}, h("summary", {}, "Change retention (needs manage)"), form);
  const element = panel("Retention", `PATCH /channels/${context}/${channel}`, shown, details);
  let edited = false;
  ageInput.addEventListener("input", () => (edited = true));
  eventsInput.addEventListener("input", () => (edited = true));

  function update(info) {
    if (!info || !info.retention) {
      replace(shown, h("p", { class: "muted" }, "No events and no settings yet."));
      return;
    }
    const r = info.retention;
    const row = (label, ...value) => h("div", {}, h("dt", {}, label), h("dd", {}, ...value));
    replace(
      shown,
      row(
        "Max age",
        r.max_age === null ? "keep all" : `${duration(r.max_age)} (${num(r.max_age)} s)`,
        h("small", { class: "muted" }, ` · ${sourceOf(r, "max_age")}`),
      ),
      row(
        "Max events",
        r.max_events === null ? "keep all" : num(r.max_events),
        h("small", { class: "muted" }, ` · ${sourceOf(r, "max_events")}`),
      ),
    );
    if (!edited) {
      ageInput.value = sourceOf(r, "max_age").startsWith("this") && r.max_age !== null ? r.max_age : "";
      eventsInput.value = sourceOf(r, "max_events").startsWith("this") && r.max_events !== null ? r.max_events : "";
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const value = (input) => (input.value.trim() === "" ? null : Number(input.value));
    try {
      const answer = await call("PATCH", route("channels", context, channel), {
        body: JSON.stringify({ retention: { max_age: value(ageInput), max_events: value(eventsInput) } }),
        headers: { "Content-Type": "application/json" },
      });
      edited = false;
      update(answer.data);
      onUpdate(answer.data);
      replace(result, h("p", { class: "ok" }, "Saved."));
    } catch (error) {
      replace(result, problem(error, "Changing retention"));
    }
  });
  return { element, update };
}
