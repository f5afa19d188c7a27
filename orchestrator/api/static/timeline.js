// The timeline (a Gantt chart): one row per step on one clock that starts at submission.
// Hatched bars are waiting — in the queue, from queued (its dependencies done, its
// message published) to started, or in a retry's backoff — and solid bars are run time:
// a failed attempt in the retry colour, the last one in the colour of the step's state.
// Bars of unfinished steps grow to "now" on every poll.
//
// The status object has one queued/started/finished time per step, and started_at is
// its last attempt's; so a step that ran more than once is drawn attempt by attempt
// from its audit records, when the page has them.
import { h, s, secs, truncate } from "./dom.js";

const LABEL_W = 190;
const RIGHT_W = 190;
const ROW_H = 22;
const BAR_H = 12;
const AXIS_H = 26;
const PAD = 10;
// Past this many items per fan-out the rows say how many more there are instead.
const ITEM_ROWS = 12;

function rowsOf(wf) {
  const items = new Map();
  for (const step of wf.steps) {
    if (step.item_of) (items.get(step.item_of) || items.set(step.item_of, []).get(step.item_of)).push(step);
  }
  const rows = [];
  for (const step of wf.steps) {
    if (step.item_of) continue;
    rows.push({ step, item: false });
    const mine = items.get(step.id) || [];
    for (const item of mine.slice(0, ITEM_ROWS)) rows.push({ step: item, item: true });
    if (mine.length > ITEM_ROWS) rows.push({ more: mine.length - ITEM_ROWS });
  }
  return rows;
}

function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}

const ENDS_A_RUN = new Set(["retrying", "succeeded", "failed", "dead-lettered", "cancelled", "compensated", "skipped"]);

/** Bars from the status times alone: one wait, one run. */
function fromStatus(step, now) {
  const bars = [];
  const { queued_at: queued, started_at: started, finished_at: ended } = step;
  const waiting = ["queued", "retrying"].includes(step.state);
  if (queued != null && (started != null || waiting)) bars.push({ kind: "wait", from: queued, to: started ?? now });
  if (started != null) bars.push({ kind: "run", from: started, to: ended ?? (step.state === "running" ? now : started) });
  return bars;
}

/** Bars attempt by attempt, from the step's audit records (oldest first). */
function fromAudit(step, records, now) {
  const bars = [];
  let waitFrom = null;
  let runFrom = null;
  for (const r of records) {
    if (r.to === "queued" || r.to === "retrying") waitFrom = r.at;
    if (r.from === "running" && runFrom !== null && (ENDS_A_RUN.has(r.to) || r.to === "running")) {
      bars.push({ kind: "run", from: runFrom, to: r.at, failed: r.to === "retrying" || r.to === "running" });
      runFrom = null;
    }
    if (r.to === "running") {
      if (waitFrom !== null) bars.push({ kind: "wait", from: waitFrom, to: r.at });
      waitFrom = null;
      runFrom = r.at;
    }
  }
  if (runFrom !== null && step.state === "running") bars.push({ kind: "run", from: runFrom, to: now });
  if (waitFrom !== null && ["queued", "retrying"].includes(step.state)) bars.push({ kind: "wait", from: waitFrom, to: now });
  return bars;
}

function barsOf(step, audit, now) {
  const records = step.attempts > 1 && audit ? audit.get(step.id) : null;
  return records && records.some((r) => r.to === "running") ? fromAudit(step, records, now) : fromStatus(step, now);
}

/** Draw ``wf``'s timeline into ``box``: ``now`` (server seconds) ends open bars;
 * ``audit`` (step id → its records, or null) splits retried steps into attempts. */
export function drawTimeline(box, wf, now, audit = null) {
  const rows = rowsOf(wf);
  const stamps = wf.steps.flatMap((st) => [st.queued_at, st.started_at, st.finished_at]).filter((t) => t != null);
  const t0 = wf.submitted_at ?? Math.min(...stamps, now);
  const final = wf.finished_at != null;
  const t1 = final ? Math.max(wf.finished_at, ...stamps) : Math.max(now, ...stamps);
  const span = Math.max(t1 - t0, 0.05);
  const width = Math.max(box.clientWidth - 2, 640);
  const plotW = width - LABEL_W - RIGHT_W;
  const x = (t) => LABEL_W + Math.min(Math.max((t - t0) / span, 0), 1) * plotW;
  const height = AXIS_H + rows.length * ROW_H + PAD;
  const svg = s("svg", { class: "timeline", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `timeline of ${wf.name}` });
  svg.append(s("defs", {}, s("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
    s("rect", { class: "hatch-bg", width: 6, height: 6 }), s("line", { class: "hatch-line", x1: 0, y1: 0, x2: 0, y2: 6 }))));

  const step = niceStep(span / Math.max(plotW / 90, 1));
  for (let t = 0; t <= span + 1e-9; t += step) {
    const tx = x(t0 + t);
    svg.append(s("line", { class: "tick", x1: tx, y1: AXIS_H - 6, x2: tx, y2: height - PAD }));
    svg.append(s("text", { class: "tick-label", x: tx, y: AXIS_H - 10 }, `+${secs(t)}`));
  }
  if (!final) {
    const nx = x(now);
    svg.append(s("line", { class: "now", x1: nx, y1: AXIS_H - 6, x2: nx, y2: height - PAD }));
  }

  rows.forEach((row, i) => {
    const y = AXIS_H + i * ROW_H;
    if (row.more) {
      svg.append(s("text", { class: "row-label more", x: 26, y: y + 15 }, `… ${row.more} more items`));
      return;
    }
    const st = row.step;
    const state = st.state || "pending";
    const g = s("g", { class: `row st-${state}`, "data-step": st.id, "data-state": state });
    g.append(s("text", { class: "row-label", x: row.item ? 26 : 8, y: y + 15 }, truncate(st.id, (row.item ? 22 : 25) - (st.attempts > 1 ? 4 : 0))));
    const bars = barsOf(st, audit, now);
    const top = y + (ROW_H - BAR_H) / 2;
    for (const bar of bars) {
      const cls = bar.kind === "wait" ? "wait" : bar.failed ? "run failed-attempt" : "run";
      const minW = bar.kind === "wait" ? 1 : 2;
      g.append(s("rect", { class: cls, x: x(bar.from), y: top, width: Math.max(x(bar.to) - x(bar.from), minW), height: BAR_H, rx: bar.kind === "run" ? 2 : 0 }));
    }
    const total = (kind) => bars.filter((b) => b.kind === kind).reduce((sum, b) => sum + Math.max(b.to - b.from, 0), 0);
    const wait = bars.some((b) => b.kind === "wait") ? total("wait") : null;
    const run = bars.some((b) => b.kind === "run") ? total("run") : null;
    const words = [wait !== null ? `wait ${secs(wait)}` : null, run !== null ? `run ${secs(run)}` : null].filter(Boolean);
    const label = words.length ? words.join(" · ") : state;
    g.append(s("text", { class: "row-times", x: width - RIGHT_W + 14, y: y + 15 }, label));
    if (st.attempts > 1) g.append(s("text", { class: "row-attempts", x: LABEL_W - 8, y: y + 15 }, `×${st.attempts}`));
    g.append(s("title", {}, `${st.id} (${state}, ${st.attempts} attempt${st.attempts === 1 ? "" : "s"})\nwaiting: ${secs(wait)}\nrunning: ${secs(run)}${st.worker ? `\nworker: ${st.worker}` : ""}`));
    svg.append(g);
  });
  box.replaceChildren(svg);
}

/** The key the timeline's colours mean. */
export function timelineLegend() {
  return h("span", { class: "legend-timeline" },
    h("span", { class: "swatch wait" }), " waiting (in the queue, or a retry's backoff) ",
    h("span", { class: "swatch run" }), " run (colour: the step's state) ",
    h("span", { class: "swatch failed-attempt" }), " failed attempt");
}
