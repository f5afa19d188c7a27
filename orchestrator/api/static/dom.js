// Helpers shared by the dashboard's views. Text always goes into the page as text nodes
// or attribute values, never as HTML: step ids, names and error messages come from
// users' specs and tasks.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") el.addEventListener(name.replace(/^on/, ""), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("a", {href: "#/x"}, "text", otherElement). */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, the same way. */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function truncate(text, max) {
  const str = String(text ?? "");
  return str.length > max ? `${str.slice(0, max - 1)}…` : str;
}

/** Unix seconds as local time; the date too unless it is today. */
export function clock(t) {
  if (t === null || t === undefined) return "—";
  const d = new Date(t * 1000);
  const time = d.toLocaleTimeString([], { hour12: false });
  return d.toDateString() === new Date().toDateString()
    ? time
    : `${d.toLocaleDateString()} ${time}`;
}

/** A duration in seconds, in the unit a person reads fastest. */
export function secs(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  const v = Math.max(0, value);
  if (v < 1) return `${Math.round(v * 1000)} ms`;
  if (v < 10) return `${v.toFixed(2)} s`;
  if (v < 60) return `${v.toFixed(1)} s`;
  if (v < 3600) return `${Math.floor(v / 60)}m ${Math.round(v % 60)}s`;
  return `${Math.floor(v / 3600)}h ${Math.round((v % 3600) / 60)}m`;
}

export function badge(state) {
  const name = state || "unknown";
  return h("span", { class: `badge st-${name}`, "data-state": name }, name);
}

// Colour is never the only sign of a state: badges and nodes also say it in words.
export const STEP_STATES = [
  "pending", "queued", "running", "retrying", "succeeded", "failed", "dead-lettered",
  "skipped", "cancelled", "compensated",
];
export const WORKFLOW_STATES = [
  "pending", "parked", "running", "succeeded", "failed", "compensating", "compensated",
  "cancelled",
];
export const WORKFLOW_FINAL = new Set(["succeeded", "failed", "compensated", "cancelled"]);
