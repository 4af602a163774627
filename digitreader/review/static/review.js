// digitreader review page: keyboard-first labelling. No framework; talks to /api/* with the
// session's CSRF token in the X-CSRF-Token header.
(function () {
  "use strict";
  const root = document.getElementById("review");
  if (!root) return;
  const mode = root.dataset.mode;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const data = JSON.parse(document.getElementById("queue-data").textContent);
  const query = window.location.search;
  const items = data.items;            // each gets .done = label text once labelled here
  let idx = 0;
  // Keys are queued and run one after the other: fast typing never loses a label.
  let chain = Promise.resolve();
  const enqueue = (fn) => { chain = chain.then(fn).catch((e) => status(String(e.message || e), true)); };
  const $ = (id) => document.getElementById(id);

  function labelText(k) { return k === null || k === 10 ? "x" : String(k); }
  // The model's answer as the page shows it (what Enter and the grid's A accept): x for a blank cell
  // or a digit the model takes for no digit (top-1 class 10), else its best digit.
  function modelAnswer(it) { return it.non_digit || it.label === null ? "x" : String(it.label); }
  // The digit's label as this page last knew it (null: blank), sent as `seen`: the server refuses
  // (409) a label for a digit someone changed since, instead of overwriting their correction.
  function seenOf(it) { return it.seen !== undefined ? it.seen : it.label; }

  function setCounts(c) {
    if (!c) return;
    $("left").textContent = c.left;
    $("reviewed").textContent = c.reviewed;
    $("docs-left").textContent = c.documents_left;
  }

  function status(msg, bad) {
    const s = $("status");
    s.textContent = msg;
    s.className = "status" + (bad ? " bad" : "");
  }

  async function post(url, body) {
    const r = await fetch(url + query, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    const j = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) {
      const e = new Error(j.error || r.statusText);
      e.status = r.status;
      e.body = j;
      throw e;
    }
    return j;
  }

  async function refill() {
    // Everything on screen is labelled: ask the server for what is left.
    const r = await fetch("/api/queue" + (query ? query + "&" : "?") + "limit=" + (mode === "grid" ? 48 : 200),
                          { credentials: "same-origin" });
    const j = await r.json();
    setCounts(j.counts);
    return j.items;
  }

  function nextOpen(from) {
    for (let i = from; i < items.length; i++) if (!items[i].done) return i;
    for (let i = 0; i < from && i < items.length; i++) if (!items[i].done) return i;
    return -1;
  }

  // ------------------------------------------------------------------------ single mode
  function renderSingle() {
    const it = items[idx];
    if (!it) {
      $("item").hidden = true;
      $("empty").hidden = false;
      return;
    }
    $("item").hidden = false;
    $("empty").hidden = true;
    $("crop").src = "/crop/" + it.digit_id + ".png";
    $("strip").src = "/strip/" + it.digit_id + ".png";
    $("where").textContent = it.document + " · page " + it.page + " · field " + it.field + " · position " + it.position
      + (it.done !== undefined ? " · labelled " + it.done : "");
    $("why").textContent = it.why ? "why here: " + it.why : "";
    const said = it.warnings || [];
    $("damaged").hidden = said.length === 0;
    $("damaged").textContent = said.length
      ? "damaged scan, read as far as it decodes: " + said.join("; ") + ". Check the field against the paper." : "";
    const ol = $("top3");
    ol.textContent = "";
    for (const [k, p] of it.top3) {
      const li = document.createElement("li");
      const b = document.createElement("b");
      b.textContent = labelText(k);
      li.appendChild(b);
      li.appendChild(document.createTextNode(" " + (100 * p).toFixed(1) + " %"));
      ol.appendChild(li);
    }
    root.dataset.digit = it.digit_id;
    root.dataset.index = idx;
  }

  // -------------------------------------------------------------------------- grid mode
  const cells = () => Array.from(document.querySelectorAll("#grid .cell"));
  function renderGrid() {
    const cs = cells();
    cs.forEach((c, i) => {
      c.classList.toggle("focus", i === idx);
      const it = items[i];
      c.classList.toggle("done", it && it.done !== undefined);
      c.querySelector(".mark").textContent = it && it.done !== undefined ? "→ " + it.done : "";
    });
    $("empty").hidden = items.some((it) => it.done === undefined);
    if (cs[idx]) cs[idx].scrollIntoView({ block: "nearest" });
    root.dataset.index = idx;
    root.dataset.digit = items[idx] ? items[idx].digit_id : "";
  }
  function columns() {
    const cs = cells();
    if (cs.length < 2) return 1;
    const top = cs[0].offsetTop;
    let n = 0;
    while (n < cs.length && cs[n].offsetTop === top) n++;
    return Math.max(1, n);
  }

  const render = () => (mode === "grid" ? renderGrid() : renderSingle());

  // Returns null when stored, else the error message (shown in the status line).
  async function label(value) {
    const it = items[idx];
    if (!it) return null;  // a labelled item can be labelled again (a new correction)
    try {
      const j = await post("/api/label", { digit_id: it.digit_id, label: value, seen: seenOf(it) });
      it.done = labelText(j.new_label);
      it.seen = j.new_label;
      setCounts(j.counts);
      status("digit " + it.digit_id + ": " + (j.accepted ? "accepted " + it.done : labelText(j.old_label) + " → " + it.done)
             + " · field " + j.field_value + " · document " + j.document_status);
      await advance();
      return null;
    } catch (e) {
      const msg = String(e.message || e);
      status(msg, true);
      if (e.status === 409 && e.body && "current" in e.body) {
        // Someone changed it since this page was loaded: keep theirs, show it, and go on.
        it.done = labelText(e.body.current);
        it.seen = e.body.current;
        await advance();
        status(msg, true);
      }
      return msg;
    }
  }

  async function advance() {
    let n = nextOpen(idx + 1);
    if (n < 0) {
      if (mode === "grid") { idx = Math.min(idx, items.length - 1); render(); return; }
      const more = await refill();
      const known = new Set(items.map((i) => i.digit_id));
      for (const m of more) if (!known.has(m.digit_id)) items.push(m);
      n = nextOpen(idx + 1);
      if (n < 0) { idx = items.length; render(); return; }
    }
    idx = n;
    render();
  }

  async function undo() {
    try {
      const j = await post("/api/undo", {});
      setCounts(j.counts);
      const i = items.findIndex((x) => x.digit_id === j.digit_id);
      if (i >= 0) { delete items[i].done; items[i].seen = j.label; idx = i; }
      status("undone: digit " + j.digit_id + " is flagged again");
      render();
    } catch (e) {
      status(String(e.message || e), true);
    }
  }

  async function acceptScreen() {
    const refused = [];
    for (let i = 0; i < items.length; i++) {
      if (items[i].done === undefined) {
        idx = i;
        const msg = await label(modelAnswer(items[i]));
        if (msg) refused.push(msg);
      }
    }
    if (refused.length) status(refused.join(" · "), true);
  }

  function move(delta) {
    const n = items.length;
    if (!n) return;
    idx = Math.max(0, Math.min(n - 1, idx + delta));
    render();
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key;
    let handled = true;
    if (/^[0-9]$/.test(k)) enqueue(() => label(k));
    else if (k === "Enter") enqueue(() => { const it = items[idx]; return it ? label(modelAnswer(it)) : null; });
    else if (k === "x" || k === "X") enqueue(() => label("x"));
    else if (k === "u" || k === "U") enqueue(undo);
    else if (k === "ArrowRight") enqueue(() => move(1));
    else if (k === "ArrowLeft") enqueue(() => move(-1));
    else if (k === "ArrowDown") enqueue(() => move(mode === "grid" ? columns() : 1));
    else if (k === "ArrowUp") enqueue(() => move(mode === "grid" ? -columns() : -1));
    else if (mode === "grid" && k === "A") enqueue(acceptScreen);
    else if (mode === "grid" && k === "n") window.location.reload();
    else handled = false;
    if (handled) ev.preventDefault();
  });

  if (mode === "grid") {
    cells().forEach((c, i) => c.addEventListener("click", () => { idx = i; render(); }));
  }
  root.dataset.ready = "1";
  render();
})();
