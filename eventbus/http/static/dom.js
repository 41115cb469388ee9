// Building the page, formatting numbers and times, showing JSON as published.
//
// Rule: nothing here (or anywhere in the console) turns data into markup.
// Elements are made with createElement and text goes in as text nodes, so a
// payload holding "<script>" shows as those characters.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

/** Append children: strings and numbers as text, nodes as they are, arrays flattened. */
export function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element: h("a", {href: "#/x", class: "y"}, "text", otherNode). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element (for sparklines). */
export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replace an element's children. */
export function replace(element, ...children) {
  element.replaceChildren();
  return append(element, children);
}

// -- numbers and times -------------------------------------------------------------
const integers = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimals = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

/** 1234 -> "1,234" (in the browser's locale); null -> an em dash. */
export function num(value) {
  return value === null || value === undefined ? "—" : integers.format(value);
}

/** "1 channel", "2,345 channels". */
export function count(n, singular, plural = `${singular}s`) {
  return `${num(n)} ${n === 1 ? singular : plural}`;
}

/** A rate: one decimal below 10, whole numbers above. */
export function rate(value) {
  if (value === null || value === undefined) return "—";
  return value < 10 ? decimals.format(value) : integers.format(value);
}

/** Seconds as the largest unit that fits: "45 s", "12 min", "3 h", "7 d". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, seconds);
  if (s < 60) return `${integers.format(Math.floor(s))} s`;
  if (s < 3600) return `${integers.format(Math.floor(s / 60))} min`;
  if (s < 86400) return `${integers.format(Math.floor(s / 3600))} h`;
  return `${integers.format(Math.floor(s / 86400))} d`;
}

/** A unix time as "3 s ago" (or "never" for null). */
export function ago(unixSeconds) {
  if (unixSeconds === null || unixSeconds === undefined) return "never";
  return `${duration(Date.now() / 1000 - unixSeconds)} ago`;
}

/** A unix time as the browser's local "2026-11-30 23:28:25.123". */
export function when(unixSeconds) {
  if (unixSeconds === null || unixSeconds === undefined) return "—";
  const d = new Date(unixSeconds * 1000);
  const two = (n) => String(n).padStart(2, "0");
  const date = `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}`;
  const time = `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  return `${date} ${time}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

/** A <time> showing "3 s ago", with the exact time as its title. */
export function timeAgo(unixSeconds) {
  if (unixSeconds === null || unixSeconds === undefined) return h("span", { class: "muted" }, "never");
  return h(
    "time",
    { datetime: new Date(unixSeconds * 1000).toISOString(), title: when(unixSeconds) },
    ago(unixSeconds),
  );
}

// -- JSON as it was published ------------------------------------------------------
// The server returns payloads exactly as published (key order, number
// precision); JSON.parse would round big numbers and drop "1.0"'s zero.  So
// payloads are cut out of the answer's text and re-indented, never re-encoded.

const WHITESPACE = " \t\n\r";

function skipSpace(text, i) {
  while (i < text.length && WHITESPACE.includes(text[i])) i++;
  return i;
}

function endOfString(text, i) {
  // text[i] is the opening quote; returns the index after the closing one.
  for (i++; i < text.length; i++) {
    if (text[i] === "\\") i++;
    else if (text[i] === '"') return i + 1;
  }
  throw new SyntaxError("unterminated string");
}

function endOfValue(text, i) {
  const c = text[i];
  if (c === '"') return endOfString(text, i);
  if (c === "{" || c === "[") {
    let depth = 0;
    for (; i < text.length; i++) {
      const d = text[i];
      if (d === '"') i = endOfString(text, i) - 1;
      else if (d === "{" || d === "[") depth++;
      else if (d === "}" || d === "]") {
        depth--;
        if (depth === 0) return i + 1;
      }
    }
    throw new SyntaxError("unterminated object or array");
  }
  while (i < text.length && !",}] \t\n\r".includes(text[i])) i++;
  return i;
}

/**
 * The raw text of each part of a JSON value: for an object a Map of member
 * name to the member's text, for an array a list of the elements' texts.
 */
export function rawParts(text) {
  let i = skipSpace(text, 0);
  const open = text[i];
  if (open !== "{" && open !== "[") throw new SyntaxError("not an object or an array");
  const object = open === "{";
  const parts = object ? new Map() : [];
  i = skipSpace(text, i + 1);
  if (text[i] === (object ? "}" : "]")) return parts;
  for (;;) {
    let name = null;
    if (object) {
      const end = endOfString(text, i);
      name = JSON.parse(text.slice(i, end));
      i = skipSpace(text, end);
      if (text[i] !== ":") throw new SyntaxError("expected ':'");
      i = skipSpace(text, i + 1);
    }
    const end = endOfValue(text, i);
    if (object) parts.set(name, text.slice(i, end));
    else parts.push(text.slice(i, end));
    i = skipSpace(text, end);
    if (text[i] === ",") {
      i = skipSpace(text, i + 1);
      continue;
    }
    return parts;
  }
}

/** Re-indent JSON text (two spaces) without parsing its numbers or strings. */
export function pretty(text) {
  let out = "";
  let depth = 0;
  const newline = () => "\n" + "  ".repeat(depth);
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (WHITESPACE.includes(c)) continue;
    if (c === '"') {
      const end = endOfString(text, i);
      out += text.slice(i, end);
      i = end - 1;
    } else if (c === "{" || c === "[") {
      const next = skipSpace(text, i + 1);
      if (text[next] === (c === "{" ? "}" : "]")) {
        out += c + text[next];
        i = next;
      } else {
        depth++;
        out += c + newline();
      }
    } else if (c === "}" || c === "]") {
      depth--;
      out += newline() + c;
    } else if (c === ",") {
      out += "," + newline();
    } else if (c === ":") {
      out += ": ";
    } else {
      out += c;
    }
  }
  return out;
}

/** An event object's text -> its fields (parsed) and its payload's text (as published). */
export function readEvent(text) {
  const event = JSON.parse(text);
  let payloadText;
  try {
    payloadText = rawParts(text).get("payload");
  } catch {
    payloadText = undefined;
  }
  event.payloadText = payloadText === undefined ? JSON.stringify(event.payload) : payloadText;
  return event;
}

/** A JSON value's text as a <pre>, re-indented, as text. */
export function jsonBlock(text, attrs = {}) {
  let shown;
  try {
    shown = pretty(text);
  } catch {
    shown = text;
  }
  return h("pre", { class: "json", ...attrs }, shown);
}
