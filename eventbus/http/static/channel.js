// The Channel view: the channel's numbers (GET /channels/{c}/{ch}), a live
// tail over Server-Sent Events (newest on top; pause, issuer filter, older
// pages), a form to publish a test event, and the retention settings.

import { ApiError, call, eventSource, get, pooled, route, unauthorized } from "./api.js";
import { channelTabs, retentionPanel } from "./channelparts.js";
import { h, jsonBlock, num, readEvent, replace, timeAgo, when } from "./dom.js";
import { field, heading, Life, panel, problem } from "./ui.js";

/** Events the tail starts with (replayed by the stream), and per "load older". */
export const PAGE = 20;
/** Most events kept on the page; the oldest go first. */
const MAX_SHOWN = 1000;
const INFO_REFRESH_MS = 5000;
const REOPEN_MS = 5000;

function eventItem(event) {
  return h(
    "li",
    { class: "event", dataset: { id: event.id, issuer: event.issuer } },
    h(
      "div",
      { class: "meta" },
      h("span", { class: "id" }, `#${num(event.id)}`),
      h("span", { class: "issuer", title: "issuer" }, event.issuer),
      h("time", { datetime: new Date(event.timestamp * 1000).toISOString() }, when(event.timestamp)),
    ),
    jsonBlock(event.payloadText, { class: "json payload" }),
  );
}

/** Why a payload cannot be sent, or null: checked before sending, as the server would. */
export function payloadProblem(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return `Invalid JSON: ${e.message}`;
  }
  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  if (Array.isArray(value)) {
    if (!value.length) return "A batch must hold at least one event.";
    if (!value.every(isObject)) return "Every element of a batch must be a JSON object.";
    return null;
  }
  return isObject(value) ? null : "The payload must be a JSON object (or an array of objects for a batch).";
}

export function channelView(main, { context, channel }) {
  const life = new Life();
  const events = route("events", context, channel);
  let info = null;

  // -- the numbers -------------------------------------------------------------------
  const stats = h("dl", { class: "stats", id: "channel-stats" });
  const statsProblem = h("div");
  function renderStats() {
    const item = (label, value) => h("div", {}, h("dt", {}, label), h("dd", {}, value));
    replace(
      stats,
      item("Last id", num(info ? info.last_id : 0)),
      item("Stored", num(info ? info.count : 0)),
      item("First stored", info && info.first_id !== null ? `#${num(info.first_id)}` : "—"),
      item("Last event", timeAgo(info ? info.last_timestamp : null)),
    );
  }
  async function loadInfo() {
    try {
      info = await get(route("channels", context, channel));
      replace(statsProblem);
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) {
        replace(statsProblem, problem(e, "Reading the channel"));
        throw e;
      }
      info = null; // never had an event, no settings
    }
    renderStats();
    retention.update(info);
    return info;
  }

  // -- the tail --------------------------------------------------------------------------
  const list = h("ol", { id: "tail", class: "events", reversed: true });
  const streamState = h("span", { class: "stream-state", id: "stream-state", role: "status" }, "connecting…");
  const tailProblem = h("div", { id: "tail-problem" });
  const notes = h("div", { class: "notes" });
  const pauseButton = h("button", { type: "button", id: "pause", "aria-pressed": "false" }, "Pause");
  const issuerFilter = h("input", {
    id: "issuer-filter",
    type: "search",
    placeholder: "issuer contains…",
    list: "issuers",
    autocomplete: "off",
  });
  const issuers = h("datalist", { id: "issuers" });
  const seenIssuers = new Set();
  const olderButton = h("button", { type: "button", id: "load-older", hidden: true }, `Load ${PAGE} older`);
  const shownCount = h("span", { class: "muted", id: "shown-count" });

  let source = null;
  let paused = false;
  let newest = null; // highest id shown
  let oldest = null; // lowest id shown
  let startAfter = null;
  let reopenTimer = null;

  const wanted = (issuer) => {
    const text = issuerFilter.value.trim().toLowerCase();
    return !text || issuer.toLowerCase().includes(text);
  };
  function applyFilter() {
    let visible = 0;
    for (const li of list.children) {
      li.hidden = !wanted(li.dataset.issuer);
      if (!li.hidden) visible++;
    }
    shownCount.textContent = issuerFilter.value.trim()
      ? `${num(visible)} of ${num(list.children.length)} shown`
      : `${num(list.children.length)} shown`;
  }
  function remember(event) {
    if (!seenIssuers.has(event.issuer)) {
      seenIssuers.add(event.issuer);
      issuers.append(h("option", { value: event.issuer }));
    }
  }
  function firstStored() {
    return info && info.first_id !== null ? info.first_id : 1;
  }
  function updateOlder() {
    olderButton.hidden = oldest === null || oldest <= firstStored();
  }
  function addNewest(event) {
    if (newest !== null && event.id <= newest) return;
    const li = eventItem(event);
    li.hidden = !wanted(event.issuer);
    list.prepend(li);
    remember(event);
    newest = event.id;
    if (oldest === null) oldest = event.id;
    while (list.children.length > MAX_SHOWN) {
      list.lastElementChild.remove();
      oldest = Number(list.lastElementChild.dataset.id);
    }
    updateOlder();
    applyFilter();
  }
  function setState(text, kind) {
    streamState.textContent = text;
    streamState.dataset.state = kind;
  }
  function close() {
    clearTimeout(reopenTimer);
    if (source) source.close();
    source = null;
  }
  function open(after) {
    close();
    setState("connecting…", "connecting");
    const es = eventSource(`${events}/stream`, after === null ? {} : { after });
    source = es;
    es.addEventListener("open", () => {
      setState("live", "live");
      replace(tailProblem);
    });
    es.addEventListener("event", (message) => addNewest(readEvent(message.data)));
    es.addEventListener("expired", (message) => {
      const gone = JSON.parse(message.data);
      notes.append(
        h("p", { class: "note" }, `${num(gone.missed)} events before #${num(gone.first_id)} were removed by retention.`),
      );
    });
    es.addEventListener("error", (message) => {
      if (es !== source) return;
      if (message.data) {
        // the server's last word on this stream: its token was revoked or expired
        close();
        let text = message.data;
        try {
          text = JSON.parse(message.data).error;
        } catch {
          // as sent
        }
        const error = new ApiError(401, text);
        setState("closed", "closed");
        replace(tailProblem, problem(error, "Live tail"));
        unauthorized(error);
      } else if (es.readyState === EventSource.CLOSED) {
        close();
        diagnose();
      } else {
        setState("reconnecting…", "connecting");
      }
    });
  }
  /** The stream was refused: ask the API why (an EventSource cannot read the status). */
  async function diagnose() {
    setState("closed", "closed");
    try {
      await call("GET", `${events}?peek=${newest ?? startAfter ?? 0}&timeout=0&on_expired=earliest`);
      replace(tailProblem, h("p", { class: "note" }, `The stream was closed; reopening in ${REOPEN_MS / 1000} s.`));
    } catch (e) {
      replace(tailProblem, problem(e, "Live tail"));
      if (e instanceof ApiError && (e.status === 401 || e.status === 403 || e.status === 404)) return;
    }
    reopenTimer = setTimeout(() => {
      if (!paused && !life.stopped) open(newest ?? startAfter);
    }, REOPEN_MS);
  }
  pauseButton.addEventListener("click", () => {
    paused = !paused;
    pauseButton.textContent = paused ? "Resume" : "Pause";
    pauseButton.setAttribute("aria-pressed", String(paused));
    if (paused) {
      close();
      setState("paused", "paused");
    } else {
      open(newest ?? startAfter);
    }
  });
  issuerFilter.addEventListener("input", applyFilter);
  olderButton.addEventListener("click", async () => {
    if (oldest === null) return;
    olderButton.disabled = true;
    const ids = [];
    for (let id = oldest - 1; id >= Math.max(firstStored(), oldest - PAGE); id--) ids.push(id);
    const results = await pooled(
      ids.map((id) => () => call("GET", `${events}/${id}`)),
      4,
    );
    for (const [i, result] of results.entries()) {
      if (!result.ok) {
        if (result.error.status === 404) {
          notes.append(h("p", { class: "note" }, `Events before #${num(ids[i] + 1)} were removed by retention.`));
          oldest = firstStored();
        } else {
          replace(tailProblem, problem(result.error, "Loading older events"));
        }
        break;
      }
      const event = readEvent(result.value.text);
      const li = eventItem(event);
      li.hidden = !wanted(event.issuer);
      list.append(li);
      remember(event);
      oldest = event.id;
    }
    olderButton.disabled = false;
    updateOlder();
    applyFilter();
  });
  life.onStop(close);

  // -- publishing ------------------------------------------------------------------
  const issuerInput = h("input", {
    id: "publish-issuer",
    name: "issuer",
    required: true,
    maxlength: 128,
    autocomplete: "off",
    value: sessionStorage.getItem("eventbus.issuer") || "console",
  });
  const payloadInput = h(
    "textarea",
    { id: "publish-payload", name: "payload", rows: 6, spellcheck: "false" },
    '{\n  "hello": "world"\n}',
  );
  const publishResult = h("div", { id: "publish-result", "aria-live": "polite" });
  const publishButton = h("button", { type: "submit", class: "primary" }, "Publish");
  const publishForm = h(
    "form",
    { id: "publish", novalidate: true },
    field("Issuer", issuerInput, "sent as X-EVENT-ISSUER"),
    field("Payload", payloadInput, "a JSON object, or an array of objects for a batch"),
    h("div", { class: "actions" }, publishButton),
    publishResult,
  );
  publishForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = payloadInput.value;
    const invalid = payloadProblem(text);
    payloadInput.setAttribute("aria-invalid", String(Boolean(invalid)));
    if (invalid) {
      replace(publishResult, h("p", { class: "problem", role: "alert" }, invalid));
      return;
    }
    sessionStorage.setItem("eventbus.issuer", issuerInput.value);
    publishButton.disabled = true; // one click, one event
    try {
      const answer = await call("POST", events, {
        body: text,
        headers: { "Content-Type": "application/json", "X-EVENT-ISSUER": issuerInput.value },
      });
      const stored = Array.isArray(answer.data) ? answer.data : [answer.data];
      const ids = stored.map((s) => `#${num(s.id)}`);
      replace(
        publishResult,
        h("p", { class: "ok" }, stored.length === 1 ? `Stored as event ${ids[0]}.` : `Stored events ${ids[0]} to ${ids[ids.length - 1]}.`),
      );
    } catch (error) {
      replace(publishResult, problem(error, "Publishing"));
    } finally {
      publishButton.disabled = false;
    }
  });

  // -- the page ------------------------------------------------------------------------
  const retention = retentionPanel(context, channel, (updated) => {
    info = updated;
    renderStats();
  });
  replace(
    main,
    heading(h("span", { class: "muted" }, context, " / "), channel),
    channelTabs(context, channel, "events"),
    statsProblem,
    stats,
    h(
      "div",
      { class: "columns" },
      panel(
        "Live tail",
        `GET ${events}/stream`,
        h("div", { class: "toolbar" }, pauseButton, field("Issuer", issuerFilter), streamState, shownCount),
        issuers,
        tailProblem,
        notes,
        list,
        h("div", { class: "actions" }, olderButton),
      ),
      h(
        "div",
        { class: "side" },
        panel("Publish a test event", `POST ${events}`, publishForm),
        retention.element,
      ),
    ),
  );
  renderStats();
  applyFilter();

  (async () => {
    try {
      await loadInfo();
    } catch (e) {
      setState("closed", "closed");
      replace(tailProblem, problem(e, "Live tail"));
      if (!(e instanceof ApiError)) throw e;
      return;
    }
    if (life.stopped) return;
    // The last PAGE events, replayed by the stream itself, then live.
    startAfter = info && info.first_id !== null ? Math.max(info.first_id - 1, info.last_id - PAGE) : info ? info.last_id : 0;
    open(startAfter);
    life.every(
      INFO_REFRESH_MS,
      async () => {
        await loadInfo();
        updateOlder();
      },
      { now: false },
    );
  })();
  return life;
}
