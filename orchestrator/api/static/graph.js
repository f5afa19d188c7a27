// A workflow's graph as SVG: steps in columns by depth (the longest path from a first
// step), each column ordered to keep edges short. The drawing is laid out once per
// graph shape and recoloured in place on every poll, so the picture does not jump
// while the workflow runs. A fan-out's items are folded into their step as a bar of
// item states: a 2,000-item fan-out stays one node.
import { s } from "./dom.js";

const NODE_W = 184;
const NODE_H = 46;
const ITEMS_H = 16;
const GAP_X = 54;
const GAP_Y = 16;
const PAD = 14;

function model(wf) {
  const byId = new Map();
  const nodes = [];
  for (const step of wf.steps) {
    if (step.item_of) continue;
    const node = { id: step.id, step, items: [], deps: [], kids: [], rank: 0, pos: 0 };
    byId.set(step.id, node);
    nodes.push(node);
  }
  const owner = new Map();
  for (const step of wf.steps) {
    const parent = step.item_of && byId.get(step.item_of);
    if (!parent) continue;
    parent.items.push(step);
    owner.set(step.id, parent.id);
  }
  const edges = [];
  for (const node of nodes) {
    // A compensation of an item depends on the item: draw it from the fan-out.
    const deps = new Set((node.step.after || []).map((d) => owner.get(d) || d));
    for (const dep of deps) {
      const from = byId.get(dep);
      if (!from || from === node) continue;
      edges.push({ from, to: node });
      node.deps.push(from);
      from.kids.push(node);
    }
    node.h = node.items.length ? NODE_H + ITEMS_H : NODE_H;
  }
  return { nodes, edges };
}

function rankOf(node, visiting = new Set()) {
  if (node.ranked) return node.rank;
  visiting.add(node);
  for (const dep of node.deps) {
    if (!visiting.has(dep)) node.rank = Math.max(node.rank, rankOf(dep, visiting) + 1);
  }
  visiting.delete(node);
  node.ranked = true;
  return node.rank;
}

function centre(layer) {
  layer.forEach((node, i) => { node.pos = i - (layer.length - 1) / 2; });
}

function mean(values, fallback) {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : fallback;
}

function layout(nodes) {
  for (const node of nodes) rankOf(node);
  const layers = [];
  for (const node of nodes) (layers[node.rank] ||= []).push(node);
  layers.forEach(centre);
  // Barycentre sweeps, down then up: each node moves towards the mean place of its
  // neighbours in the columns already ordered. Stable sorting keeps declaration order
  // among equals, so a plain chain or fan stays as written.
  for (let round = 0; round < 4; round += 1) {
    for (const layer of layers.slice(1)) {
      layer.sort((a, b) => mean(a.deps.map((d) => d.pos), a.pos) - mean(b.deps.map((d) => d.pos), b.pos));
      centre(layer);
    }
    for (const layer of layers.slice(0, -1).reverse()) {
      layer.sort((a, b) => mean(a.kids.map((k) => k.pos), a.pos) - mean(b.kids.map((k) => k.pos), b.pos));
      centre(layer);
    }
  }
  const heights = layers.map((layer) => layer.reduce((sum, n) => sum + n.h, 0) + GAP_Y * (layer.length - 1));
  const tallest = Math.max(...heights, NODE_H);
  layers.forEach((layer, rank) => {
    let y = PAD + (tallest - heights[rank]) / 2;
    for (const node of layer) {
      node.x = PAD + rank * (NODE_W + GAP_X);
      node.y = y;
      y += node.h + GAP_Y;
    }
  });
  return { width: PAD * 2 + layers.length * NODE_W + (layers.length - 1) * GAP_X, height: PAD * 2 + tallest };
}

function tooltip(step, items) {
  const lines = [step.id, `task: ${step.task ?? "—"}`, `state: ${step.state ?? "—"}`, `attempts: ${step.attempts}`];
  if (step.worker) lines.push(`worker: ${step.worker}`);
  if (items.length) lines.push(`items: ${items.length}`);
  if (step.waiting_for) lines.push(`waiting for: ${step.waiting_for}`);
  if (step.promoted_to) lines.push(`promoted to: ${step.promoted_to}`);
  if (step.skip_reason) lines.push(`skipped: ${step.skip_reason}`);
  if (step.error) lines.push(`error: ${step.error}`);
  return lines.join("\n");
}

function itemBar(items) {
  const counts = new Map();
  for (const item of items) counts.set(item.state, (counts.get(item.state) || 0) + 1);
  const done = counts.get("succeeded") || 0;
  const barW = NODE_W - 24;
  const group = s("g", { class: "items", transform: `translate(12, ${NODE_H - 4})` });
  let x = 0;
  for (const [state, n] of counts) {
    const w = (n / items.length) * barW;
    group.append(s("rect", { class: `item st-${state}`, x: x.toFixed(1), y: 0, width: Math.max(w, 1).toFixed(1), height: 6 }, s("title", {}, `${n} ${state}`)));
    x += w;
  }
  group.append(s("text", { class: "items-label", x: 0, y: 16 }, `${done}/${items.length} items done`));
  return group;
}

// Text is cut to the box by measuring it, not by counting characters: fonts differ.
function fit(text, tail, full, maxWidth) {
  tail.textContent = full;
  let keep = full.length;
  while (keep > 0 && text.getComputedTextLength() > maxWidth) {
    keep -= 1;
    tail.textContent = keep ? `${full.slice(0, keep)}…` : "";
  }
}

function paint(view, step, items) {
  const state = step.state || "pending";
  view.g.setAttribute("class", `node st-${state}${step.id.startsWith("compensate:") ? " compensation" : ""}`);
  view.g.setAttribute("data-state", state);
  view.title.textContent = tooltip(step, items);
  const key = `${state}:${step.attempts}`;
  if (key !== view.painted) {
    // Measuring is slow-ish: only when the words change, not on every poll.
    view.painted = key;
    view.state.textContent = state;
    view.extra.textContent = step.attempts > 1 ? ` · attempt ${step.attempts}` : "";
    fit(view.sub, view.task, ` · ${step.task ?? ""}`, NODE_W - 22);
  }
  view.items?.remove();
  view.items = items.length ? itemBar(items) : null;
  if (view.items) view.g.append(view.items);
}

/** Draw ``wf``'s graph into ``box``; the result's update(wf) recolours it in place. */
export function drawGraph(box, wf) {
  const { nodes, edges } = model(wf);
  const { width, height } = layout(nodes);
  const svg = s("svg", { class: "graph", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `graph of ${wf.name}` });
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" }, s("path", { class: "arrowhead", d: "M0,0 L10,5 L0,10 z" }))));
  for (const { from, to } of edges) {
    const x1 = from.x + NODE_W;
    const y1 = from.y + NODE_H / 2;
    const x2 = to.x - 2;
    const y2 = to.y + NODE_H / 2;
    const bend = Math.max((x2 - x1) / 2, 20);
    svg.append(s("path", { class: "edge", d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" }));
  }
  const views = new Map();
  for (const node of nodes) {
    const title = s("title");
    const state = s("tspan", { class: "state-word" });
    const extra = s("tspan");
    const task = s("tspan", { class: "task" });
    const id = s("text", { class: "step-id", x: 14, y: 18 });
    const sub = s("text", { class: "step-sub", x: 14, y: 35 }, state, extra, task);
    const g = s("g", { transform: `translate(${node.x}, ${node.y})`, "data-step": node.id },
      title,
      s("rect", { class: "box", width: NODE_W, height: node.h, rx: 6 }),
      s("rect", { class: "band", width: 6, height: node.h, rx: 3 }),
      id, sub);
    views.set(node.id, { g, title, id, sub, state, extra, task, items: null, painted: null });
    svg.append(g);
  }
  // Attached first: text can only be measured in the document.
  box.replaceChildren(svg);
  for (const node of nodes) {
    const view = views.get(node.id);
    fit(view.id, view.id, node.id, NODE_W - 22);
    paint(view, node.step, node.items);
  }
  return {
    update(next) {
      const items = new Map();
      for (const step of next.steps) if (step.item_of) (items.get(step.item_of) || items.set(step.item_of, []).get(step.item_of)).push(step);
      for (const step of next.steps) {
        const view = views.get(step.id);
        if (view) paint(view, step, items.get(step.id) || []);
      }
    },
  };
}

/** What decides the layout: redraw from scratch only when this changes. */
export function shapeOf(wf) {
  return wf.steps.filter((st) => !st.item_of).map((st) => `${st.id}<${(st.after || []).join(",")}>${wf.steps.some((i) => i.item_of === st.id) ? "*" : ""}`).join(";");
}
