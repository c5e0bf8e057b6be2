// The xatm console: a single page over the coordinator's REST admin API. The bearer token is
// kept in sessionStorage (this tab only) and sent with every call; every value from the server
// is put into the page as text, never as markup.
"use strict";

const API = "/admin/v1";
const TX = API + "/xa-transaction";
const STATUSES = ["Created", "Preparing", "Prepared", "Committing", "Committed", "Rollingback",
  "Rolledback", "MarkedRollback", "HeuristicallyCompleted"];
// In-doubt: a decision taken (or being taken) that not every branch has acknowledged.
const IN_DOUBT = ["Prepared", "Committing", "Rollingback"];
const HEURISTIC = ["HeuristicallyCompleted"];
const ACTIONS = {
  forceRollback: { button: "force-rollback", verb: "DELETE", label: "Force rollback" },
  forceCommit: { button: "force-commit", verb: "PUT", label: "Force commit" },
  forget: { button: "forget", verb: "POST", label: "Forget" },
};

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem("xatm-token");

// ------------------------------------------------------------------ calls

class ApiError extends Error {
  constructor(status, message, traceId) {
    super(message);
    this.status = status;
    this.traceId = traceId;
  }
}

async function call(method, path, body, bearer) {
  const headers = { Authorization: "Bearer " + (bearer || token()) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await resp.json().catch(() => ({ error: resp.statusText }));
  if (resp.status === 401 && !bearer) {
    signOut("Your token was refused: " + data.error);
  }
  if (!resp.ok) throw new ApiError(resp.status, data.error || resp.statusText, data.traceId);
  data.httpStatus = resp.status;
  return data;
}

// ------------------------------------------------------------------ helpers

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) {
    const td = el("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.append(td);
  }
  return tr;
}

function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren(...rows);
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", empty, { colspan: String(columns), class: "empty" }));
    tbody.append(tr);
  }
}

function flash(text, isError) {
  const box = $("flash");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = !text;
}

function showPage(name) {
  for (const page of document.querySelectorAll(".page")) page.hidden = page.id !== "page-" + name;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.id === "nav-" + name || (name === "transaction" && link.id === "nav-transactions"));
  }
}

function params() {
  const hash = location.hash.slice(1);
  const at = hash.indexOf("?");
  return { path: at < 0 ? hash : hash.slice(0, at), query: new URLSearchParams(at < 0 ? "" : hash.slice(at + 1)) };
}

// Views: every page shown is a view with its own number. A view's answers are put on the page
// only while it is still the latest one, so a slow answer to an earlier view (the whole list
// asked before the in-doubt filter was chosen, say) never draws over a later one. When the
// latest view is drawn, <body data-shown> holds the address it was started for ("#" for the
// sign-in page, whatever the address); it is empty while one is loading.
let view = 0;
let viewAddress = "";

function newView(address) {
  view += 1;
  viewAddress = address || location.hash || "#";
  document.body.dataset.shown = "";
  return view;
}

function drawn(mine) {
  if (mine === view) document.body.dataset.shown = viewAddress;
}

// The answer to `request` for view `mine`; null when a later view has started meanwhile, or when
// the call failed (said in the flash bar: `failure` gives the words for the error).
async function answerFor(mine, request, failure) {
  try {
    const answer = await request;
    return mine === view ? answer : null;
  } catch (err) {
    if (mine === view) {
      flash(failure(err), true);
      drawn(mine);
    }
    return null;
  }
}

function askConfirmation(text) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-reason").value = "";
    dialog.onclose = () => resolve(dialog.returnValue === "ok" ? { reason: $("confirm-reason").value } : null);
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

// ------------------------------------------------------------------ sign-in

async function signIn(event) {
  event.preventDefault();
  const offered = $("token").value.trim();
  const error = $("signin-error");
  error.hidden = true;
  try {
    await call("GET", TX + "?limit=1", undefined, offered);
  } catch (err) {
    error.textContent = "Sign-in refused: " + err.message;
    error.hidden = false;
    return;
  }
  sessionStorage.setItem("xatm-token", offered);
  $("token").value = "";
  // A changed address routes by its hashchange event; routing here as well would load twice.
  if (location.hash === "#/transactions") route();
  else location.hash = "#/transactions";
}

function signOut(message) {
  const mine = newView("#");
  sessionStorage.removeItem("xatm-token");
  stopCharts();
  // Nothing read with the token stays in the page, hidden or not.
  clearTransaction();
  for (const table of ["tx-table", "audit-table", "approval-table"]) $(table).tBodies[0].replaceChildren();
  $("nav").hidden = true;
  showPage("signin");
  const error = $("signin-error");
  error.textContent = message || "";
  error.hidden = !message;
  drawn(mine);
}

// ------------------------------------------------------------------ transactions

let pages = [""];  // page tokens seen, for "Previous"

function filterQuery(query) {
  const wanted = new URLSearchParams();
  const statuses = query.get("status");
  if (statuses) wanted.set("status", statuses);
  const maxAge = Number(query.get("maxAge"));
  if (maxAge > 0) wanted.set("begin", String(Math.floor(Date.now() / 1000 - maxAge)));
  wanted.set("limit", query.get("limit") || "50");
  if (query.get("page")) wanted.set("pageToken", query.get("page"));
  return wanted;
}

function syncFilters(query) {
  const chosen = new Set((query.get("status") || "").split(",").filter(Boolean));
  for (const box of document.querySelectorAll("#status-filter input")) box.checked = chosen.has(box.value);
  $("max-age").value = query.get("maxAge") || "";
  $("min-age").value = query.get("minAge") || "";
  $("limit").value = query.get("limit") || "50";
}

function filtersToHash(page) {
  const query = new URLSearchParams();
  const chosen = [...document.querySelectorAll("#status-filter input:checked")].map((box) => box.value);
  if (chosen.length) query.set("status", chosen.join(","));
  if ($("max-age").value) query.set("maxAge", $("max-age").value);
  if ($("min-age").value) query.set("minAge", $("min-age").value);
  query.set("limit", $("limit").value || "50");
  if (page) query.set("page", page);
  location.hash = "#/transactions?" + query.toString();
}

function preset(statuses) {
  for (const box of document.querySelectorAll("#status-filter input")) box.checked = statuses.includes(box.value);
  pages = [""];
  filtersToHash("");
}

async function showTransactions(query) {
  const mine = newView();
  showPage("transactions");
  syncFilters(query);
  const body = $("tx-table").tBodies[0];
  const listed = await answerFor(mine, call("GET", TX + "?" + filterQuery(query).toString()),
    (err) => "Cannot list transactions: " + err.message);
  if (!listed) return;
  const minAge = Number(query.get("minAge")) || 0;
  const shown = listed.transactions.filter((tx) => tx.ageSeconds >= minAge);
  fill(body, shown.map((tx) => {
    const link = el("a", tx.txid, { href: "#/tx/" + encodeURIComponent(tx.txid), class: "tx-link" });
    return row([link, tx.status, tx.decision, tx.ageSeconds.toFixed(1), tx.branches.length, tx.begunAt]);
  }), "No transactions match.", 6);
  const page = query.get("page") || "";
  const at = pages.indexOf(page);
  if (at < 0) pages.push(page);
  $("prev-page").disabled = !page;
  $("next-page").disabled = !listed.nextPageToken;
  $("next-page").dataset.token = listed.nextPageToken || "";
  $("page-info").textContent = `${shown.length} shown`;
  drawn(mine);
}

// ------------------------------------------------------------------ one transaction

function summaryRows(tx) {
  const rows = [
    ["status", tx.status], ["decision", tx.decision || "none yet"], ["begun", tx.begunAt],
    ["age", tx.ageSeconds.toFixed(1) + " s"], ["timeout", tx.timeoutMs + " ms"], ["deadline", tx.deadline],
    ["completed", tx.completedAt || "not yet"], ["one-phase", tx.onePhase ? "yes" : "no"],
    ["recovered from the log", tx.recovered ? "yes" : "no"],
  ];
  if (tx.rollbackCode) rows.push(["rollback cause", `${tx.rollbackCode} ${tx.rollbackReason || ""}`]);
  const nodes = [];
  for (const [name, value] of rows) nodes.push(el("dt", name), el("dd", value === null ? "" : value));
  return nodes;
}

// The transaction page emptied: no summary, branches or history, every action disabled.
function clearTransaction() {
  $("tx-summary").replaceChildren();
  $("branch-table").tBodies[0].replaceChildren();
  $("history").replaceChildren();
  for (const action of Object.values(ACTIONS)) {
    $(action.button).disabled = true;
    $(action.button + "-reason").textContent = "";
  }
}

// Draws the transaction page; returns its view number.
async function showTransaction(gtrid) {
  const mine = newView();
  showPage("transaction");
  $("tx-id").textContent = gtrid;
  const both = await answerFor(mine, Promise.all([
    call("GET", `${TX}/${encodeURIComponent(gtrid)}`),
    call("GET", `${TX}/${encodeURIComponent(gtrid)}/history`),
  ]), (err) => {
    clearTransaction();  // nothing of the one shown before may stay under this one's name
    return `Cannot show ${gtrid}: ${err.message}`;
  });
  if (!both) return mine;
  const [tx, history] = both;
  $("tx-summary").replaceChildren(...summaryRows(tx));
  fill($("branch-table").tBodies[0], tx.branches.map((b) => row([
    b.branchId, b.rmId, b.url, b.status, b.returnCode, b.phase, b.reason, b.attempts, b.nextRetry,
  ])), "No branch enlisted.", 9);
  const historyBox = $("history");
  historyBox.replaceChildren();
  for (const [bqual, answers] of Object.entries(history.branches)) {
    const block = el("div", null, { class: "history-branch" });
    block.append(el("h3", "branch " + bqual));
    const table = el("table", null, { class: "history-table", "data-bqual": bqual });
    const head = table.createTHead().insertRow();
    for (const name of ["logged", "phase", "XA code", "branch status", "reason"]) head.append(el("th", name));
    const tbody = table.createTBody();
    fill(tbody, answers.map((a) => row([
      a.time + (a.fromSnapshot ? " (checkpoint)" : ""), a.phase, a.code, a.branchStatus, a.reason,
    ])), "No answer yet.", 5);
    block.append(table);
    historyBox.append(block);
  }
  for (const [name, action] of Object.entries(ACTIONS)) {
    const rule = history.actions[name];
    const button = $(action.button);
    button.disabled = !rule.allowed;
    button.title = rule.allowed ? "" : rule.reason;
    $(action.button + "-reason").textContent = rule.allowed
      ? (rule.needsApproval ? "needs a second operator's approval" : "")
      : rule.reason;
    button.onclick = () => force(tx.txid, name, rule.needsApproval);
  }
  drawn(mine);
  return mine;
}

function outcome(text, isError) {
  const box = $("outcome");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = false;
}

async function force(gtrid, name, needsApproval) {
  const action = ACTIONS[name];
  const what = `${action.label} of ${gtrid}`;
  const mine = view;  // the page the action is asked from (moving elsewhere cancels the dialog)
  const note = needsApproval ? " It will be filed as a request for another operator to approve." : "";
  const answer = await askConfirmation(`${action.label} transaction ${gtrid}? This is audited.${note}`);
  if (!answer || mine !== view) return;
  let done;
  try {
    if (name === "forget") {
      done = await call("POST", TX + "/bulk", { txids: [gtrid] });
    } else {
      const reason = answer.reason ? "?reason=" + encodeURIComponent(answer.reason) : "";
      done = await call(action.verb, `${TX}/${encodeURIComponent(gtrid)}${reason}`);
    }
  } catch (err) {
    said(mine, what, `refused (${err.status}): ${err.message}`, true);
    return;
  }
  let text = `Outcome: ${done.status}; transaction ${done.transactionStatus} (trace ${done.traceId}).`;
  let failed = false;
  if (done.httpStatus === 202) {
    text = `Filed as approval request ${done.approval.id}; another operator must approve it.`;
  } else if (name === "forget") {
    const result = done.results[0];
    [text, failed] = [result.forgotten ? "Forgotten." : `Not forgotten: ${result.error}`, !result.forgotten];
  }
  // Moved on meanwhile: the answer is said, and the page the operator is on stays.
  said(mine === view ? await showTransaction(gtrid) : mine, what, text, failed);
}

// An action's answer, naming ``what`` it answers: under the transaction's buttons while its page
// is the view ``mine``, else in the message bar of whatever page is shown now.
function said(mine, what, text, isError) {
  if (mine === view) outcome(`${what}: ${text}`, isError);
  else flash(`${what}: ${text}`, isError);
}

// ------------------------------------------------------------------ approvals

async function showApprovals() {
  const mine = newView();
  showPage("approvals");
  const all = $("approvals-all").checked ? "?all=true" : "";
  const listed = await answerFor(mine, call("GET", API + "/approvals" + all),
    (err) => "Cannot list approval requests: " + err.message);
  if (!listed) return;
  fill($("approval-table").tBodies[0], listed.approvals.map((a) => {
    const buttons = el("span");
    if (a.state === "pending") {
      for (const [verb, label] of [["approve", "Approve"], ["reject", "Reject"]]) {
        const button = el("button", label, { type: "button", class: verb === "approve" ? "danger" : "", "data-request": a.id });
        button.id = `${verb}-${a.id}`;
        button.onclick = () => decide(a, verb);
        buttons.append(button, " ");
      }
    }
    return row([a.id, a.action, a.txids.join(" "), a.requestedBy, a.reason, a.requestTraceId, a.expiresAt,
      a.state, a.decidedBy, a.result, buttons]);
  }), "No requests.", 11);
  drawn(mine);
}

async function decide(approval, verb) {
  const mine = view;  // the page the decision is asked from (moving elsewhere cancels the dialog)
  const answer = await askConfirmation(
    `${verb === "approve" ? "Approve and carry out" : "Reject"} request ${approval.id} by ${approval.requestedBy}: ` +
    `${approval.action} ${approval.txids.join(" ")}?`);
  if (!answer || mine !== view) return;
  try {
    const done = await call("POST", `${API}/approvals/${encodeURIComponent(approval.id)}/${verb}`, { reason: answer.reason });
    const what = done.completion ? `: ${done.completion.status}, transaction ${done.completion.transactionStatus}` : "";
    flash(`Request ${approval.id} ${done.approval.state}${what}.`, false);
  } catch (err) {
    flash(`Request ${approval.id} not ${verb}d (${err.status}): ${err.message}`, true);
  }
  if (mine === view) await showApprovals();  // the operator may have moved on meanwhile
}

// ------------------------------------------------------------------ audit

async function showAudit(query) {
  const mine = newView();
  showPage("audit");
  const page = query.get("page") || "";
  const listed = await answerFor(mine, call("GET", `${API}/audit?limit=100${page ? "&pageToken=" + page : ""}`),
    (err) => "Cannot read the audit log: " + err.message);
  if (!listed) return;
  const records = [...listed.records].reverse();  // newest first on screen
  fill($("audit-table").tBodies[0], records.map((r) => row([
    r.time, r.actor, r.action, r.txid, r.result, r.detail, r.traceId, r.peer,
  ])), "No operator action recorded.", 8);
  $("audit-older").disabled = !listed.nextPageToken;
  $("audit-older").onclick = () => { location.hash = "#/audit?page=" + listed.nextPageToken; };
  $("audit-newer").disabled = !page;
  $("audit-newer").onclick = () => { location.hash = "#/audit"; };
  drawn(mine);
}

// ------------------------------------------------------------------ charts

const POINTS = 60;
let chartTimer = null;
let previous = null;
const series = { throughput: [], outcomes: {}, inDoubt: [], latency: {} };

function parseMetrics(text) {
  // Prometheus text format: name{label="value",...} number
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

function sum(samples, name, pick) {
  const out = {};
  for (const s of samples) {
    if (s.name !== name) continue;
    const key = pick ? s.labels[pick] : "";
    out[key] = (out[key] || 0) + s.value;
  }
  return out;
}

function push(list, value) {
  list.push(value);
  if (list.length > POINTS) list.shift();
}

function draw(svg, lines) {
  const width = 400, height = 160, left = 34, bottom = 14;
  const values = Object.values(lines).flat().filter(Number.isFinite);
  const peak = Math.max(0, ...values);
  const top = peak > 0 ? peak * 1.1 : 1;
  const nodes = [];
  nodes.push(el("line", null, { x1: left, y1: height - bottom, x2: width, y2: height - bottom, stroke: "#bbb" }));
  nodes.push(el("text", top.toPrecision(3), { x: 2, y: 10 }), el("text", "0", { x: 2, y: height - bottom }));
  const colours = ["#2455a4", "#1e6b35", "#b3261e", "#8a5a00", "#6b2fa0", "#00727a"];
  Object.entries(lines).forEach(([name, points], i) => {
    const coords = points.map((v, j) => {
      const x = left + (j * (width - left)) / (POINTS - 1);
      const y = height - bottom - ((Number.isFinite(v) ? v : 0) / top) * (height - bottom - 12);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    const colour = colours[i % colours.length];
    nodes.push(el("polyline", null, { points: coords.join(" "), fill: "none", stroke: colour, "stroke-width": "1.5" }));
    const last = points.length ? points[points.length - 1] : 0;
    nodes.push(el("text", `${name || "all"} ${Number.isFinite(last) ? last.toPrecision(3) : "-"}`,
      { x: left + 4 + 90 * i, y: height - 1, fill: colour }));
  });
  svg.replaceChildren(...nodes.map((node) => {
    const svgNode = document.createElementNS("http://www.w3.org/2000/svg", node.tagName.toLowerCase());
    for (const attr of node.attributes) svgNode.setAttribute(attr.name, attr.value);
    svgNode.textContent = node.textContent;
    return svgNode;
  }));
}

async function sampleMetrics() {
  let text;
  try {
    const resp = await fetch("/metrics");
    text = await resp.text();
  } catch (err) {
    flash("Cannot read /metrics: " + err.message, true);
    return;
  }
  const samples = parseMetrics(text);
  const now = {
    at: performance.now() / 1000,
    started: sum(samples, "xatm_transactions_started_total")[""] || 0,
    completed: sum(samples, "xatm_transactions_completed_total", "outcome"),
    inDoubt: sum(samples, "xatm_in_doubt_branches")[""] || 0,
    phaseSum: sum(samples, "xatm_phase_duration_seconds_sum", "phase"),
    phaseCount: sum(samples, "xatm_phase_duration_seconds_count", "phase"),
  };
  push(series.inDoubt, now.inDoubt);
  if (previous) {
    const span = Math.max(now.at - previous.at, 1e-3);
    push(series.throughput, (now.started - previous.started) / span);
    for (const [outcomeName, total] of Object.entries(now.completed)) {
      series.outcomes[outcomeName] = series.outcomes[outcomeName] || [];
      push(series.outcomes[outcomeName], (total - (previous.completed[outcomeName] || 0)) / span);
    }
    for (const [phase, total] of Object.entries(now.phaseSum)) {
      const calls = now.phaseCount[phase] - (previous.phaseCount[phase] || 0);
      series.latency[phase] = series.latency[phase] || [];
      push(series.latency[phase], calls > 0 ? (1000 * (total - (previous.phaseSum[phase] || 0))) / calls : NaN);
    }
  }
  previous = now;
  draw($("chart-throughput"), { begun: series.throughput });
  draw($("chart-outcomes"), series.outcomes);
  draw($("chart-in-doubt"), { branches: series.inDoubt });
  draw($("chart-latency"), series.latency);
}

function startCharts() {
  drawn(newView());  // the charts draw as samples come; the page itself is there at once
  showPage("charts");
  if (chartTimer === null) {
    sampleMetrics();
    chartTimer = setInterval(sampleMetrics, 2000);
  }
}

function stopCharts() {
  if (chartTimer !== null) clearInterval(chartTimer);
  chartTimer = null;
}

// ------------------------------------------------------------------ routing

function route() {
  const dialog = $("confirm");
  if (dialog.open) dialog.close();  // a question asked on the page left is not answered on another
  flash("");
  $("outcome").hidden = true;
  if (!token()) {
    signOut();
    return;
  }
  $("nav").hidden = false;
  const { path, query } = params();
  if (path !== "/charts") stopCharts();
  if (path.startsWith("/tx/")) showTransaction(decodeURIComponent(path.slice(4)));
  else if (path === "/approvals") showApprovals();
  else if (path === "/audit") showAudit(query);
  else if (path === "/charts") startCharts();
  else showTransactions(query);
}

function setUp() {
  const statusBox = $("status-filter");
  for (const status of STATUSES) {
    const label = el("label");
    const box = el("input", null, { type: "checkbox", value: status, id: "status-" + status });
    label.append(box, " " + status);
    statusBox.append(label);
  }
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => { location.hash = ""; signOut(); });
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); pages = [""]; filtersToHash(""); });
  $("preset-in-doubt").addEventListener("click", () => preset(IN_DOUBT));
  $("preset-heuristic").addEventListener("click", () => preset(HEURISTIC));
  $("preset-clear").addEventListener("click", () => preset([]));
  $("next-page").addEventListener("click", () => filtersToHash($("next-page").dataset.token));
  $("prev-page").addEventListener("click", () => {
    const current = params().query.get("page") || "";
    const at = pages.indexOf(current);
    filtersToHash(at > 0 ? pages[at - 1] : "");
  });
  $("approvals-all").addEventListener("change", showApprovals);
  window.addEventListener("hashchange", route);
  route();
}

document.addEventListener("DOMContentLoaded", setUp);
