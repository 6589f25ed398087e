"""The labelling page served at /admin/review/: one queued input at a time, the model's top-2 guesses,
a key per label (1-9), s to skip. Plain HTML + JS, no external assets (the server may have no
internet); it calls /admin/review/queue and /admin/review/label with the browser's Basic credentials.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>kubetune review</title>
<link rel="icon" href="data:,">
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 10px 24px;
           display: flex; gap: 24px; align-items: baseline; }
  header h1 { font-size: 17px; margin: 0; }
  main { max-width: 860px; margin: 24px auto; padding: 0 16px; }
  .card { background: #fff; border-radius: 8px; padding: 20px 24px; box-shadow: 0 1px 3px #0002; }
  #text { font-size: 19px; margin: 4px 0 16px; white-space: pre-wrap; }
  .meta { color: #5b6475; font-size: 13px; }
  .guess { display: inline-block; margin-right: 14px; }
  .labels { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr));
            gap: 8px; margin-top: 16px; }
  button { font: inherit; text-align: left; padding: 8px 10px; border: 1px solid #c9ceda; border-radius: 6px;
           background: #fff; cursor: pointer; }
  button kbd { display: inline-block; min-width: 18px; font-weight: 700; color: #3050c0; }
  button.top1 { border-color: #3050c0; background: #eef2ff; }
  button.top2 { border-color: #8a9bd8; background: #f6f8ff; }
  button:focus { outline: 2px solid #3050c0; }
  #status { margin-top: 14px; min-height: 1.4em; color: #1f7a3f; }
  #status.error { color: #b3261e; }
  .help { margin-top: 18px; color: #5b6475; font-size: 13px; }
</style>
</head>
<body>
<header><h1>kubetune review</h1><span id="model"></span><span id="waiting"></span></header>
<main>
  <div class="card" id="card">
    <div class="meta" id="why"></div>
    <div id="text">Loading…</div>
    <div class="meta">Model's guesses: <span id="guesses"></span></div>
    <div class="labels" id="labels"></div>
    <div id="status" role="status"></div>
  </div>
  <p class="help">Keys: <kbd>1</kbd> to <kbd>9</kbd> pick a label · <kbd>s</kbd> skip ·
  <kbd>r</kbd> reload the queue. Labels go to the fresh dataset; the next retraining uses them
  (retraining.freshDataWeight).</p>
</main>
<script>
"use strict";
const params = new URLSearchParams(location.search);
const state = { model: params.get("model"), labels: [], items: [], current: null, busy: false };
const $ = (id) => document.getElementById(id);

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function load() {
  const query = new URLSearchParams({ limit: "100" });
  if (state.model) query.set("model", state.model);
  const response = await fetch("queue?" + query, { credentials: "same-origin" });
  const body = await response.json();
  if (!response.ok) { setStatus(body.error ? body.error.message : response.statusText, true); return; }
  state.model = body.model;
  state.labels = body.labels;
  state.items = body.data;
  $("model").textContent = body.model;
  $("waiting").textContent = body.waiting + " waiting";
  show();
}

function show() {
  const item = state.items[0] || null;
  state.current = item;
  const box = $("labels");
  box.replaceChildren();
  if (!item) {
    $("text").textContent = "Nothing to review.";
    $("guesses").textContent = "";
    $("why").textContent = "";
    return;
  }
  $("text").textContent = item.text;
  $("why").textContent = item.reasons.join(", ") + " · margin " + item.margin.toFixed(3) +
    (item.novelty === null ? "" : " · novelty " + item.novelty.toFixed(3)) + " · " + item.model;
  $("guesses").textContent = item.guesses
    .map((g) => g.label + " " + Math.round(g.probability * 100) + "%").join("  vs  ");
  state.labels.forEach((label, i) => {
    const button = document.createElement("button");
    button.dataset.label = label;
    if (item.guesses[0] && item.guesses[0].label === label) button.className = "top1";
    else if (item.guesses[1] && item.guesses[1].label === label) button.className = "top2";
    const key = document.createElement("kbd");
    key.textContent = i < 9 ? String(i + 1) : "";
    button.append(key, " " + label);
    button.addEventListener("click", () => decide(label));
    box.append(button);
  });
}

async function decide(label) {
  const item = state.current;
  if (!item || state.busy) return;
  state.busy = true;
  const payload = label === null ? { model: state.model, id: item.id, skip: true }
                                 : { model: state.model, id: item.id, label: label };
  try {
    const response = await fetch("label", {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json" }, body: JSON.stringify(payload),
    });
    const body = await response.json();
    if (!response.ok) { setStatus(body.error ? body.error.message : response.statusText, true); return; }
    setStatus(label === null ? "Skipped." : "Labelled \\u201c" + label + "\\u201d (" + body.freshFile + ").");
    state.items.shift();
    $("waiting").textContent = state.items.length + " waiting";
    if (state.items.length === 0) await load(); else show();
  } finally {
    state.busy = false;
  }
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "s") { decide(null); event.preventDefault(); return; }
  if (event.key === "r") { load(); event.preventDefault(); return; }
  const n = Number(event.key);
  if (Number.isInteger(n) && n >= 1 && n <= 9 && n <= state.labels.length) {
    decide(state.labels[n - 1]);
    event.preventDefault();
  }
});
load();
</script>
</body>
</html>
"""
