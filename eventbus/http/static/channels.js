// The Channels view: every channel (GET /channels), its last id, count, the
// age of its last event, a live rate and a sparkline of the last minutes.
//
// The rate comes from the channel's last id, sampled at each refresh: ids
// count the channel's events without gaps, so the difference between two
// samples is the number published in between.  Samples are kept for the
// page's lifetime (across views), so the sparkline fills as the page stays open.

import { getAll, route } from "./api.js";
import { count, duration, h, num, rate, replace, svg, timeAgo } from "./dom.js";
import { channelHref } from "./channelparts.js";
import { field, heading, keepingFocus, Life, panel, problem } from "./ui.js";

export const REFRESH_MS = 3000;
const WINDOW_S = 300; // the sparkline: the last 5 minutes
const BUCKET_S = 6; // one point every 6 s (two reads)
const RATE_S = 60; // the rate: events over the last minute

/** channel key "context/channel" -> [[unix seconds, last id], ...], oldest first. */
const samples = new Map();

function record(channels, at) {
  for (const c of channels) {
    const key = `${c.context}/${c.channel}`;
    const list = samples.get(key) || [];
    list.push([at, c.last_id]);
    while (list.length > 2 && list[1][0] < at - WINDOW_S - BUCKET_S) list.shift();
    samples.set(key, list);
  }
}

/** The last id known at time t (the latest sample at or before it), or null. */
function idAt(list, t) {
  let found = null;
  for (const [at, id] of list) {
    if (at > t) break;
    found = id;
  }
  return found;
}

/** Events per minute over the last minute (or the time sampled so far). */
export function currentRate(channel, now) {
  if (channel.last_timestamp === null || now - channel.last_timestamp > RATE_S) return 0;
  const list = samples.get(`${channel.context}/${channel.channel}`) || [];
  if (list.length < 2) return null;
  // from the latest sample a minute or more ago (else the first one)
  const [t0, id0] = list.filter(([at]) => at <= now - RATE_S).pop() || list[0];
  const [t1, id1] = list[list.length - 1];
  if (t1 <= t0) return null;
  return ((id1 - id0) * 60) / (t1 - t0);
}

/** Events per bucket over the window, null where nothing was sampled yet. */
function buckets(key, now) {
  const list = samples.get(key) || [];
  const points = [];
  for (let end = now - WINDOW_S + BUCKET_S; end <= now + 0.001; end += BUCKET_S) {
    // the bucket where sampling began counts from its first sample
    let before = idAt(list, end - BUCKET_S);
    if (before === null && list.length && list[0][0] <= end) before = list[0][1];
    const after = idAt(list, end);
    points.push(before === null || after === null ? null : Math.max(0, after - before));
  }
  return points;
}

function sparkline(key, now) {
  const points = buckets(key, now);
  const width = 120;
  const height = 24;
  const max = Math.max(1, ...points.filter((p) => p !== null));
  const step = width / (points.length - 1);
  const coords = points
    .map((p, i) => (p === null ? null : `${(i * step).toFixed(1)},${(height - 2 - ((height - 4) * p) / max).toFixed(1)}`))
    .filter((c) => c !== null);
  const total = points.reduce((sum, p) => sum + (p || 0), 0);
  const label = `${num(total)} events in the last ${duration(WINDOW_S)} sampled (peak ${num(max)} per ${BUCKET_S} s)`;
  return svg(
    "svg",
    { class: "sparkline", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": label },
    svg("title", {}, label),
    svg("line", { x1: 0, y1: height - 2, x2: width, y2: height - 2, class: "base" }),
    coords.length > 1 ? svg("polyline", { points: coords.join(" ") }) : null,
    coords.length === 1 ? svg("circle", { cx: coords[0].split(",")[0], cy: coords[0].split(",")[1], r: 1.6 }) : null,
  );
}

function retentionText(retention) {
  if (!retention) return "—";
  const parts = [];
  if (retention.max_age !== null && retention.max_age !== undefined) parts.push(duration(retention.max_age));
  if (retention.max_events !== null && retention.max_events !== undefined) parts.push(`${num(retention.max_events)} events`);
  return parts.length ? parts.join(", ") : "keep all";
}

function row(c, now) {
  const key = `${c.context}/${c.channel}`;
  const r = currentRate(c, now);
  return h(
    "tr",
    { dataset: { channel: key } },
    h("td", { "data-label": "Channel" }, h("a", { href: channelHref(c.context, c.channel), dataset: { focusKey: `open ${key}` } }, h("span", { class: "muted" }, c.context, " / "), c.channel)),
    h("td", { class: "n", "data-label": "Last id" }, num(c.last_id)),
    h("td", { class: "n", "data-label": "Stored" }, num(c.count)),
    h("td", { "data-label": "Last event" }, timeAgo(c.last_timestamp)),
    h("td", { class: "n rate", "data-label": "Per minute" }, rate(r)),
    h("td", { class: "spark", "data-label": "Last 5 min" }, sparkline(key, now)),
    h("td", { class: "retention", "data-label": "Retention" }, retentionText(c.retention)),
  );
}

export function channelsView(main) {
  const life = new Life();
  const contextFilter = h("select", { id: "context-filter" }, h("option", { value: "" }, "All contexts"));
  const nameFilter = h("input", { id: "channel-filter", type: "search", placeholder: "channel name contains…", autocomplete: "off" });
  const status = h("p", { class: "muted status", "aria-live": "polite" }, "Loading…");
  const body = h("tbody");
  const table = h(
    "table",
    { id: "channels-table", class: "grid" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Channel"),
        h("th", { scope: "col", class: "n" }, "Last id"),
        h("th", { scope: "col", class: "n" }, "Stored"),
        h("th", { scope: "col" }, "Last event"),
        h("th", { scope: "col", class: "n" }, "Per minute"),
        h("th", { scope: "col" }, "Last 5 min"),
        h("th", { scope: "col" }, "Retention"),
      ),
    ),
    body,
  );
  const openContext = h("input", { name: "context", required: true, autocomplete: "off", pattern: "[A-Za-z0-9_.:\\-]{1,128}" });
  const openChannel = h("input", { name: "channel", required: true, autocomplete: "off", pattern: "[A-Za-z0-9_.:\\-]{1,128}" });
  const openForm = h(
    "form",
    {
      class: "inline",
      onsubmit: (e) => {
        e.preventDefault();
        location.hash = channelHref(openContext.value.trim(), openChannel.value.trim());
      },
    },
    field("Context", openContext),
    field("Channel", openChannel),
    h("button", { type: "submit" }, "Open"),
  );
  const problemSlot = h("div");
  replace(
    main,
    heading("Channels"),
    panel(
      "Every channel",
      "GET /channels",
      h("div", { class: "toolbar" }, field("Context", contextFilter), field("Filter", nameFilter), status),
      problemSlot,
      h("div", { class: "scroll" }, table),
    ),
    panel("Open a channel", null, h("p", { class: "muted" }, "Also one that has no events yet (to publish its first)."), openForm),
  );

  let channels = [];
  function render() {
    const now = Date.now() / 1000;
    const context = contextFilter.value;
    const text = nameFilter.value.trim().toLowerCase();
    const shown = channels.filter((c) => (!context || c.context === context) && (!text || c.channel.toLowerCase().includes(text)));
    keepingFocus(body, () => {
      replace(body, shown.map((c) => row(c, now)));
      if (!channels.length) {
        replace(body, h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No channels yet: publish an event to create one.")));
      }
    });
    const contexts = [...new Set(channels.map((c) => c.context))].sort();
    const known = new Set([...contextFilter.options].map((o) => o.value));
    for (const name of contexts) if (!known.has(name)) contextFilter.append(h("option", { value: name }, name));
    status.textContent = `${num(shown.length)} of ${count(channels.length, "channel")} · refreshed every ${REFRESH_MS / 1000} s`;
  }
  contextFilter.addEventListener("change", render);
  nameFilter.addEventListener("input", render);

  life.every(REFRESH_MS, async () => {
    try {
      const found = await getAll(route("channels"));
      record(found, Date.now() / 1000);
      channels = found;
      replace(problemSlot);
      render();
    } catch (e) {
      replace(problemSlot, problem(e, "Listing channels"));
      status.textContent = "";
      throw e;
    }
  });
  return life;
}
