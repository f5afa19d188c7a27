// The treadle dashboard: hash-routed views over the orchestrator's JSON API, each
// polled while it is shown. Every data call carries the bearer token the operator typed
// in; the token lives in sessionStorage, so it goes when the tab closes.
import { WORKFLOW_FINAL, WORKFLOW_STATES, STEP_STATES, badge, clock, h, secs, truncate } from "./dom.js";
import { drawGraph, shapeOf } from "./graph.js";
import { drawTimeline, timelineLegend } from "./timeline.js";

const TOKEN_KEY = "treadle.api-token";
const CLASSES = ["critical", "default", "bulk"];
const LIST_LIMIT = 100;

const $ = (id) => document.getElementById(id);
const view = $("view");

let token = sessionStorage.getItem(TOKEN_KEY);
// Bumped on every navigation and sign-out: a poll of a view no longer shown stops itself.
let generation = 0;
let skewS = 0;

class Unauthorized extends Error {}
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorText(res) {
  try {
    const body = await res.json();
    return body.message || res.statusText;
  } catch {
    return res.statusText;
  }
}

// Open bars on the timeline grow to the server's "now", not this browser's: the
// two clocks may differ by more than a step lasts.
function noteClock(res) {
  const date = Date.parse(res.headers.get("Date") || "");
  if (!Number.isNaN(date)) {
    const skew = (date - Date.now()) / 1000;
    skewS = Math.abs(skew) > 2 ? skew : 0;
  }
}
const serverNow = () => Date.now() / 1000 + skewS;

async function api(path, { method = "GET", text = false } = {}) {
  const headers = { Accept: text ? "application/x-ndjson" : "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  // Relative to the page, so a proxy that serves the API under a prefix keeps working.
  const res = await fetch(path, { method, headers, cache: "no-store" });
  noteClock(res);
  if (res.status === 401) throw new Unauthorized(await errorText(res));
  if (!res.ok) throw new ApiError(res.status, await errorText(res));
  return text ? res.text() : res.json();
}

const enc = encodeURIComponent;
// A dead letter's id is workflow/step/attempt: its slashes are part of the route.
const encPath = (id) => id.split("/").map(enc).join("/");

// -- sign-in ---------------------------------------------------------------------------

function showLogin(message) {
  generation += 1;
  view.replaceChildren();
  hideNotice();
  setLive(null);
  $("forget").hidden = true;
  $("login").hidden = false;
  const error = $("auth-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("token").focus();
}

function refused(serverSays) {
  return `401 Unauthorized: the API refused this token (${serverSays}). ` +
    "Enter the orchestrator's TREADLE_API_TOKEN.";
}

function signOut(message) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(message);
}

function enter() {
  $("login").hidden = true;
  $("forget").hidden = !token;
  route();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("token");
  token = input.value.trim();
  try {
    await api(`workflows?limit=1`);
  } catch (err) {
    token = null;
    showLogin(err instanceof Unauthorized ? refused(err.message) : `The API cannot be reached: ${err.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  input.value = "";
  enter();
});

$("forget").addEventListener("click", () => signOut(""));

// -- polling and status ------------------------------------------------------------------

function setLive(ok, text) {
  const live = $("live");
  live.className = ok === null ? "live" : ok ? "live ok" : "live down";
  live.textContent = ok === null ? "" : text;
}

function notice(kind, ...content) {
  const el = $("notice");
  el.className = `notice ${kind}`;
  el.replaceChildren(...content);
  el.hidden = false;
  delete el.dataset.fromPoll;
}

function hideNotice() {
  $("notice").hidden = true;
}

/** Run ``tick`` now and again after the delay it returns (or ``periodMs``) while the
 * view that started it is shown; the result's now() runs it at once. */
function poll(periodMs, tick) {
  const mine = generation;
  let timer = null;
  let running = false;
  const loop = async () => {
    clearTimeout(timer);
    if (mine !== generation || running) return;
    running = true;
    let delay = periodMs;
    try {
      delay = (await tick()) || periodMs;
      if (mine === generation) setLive(true, `live · ${clock(serverNow())}`);
      // An error a poll reported is over once a poll succeeds; an action's notice stays.
      if ($("notice").dataset.fromPoll) hideNotice();
    } catch (err) {
      if (mine !== generation) return;
      if (err instanceof Unauthorized) {
        signOut(refused(err.message));
        return;
      }
      if (err instanceof ApiError) {
        notice("bad", `${err.status}: ${err.message}`);
        $("notice").dataset.fromPoll = "yes";
        if (err.status === 404) return;
      } else {
        setLive(false, "the orchestrator does not answer; retrying");
      }
    } finally {
      running = false;
    }
    if (mine === generation) timer = setTimeout(loop, delay);
  };
  loop();
  return { now: loop };
}

// -- routing ---------------------------------------------------------------------------

function route() {
  generation += 1;
  hideNotice();
  const [path, query] = (location.hash || "#/workflows").slice(1).split("?");
  const parts = path.split("/").filter(Boolean);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === (parts[0] || "workflows"));
  }
  if (parts[0] === "dead-letters") showDeadLetters();
  else if (parts[0] === "workflows" && parts.length > 1) showWorkflow(decodeURIComponent(parts.slice(1).join("/")));
  else showList(new URLSearchParams(query || ""));
}

window.addEventListener("hashchange", () => {
  if ($("login").hidden) route();
});

// -- the workflow list -------------------------------------------------------------------

function select(name, options, chosen, anyLabel) {
  return h("select", { name, "aria-label": name },
    h("option", { value: "" }, anyLabel),
    options.map((o) => h("option", { value: o, selected: o === chosen }, o)));
}

function listRow(row) {
  const took = row.submitted_at && row.finished_at ? row.finished_at - row.submitted_at : null;
  return h("tr", { "data-workflow": row.id },
    h("td", {},
      h("a", { href: `#/workflows/${enc(row.id)}` }, row.name),
      h("div", { class: "id" }, row.id)),
    h("td", {}, badge(row.state)),
    h("td", {}, row.priority),
    h("td", {}, row.tenant || "—"),
    h("td", { class: "progress-cell" },
      h("progress", { class: `st-${row.state}`, max: row.steps_total || 1, value: row.steps_done }),
      ` ${row.steps_done}/${row.steps_total}`),
    h("td", {}, clock(row.submitted_at)),
    h("td", {}, took === null ? "—" : secs(took)));
}

function showList(query) {
  const chosen = { state: query.get("state") || "", priority: query.get("priority") || "", tenant: query.get("tenant") || "" };
  const body = h("tbody");
  const count = h("span", { class: "muted" });
  const form = h("form", { class: "filters", id: "filters" },
    select("state", WORKFLOW_STATES, chosen.state, "any state"),
    select("priority", CLASSES, chosen.priority, "any class"),
    h("input", { name: "tenant", placeholder: "tenant", value: chosen.tenant, spellcheck: "false" }),
    h("button", { type: "submit" }, "Filter"),
    count);
  const apply = (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [key, value] of new FormData(form)) if (String(value).trim()) next.set(key, String(value).trim());
    location.hash = `#/workflows${next.toString() ? `?${next}` : ""}`;
  };
  form.addEventListener("change", apply);
  form.addEventListener("submit", apply);
  view.replaceChildren(
    h("h1", {}, "Workflows"),
    form,
    h("table", { class: "grid", id: "workflows" },
      h("thead", {}, h("tr", {}, ["Workflow", "State", "Class", "Tenant", "Steps", "Submitted", "Took"].map((c) => h("th", {}, c)))),
      body));
  poll(2000, async () => {
    const params = new URLSearchParams({ limit: String(LIST_LIMIT) });
    for (const [key, value] of Object.entries(chosen)) if (value) params.set(key, value);
    const rows = await api(`workflows?${params}`);
    body.replaceChildren(...(rows.length ? rows.map(listRow) : [h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No workflows match."))]));
    count.textContent = rows.length >= LIST_LIMIT ? `newest ${LIST_LIMIT} shown` : `${rows.length} shown`;
  });
}

// -- one workflow --------------------------------------------------------------------------

function legend() {
  return h("div", { class: "legend" }, STEP_STATES.map((st) => badge(st)));
}

function header(wf) {
  const took = wf.submitted_at ? (wf.finished_at ?? serverNow()) - wf.submitted_at : null;
  const facts = [
    ["class", wf.priority], ["tenant", wf.tenant || "—"], ["steps", `${wf.steps_done}/${wf.steps_total} done`],
    ["submitted", clock(wf.submitted_at)], [wf.finished_at ? "took" : "running for", secs(took)],
  ];
  return [
    h("h1", {}, wf.name, " ", h("span", { id: "wf-state" }, badge(wf.state))),
    h("div", { class: "id" }, wf.id),
    h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
    wf.error ? h("p", { class: "error" }, wf.error) : null,
  ];
}

const AUDIT_SHOWN = new Set(["at", "from", "to", "prev", "step_id", "workflow_id", "attempt", "worker", "input_sha256", "output_sha256", "task"]);

function auditRow(record, i, t0) {
  const sums = Object.entries(record).filter(([k, v]) => k.endsWith("_sha256") && v).map(([k, v]) => {
    const what = k.replace(/_sha256$/, "");
    return h("span", { title: `${what} SHA-256 ${v}` }, `${{ input: "in", output: "out" }[what] || what} ${v.slice(0, 10)}`);
  });
  const rest = Object.entries(record).filter(([k]) => !AUDIT_SHOWN.has(k) && !k.endsWith("_sha256"));
  return h("tr", { "data-record": i },
    h("td", { class: "num" }, i + 1),
    h("td", {}, clock(record.at), h("div", { class: "muted" }, t0 ? `+${secs(record.at - t0)}` : "")),
    h("td", {}, record.step_id ?? h("em", {}, "workflow")),
    h("td", { class: "transition" }, record.to ? [record.from ? badge(record.from) : "·", " → ", badge(record.to)] : "·"),
    h("td", { class: "num" }, record.attempt ?? ""),
    h("td", {}, record.worker ?? ""),
    h("td", { class: "sums" }, sums, h("div", { class: "muted", title: `hash of the record before: ${record.prev || "(none: the first)"}` }, `prev ${(record.prev || "—").slice(0, 10)}`)),
    h("td", { class: "note" }, rest.map(([k, v]) => `${k}: ${truncate(typeof v === "string" ? v : JSON.stringify(v), 160)}`).join("; ")));
}

function verdictOf(check) {
  if (check.ok) return h("span", { class: "verdict ok" }, `✓ chain intact and order of execution respected · ${check.records} records`);
  return h("span", { class: "verdict bad" }, `✗ ${check.problems.length} problem(s): ${check.problems.join("; ")}`);
}

function showWorkflow(id) {
  const head = h("div", { class: "wf-head" });
  const graphBox = h("div", { class: "panel-body scroll", id: "graph" });
  const timelineBox = h("div", { class: "panel-body", id: "timeline" });
  const verdict = h("span", { id: "audit-verdict" });
  const auditBody = h("tbody");
  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/workflows" }, "← Workflows")),
    head,
    h("section", { class: "panel" }, h("h2", {}, "Graph"), legend(), graphBox),
    h("section", { class: "panel" }, h("h2", {}, "Timeline"), timelineLegend(), timelineBox),
    h("section", { class: "panel" }, h("h2", {}, "Audit trail"), verdict,
      h("div", { class: "panel-body audit-box" },
        h("table", { class: "grid audit", id: "audit" },
          h("thead", {}, h("tr", {}, ["#", "at", "step", "transition", "attempt", "worker", "checksums", "details"].map((c) => h("th", {}, c)))),
          auditBody))));

  let shape = null;
  let graph = null;
  let auditSeen = null;
  let auditAt = 0;
  let auditByStep = null;
  const refreshAudit = async (wf) => {
    const [lines, check] = await Promise.all([api(`workflows/${enc(id)}/audit`, { text: true }), api(`workflows/${enc(id)}/audit/check`)]);
    const records = lines.split("\n").filter(Boolean).map((line) => JSON.parse(line));
    auditByStep = new Map();
    const push = (step, r) => (auditByStep.get(step) || auditByStep.set(step, []).get(step)).push(r);
    for (const r of records) {
      if (r.step_id) push(r.step_id, r);
      // A batch queued at once is one record of the workflow's, naming its steps.
      else if (Array.isArray(r.queued)) for (const step of r.queued) push(step, { ...r, step_id: step, from: "pending", to: "queued" });
    }
    auditBody.replaceChildren(...records.map((r, i) => auditRow(r, i, wf.submitted_at)));
    verdict.replaceChildren(verdictOf(check));
  };
  poll(1000, async () => {
    const wf = await api(`workflows/${enc(id)}`);
    head.replaceChildren(...header(wf).filter(Boolean));
    const nextShape = shapeOf(wf);
    if (nextShape !== shape) {
      graph = drawGraph(graphBox, wf);
      shape = nextShape;
    } else {
      graph.update(wf);
    }
    const final = WORKFLOW_FINAL.has(wf.state);
    // The trail only grows when a state changes; a large one is not fetched every second.
    const seen = `${wf.state}|${wf.steps.map((st) => `${st.state}:${st.attempts}`).join(",")}`;
    if (seen !== auditSeen && (final || Date.now() - auditAt > 2000)) {
      await refreshAudit(wf);
      auditSeen = seen;
      auditAt = Date.now();
    }
    drawTimeline(timelineBox, wf, serverNow(), auditByStep);
    return final ? 3000 : 1000;
  });
}

// -- dead letters ---------------------------------------------------------------------------

function showDeadLetters() {
  const body = h("tbody");
  const count = h("span", { class: "muted", id: "dlq-count" });
  view.replaceChildren(
    h("h1", {}, "Dead letters ", count),
    h("p", { class: "muted" }, "Steps that failed for good, and messages no worker could read. Replaying a step re-runs it and its workflow goes on; fix the cause first."),
    h("table", { class: "grid", id: "dead-letters" },
      h("thead", {}, h("tr", {}, ["Filed", "Workflow / step", "Task", "Error", "Attempts", ""].map((c) => h("th", {}, c)))),
      body));

  let poller = null;
  const replay = async (letter, button) => {
    button.disabled = true;
    button.textContent = "Replaying…";
    try {
      const done = await api(`dead-letters/${encPath(letter.id)}/replay`, { method: "POST" });
      notice("good", `Replayed ${done.id}: workflow `, h("a", { href: `#/workflows/${enc(done.workflow_id)}` }, done.workflow_id), " goes on.");
      poller.now();
    } catch (err) {
      if (err instanceof Unauthorized) {
        signOut(refused(err.message));
        return;
      }
      notice("bad", `Replay of ${letter.id} failed: ${err.message}`);
      button.disabled = false;
      button.textContent = "Replay";
    }
  };
  const row = (letter) => {
    const action = letter.kind === "step"
      ? h("button", { type: "button", class: "replay", onclick: (e) => replay(letter, e.currentTarget) }, "Replay")
      : h("span", { class: "muted", title: "a message that could not be read cannot be run again, only purged" }, "unreadable message");
    return h("tr", { "data-letter": letter.id },
      h("td", {}, clock(letter.at)),
      h("td", {}, letter.workflow_id
        ? [h("a", { href: `#/workflows/${enc(letter.workflow_id)}` }, truncate(letter.workflow_id, 14)), ` / ${letter.step_id ?? "?"}`]
        : h("span", { class: "id" }, letter.id)),
      h("td", {}, letter.task ?? "—"),
      h("td", { class: "error-cell", title: letter.error ?? "" }, truncate(letter.error ?? "—", 140)),
      h("td", { class: "num" }, letter.attempts ?? "—"),
      h("td", {}, action));
  };
  poller = poll(3000, async () => {
    const letters = await api("dead-letters");
    count.textContent = `(${letters.length})`;
    body.replaceChildren(...(letters.length ? letters.map(row) : [h("tr", {}, h("td", { colspan: 6, class: "empty" }, "The dead-letter queue is empty."))]));
  });
}

// -- start --------------------------------------------------------------------------------

async function start() {
  if (token) {
    enter();
    return;
  }
  // An orchestrator run with auth off (local use only) needs no token: do not ask.
  try {
    await api("workflows?limit=1");
    enter();
  } catch {
    showLogin("");
  }
}

start();
