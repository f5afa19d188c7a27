// The timeline (a Gantt chart): one row per step on one clock that starts at submission.
// The pale hatched part of a bar is queue wait — from queued (its dependencies done,
// its message published) to started — and the solid part is run time, in the colour of
// the step's state. Bars of unfinished steps grow to "now" on every poll. For a retried
// step, started_at is its last attempt's: the wait then includes the earlier attempts.
import { h, s, secs, truncate } from "./dom.js";

const LABEL_W = 190;
const RIGHT_W = 150;
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

function times(step, now) {
  const queued = step.queued_at ?? null;
  const started = step.started_at ?? null;
  const ended = step.finished_at ?? null;
  const waitEnd = started ?? (queued !== null && ["queued", "retrying"].includes(step.state) ? now : null);
  const runEnd = started === null ? null : ended ?? (step.state === "running" ? now : started);
  return { queued, started, waitEnd, runEnd };
}

/** Draw ``wf``'s timeline into ``box``, with ``now`` (server seconds) for open bars. */
export function drawTimeline(box, wf, now) {
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
    g.append(s("text", { class: "row-label", x: row.item ? 26 : 8, y: y + 15 }, truncate(st.id, row.item ? 22 : 25)));
    const { queued, started, waitEnd, runEnd } = times(st, now);
    const wait = queued !== null && waitEnd !== null ? waitEnd - queued : null;
    const run = started !== null && runEnd !== null ? runEnd - started : null;
    const top = y + (ROW_H - BAR_H) / 2;
    if (wait !== null) {
      g.append(s("rect", { class: "wait", x: x(queued), y: top, width: Math.max(x(waitEnd) - x(queued), 1), height: BAR_H }));
    }
    if (run !== null) {
      g.append(s("rect", { class: "run", x: x(started), y: top, width: Math.max(x(runEnd) - x(started), 2), height: BAR_H, rx: 2 }));
    }
    const words = [wait !== null ? `wait ${secs(wait)}` : null, run !== null ? `run ${secs(run)}` : null].filter(Boolean);
    const label = words.length ? words.join(" · ") : state;
    g.append(s("text", { class: "row-times", x: width - RIGHT_W + 8, y: y + 15 }, label));
    g.append(s("title", {}, `${st.id} (${state}, attempt ${st.attempts})\nqueue wait: ${secs(wait)}\nrun: ${secs(run)}${st.worker ? `\nworker: ${st.worker}` : ""}`));
    svg.append(g);
  });
  box.replaceChildren(svg);
}

/** The key the timeline's colours mean. */
export function timelineLegend() {
  return h("span", { class: "legend-timeline" },
    h("span", { class: "swatch wait" }), " queue wait ",
    h("span", { class: "swatch run" }), " run (colour: the step's state)");
}
