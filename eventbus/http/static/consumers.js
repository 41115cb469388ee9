// The Consumers view of a channel: each durable consumer's mode, cursor,
// lag (drawn as a bar), leases in flight and dead letters; a consumer's
// dead letters with their payloads, and Retry for one or all of them.

import { call, get, route } from "./api.js";
import { count, h, jsonBlock, num, rawParts, readEvent, replace, when } from "./dom.js";
import { channelTabs } from "./channelparts.js";
import { bar, heading, keepingFocus, Life, panel, problem } from "./ui.js";

export const REFRESH_MS = 3000;

export function consumersView(main, { context, channel }) {
  const life = new Life();
  const base = route("consumers", context, channel);
  const body = h("tbody");
  const listProblem = h("div");
  const status = h("p", { class: "muted status", "aria-live": "polite" });
  const deadSlot = h("div", { id: "dead-letters" });
  let selected = null; // the consumer whose dead letters are shown
  let consumers = [];

  const table = h(
    "table",
    { id: "consumers-table", class: "grid" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Consumer"),
        h("th", { scope: "col" }, "Mode"),
        h("th", { scope: "col", class: "n" }, "Cursor"),
        h("th", { scope: "col", class: "n" }, "Lag"),
        h("th", { scope: "col", class: "lagbar" }, h("span", { class: "visually-hidden" }, "Lag, drawn")),
        h("th", { scope: "col", class: "n" }, "In flight"),
        h("th", { scope: "col", class: "n" }, "Dead"),
      ),
    ),
    body,
  );

  function row(c, maxLag) {
    const dead =
      c.dead > 0
        ? h(
            "button",
            {
              type: "button",
              class: "link dead-button",
              dataset: { focusKey: `dead ${c.name}` },
              "aria-expanded": String(selected === c.name),
              onclick: () => {
                selected = selected === c.name ? null : c.name;
                render();
                loadDead();
              },
            },
            `${num(c.dead)} dead`,
          )
        : h("span", { class: "muted" }, "0");
    return h(
      "tr",
      { dataset: { consumer: c.name }, class: selected === c.name ? "selected" : null },
      h("td", { "data-label": "Consumer" }, h("strong", {}, c.name)),
      h("td", { "data-label": "Mode" }, c.mode),
      h("td", { class: "n", "data-label": "Cursor" }, num(c.cursor)),
      h("td", { class: "n lag-value", "data-label": "Lag" }, num(c.lag)),
      h("td", { class: "lagbar", "data-label": "" }, bar(c.lag, maxLag, `lag ${num(c.lag)} events`)),
      h("td", { class: "n", "data-label": "In flight" }, num(c.in_flight)),
      h("td", { class: "n dead-count", "data-label": "Dead" }, dead),
    );
  }

  function render() {
    const maxLag = Math.max(0, ...consumers.map((c) => c.lag));
    keepingFocus(body, () => {
      replace(body, consumers.map((c) => row(c, maxLag)));
      if (!consumers.length) {
        replace(
          body,
          h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No consumers on this channel yet (PUT ", h("code", {}, `${base}/<name>`), ")")),
        );
      }
    });
    status.textContent = `${count(consumers.length, "consumer")} · refreshed every ${REFRESH_MS / 1000} s`;
  }

  async function refresh() {
    try {
      consumers = await get(base);
      replace(listProblem);
    } catch (e) {
      replace(listProblem, problem(e, "Listing consumers"));
      throw e;
    }
    if (selected !== null && !consumers.some((c) => c.name === selected && c.dead > 0)) {
      selected = null;
      replace(deadSlot);
    }
    render();
  }

  async function retry(name, ids, slot) {
    for (const id of ids) {
      try {
        await call("POST", `${route("consumers", context, channel, name)}/dead/${id}/retry`);
      } catch (e) {
        replace(slot, problem(e, `Retrying event #${id}`));
        break;
      }
    }
    await refresh();
    await loadDead();
  }

  async function loadDead() {
    if (selected === null) {
      replace(deadSlot);
      return;
    }
    const name = selected;
    let answer;
    try {
      answer = await call("GET", `${route("consumers", context, channel, name)}/dead`);
    } catch (e) {
      replace(deadSlot, problem(e, "Reading dead letters"));
      return;
    }
    if (name !== selected) return;
    const texts = rawParts(answer.text);
    const letters = texts.map((text) => {
      const parts = rawParts(text);
      return { event: readEvent(parts.get("event")), deliveries: Number(parts.get("deliveries")) };
    });
    const result = h("div", { class: "dead-result", "aria-live": "polite" });
    const items = letters.map(({ event, deliveries }) =>
      h(
        "li",
        { class: "event", dataset: { id: event.id } },
        h(
          "div",
          { class: "meta" },
          h("span", { class: "id" }, `#${num(event.id)}`),
          h("span", { class: "issuer" }, event.issuer),
          h("span", {}, when(event.timestamp)),
          h("span", { class: "muted" }, count(deliveries, "delivery", "deliveries")),
          h("button", { type: "button", class: "retry", onclick: () => retry(name, [event.id], result) }, "Retry"),
        ),
        jsonBlock(event.payloadText, { class: "json payload" }),
      ),
    );
    replace(
      deadSlot,
      panel(
        `Dead letters of ${name}`,
        `GET ${route("consumers", context, channel, name)}/dead`,
        h(
          "div",
          { class: "toolbar" },
          h("span", { class: "muted" }, count(letters.length, "dead letter")),
          letters.length
            ? h(
                "button",
                { type: "button", id: "retry-all", onclick: () => retry(name, letters.map((l) => l.event.id), result) },
                "Retry all",
              )
            : null,
        ),
        result,
        h("ol", { class: "events dead" }, items),
      ),
    );
  }

  replace(
    main,
    heading(h("span", { class: "muted" }, context, " / "), channel, " · consumers"),
    channelTabs(context, channel, "consumers"),
    panel("Consumers", `GET ${base}`, status, listProblem, h("div", { class: "scroll" }, table)),
    deadSlot,
  );
  life.every(REFRESH_MS, refresh);
  return life;
}
