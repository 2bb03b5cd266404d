// The audit web viewer: plain DOM, no build step, no external assets. Untrusted text only ever goes into
// textContent (never innerHTML). Every request is same-origin and carries the login cookie.
"use strict";
(function () {
  const PREFIX = document.body.dataset.prefix;
  const API = PREFIX + "api/";
  const main = document.getElementById("main");
  const FILTERS = ["server", "user", "since", "until", "state", "tool"];

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const fmt = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").replace("Z", "") : "-");
  const json = (v) => JSON.stringify(v, null, 2);
  const badge = (cls, text, title) => el("span", { class: "badge " + cls, title: title || null }, text);
  const stateBadge = (s) => badge("state-" + s, s, s === "incomplete" ? "a processor stopped mid-exchange" : null);
  const verifiedBadge = (v) => badge(v ? "verified-yes" : "verified-no", v ? "verified" : "NOT verified");

  async function api(path, opts) {
    const r = await fetch(API + path, Object.assign({ credentials: "same-origin" }, opts || {}));
    if (r.status === 401) { showLogin(); throw new Error("login required"); }
    if (!r.ok) {
      let msg = r.statusText;
      try { msg = (await r.json()).error.message; } catch (e) { /* not JSON */ }
      const err = new Error(msg); err.status = r.status; throw err;
    }
    return r;
  }

  function showLogin() {
    const next = location.pathname + location.search;
    main.replaceChildren(
      el("h1", {}, "Log in to see recorded sessions"),
      el("p", {}, el("a", { id: "login", href: PREFIX + "login?next=" + encodeURIComponent(next) }, "Log in")));
  }

  function showError(e) {
    main.replaceChildren(el("h1", {}, e.status === 404 ? "Not found" : "Error"),
      el("p", { class: "error", role: "alert", id: "error" }, e.message),
      el("p", {}, el("a", { href: PREFIX }, "Back to the session list")));
  }

  async function whoami() {
    try {
      const me = await (await api("me")).json();
      document.getElementById("who").textContent =
        me.username + (me.viewer_rules.length ? " · rules: " + me.viewer_rules.join(", ") : " · no viewer rule");
      if (me.csrf) {
        document.getElementById("csrf").value = me.csrf;
        document.getElementById("logout").hidden = false;
      }
      return me;
    } catch (e) { return null; }
  }

  // --- the session list -------------------------------------------------------------------------------------
  async function listPage() {
    const q = new URLSearchParams(location.search);
    const form = el("form", { class: "filters", id: "filters", role: "search" },
      FILTERS.map((f) => el("label", {}, f,
        f === "state"
          ? el("select", { name: f, id: "f-" + f }, ["", "complete", "incomplete", "open"].map(
              (s) => el("option", { value: s, selected: q.get(f) === s }, s || "any")))
          : el("input", { name: f, id: "f-" + f, value: q.get(f) || "",
                          placeholder: f === "since" || f === "until" ? "2026-12-01T10:00Z" : "" }))),
      el("button", { type: "submit" }, "Filter"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const p = new URLSearchParams();
      for (const f of FILTERS) { const v = form.elements[f].value.trim(); if (v) p.set(f, v); }
      history.pushState(null, "", PREFIX + (p.toString() ? "?" + p : ""));
      route();
    });
    const body = el("tbody");
    const table = el("table", { id: "sessions" }, el("caption", { class: "muted" }, "newest first"),
      el("thead", {}, el("tr", {}, ["session", "server", "user", "started", "exchanges", "tools", "state", "verified"]
        .map((h) => el("th", { scope: "col" }, h)))), body);
    const more = el("button", { id: "more", hidden: true }, "More");
    main.replaceChildren(el("h1", {}, "Recorded sessions"), form, table, more);
    let cursor = null;
    async function load() {
      const p = new URLSearchParams();
      for (const f of FILTERS) if (q.get(f)) p.set(f, q.get(f));
      if (cursor) p.set("cursor", cursor);
      let doc;
      try { doc = await (await api("sessions?" + p)).json(); }
      catch (e) { if (e.status) main.append(el("p", { class: "error", role: "alert" }, e.message)); return; }
      for (const s of doc.sessions) {
        body.append(el("tr", { "data-session": s.session },
          el("td", {}, el("a", { href: PREFIX + "s/" + encodeURIComponent(s.session) }, s.session)),
          el("td", {}, s.server || "-"), el("td", {}, s.user || "-"), el("td", {}, fmt(s.started)),
          el("td", {}, s.exchanges), el("td", {}, s.tools.join(", ")),
          el("td", {}, stateBadge(s.state)), el("td", {}, verifiedBadge(s.verified))));
      }
      if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: 8 }, "No sessions you may see.")));
      cursor = doc.next_cursor;
      more.hidden = !cursor;
    }
    more.addEventListener("click", load);
    await load();
  }

  // --- one session ------------------------------------------------------------------------------------------
  function redactionsOf(ev) { return (ev.redactions || []).map((r) => r.rule || r.name || "redaction"); }

  function timelineItem(ev, base) {
    const off = ((ev.time - base)).toFixed(3) + " s";
    const li = el("li", { "data-offset": ev.time - base, "data-seq": ev.seq, "data-type": ev.type });
    const head = el("div", {}, el("span", { class: "muted" }, off + "  "), el("strong", {}, ev.type), " ");
    li.append(head);
    const red = redactionsOf(ev);
    if (red.length) head.append(badge("redacted", "redacted: " + red.join(", ")));
    if (ev.type === "exchange.start") {
      head.append(`${ev.method} ${ev.path} by ${(ev.principal || {}).username || "anonymous"} from ${ev.client || "?"}`);
    } else if (ev.type === "policy.decision") {
      head.append(ev.allowed ? badge("verified-yes", "allowed") : badge("denied", "denied"),
        ` rule ${ev.rule || "(default deny)"}: ${ev.call || ""} ${ev.reason || ""}`);
    } else if (ev.type === "exchange.end") {
      head.append(ev.outcome === "denied" ? badge("denied", "refused " + ev.status) : `${ev.outcome} ${ev.status}`,
        ` ${ev.duration_ms} ms ${ev.detail || ""}`);
    } else if (ev.type === "exchange.incomplete") {
      head.append(badge("state-incomplete", "incomplete"), " " + ev.reason);
    } else if (ev.type === "http.response") {
      head.append(`status ${ev.status}`);
    } else if (ev.type === "mcp.request" || ev.type === "mcp.response") {
      for (const m of ev.messages || []) {
        li.append(el("pre", {}, (m.method ? m.method + " " : "") + json(m.params || m.result || m.error || {})));
      }
      if (ev.sse_event || ev.sse_id) head.append(`SSE event ${ev.sse_event || ""} id ${ev.sse_id || ""}`);
    } else if (ev.type === "audit.access") {
      head.append(`${(ev.principal || {}).username || "anonymous"} ${ev.action} ${ev.target} → ${ev.result} (${ev.client})`);
    }
    return li;
  }

  function callBlock(c) {
    const req = c.request, res = c.response;
    const result = res ? (res.result !== undefined ? res.result : { error: res.error }) : null;
    return el("div", { class: "callwrap" },
      el("h3", {}, `${fmt(c.time)} ${c.from === "client" ? "→" : "←"} ${req.method}` +
        (req.params && req.params.name ? " " + req.params.name : "")),
      el("div", { class: "call" },
        el("div", {}, el("div", { class: "muted" }, "arguments"), el("pre", {}, json(req.params || {}))),
        el("div", {}, el("div", { class: "muted" }, res ? "result at " + fmt(c.response_time) : "no response"),
          el("pre", {}, result === null ? "-" : json(result)))),
      c.notifications.length ? el("ul", {}, c.notifications.map((n) =>
        el("li", {}, `${fmt(n.time)} ${n.message.method} ${json(n.message.params || {})}`))) : null);
  }

  async function sessionPage(key) {
    let doc, events;
    try {
      doc = await (await api("sessions/" + encodeURIComponent(key))).json();
      events = (await (await api("sessions/" + encodeURIComponent(key) + "/events")).text())
        .split("\n").filter(Boolean).map((l) => JSON.parse(l));
    } catch (e) { if (e.status) showError(e); return; }
    const s = doc.session;
    const base = events.length ? events[0].time : 0;
    const findings = el("div", { class: "findings", id: "findings", "aria-live": "polite" });
    const verifyBtn = el("button", { id: "verify" }, "Verify");
    verifyBtn.addEventListener("click", async () => {
      findings.replaceChildren("verifying…");
      try {
        const v = await (await api("sessions/" + encodeURIComponent(key) + "/verify")).json();
        findings.replaceChildren(
          el("p", {}, v.verified ? badge("verified-yes", "verified") : badge("verified-no", "verification FAILED"),
            ` ${v.events} events in ${v.streams} stream(s); signatures ${v.signatures_checked ? "checked" : "not checked"}`),
          ...v.problems.map((p) => el("p", { class: "error" }, "FAIL " + p)),
          ...v.unfinished.map((p) => el("p", { class: "state-open" }, "OPEN " + p)),
          ...v.notes.map((p) => el("p", { class: "muted" }, "note: " + p)));
      } catch (e) { findings.replaceChildren(el("p", { class: "error" }, e.message)); }
    });
    const timeline = el("ol", { class: "timeline", id: "timeline" }, events.map((ev) => timelineItem(ev, base)));
    const items = Array.from(timeline.children);
    // Playback: the replay API streams events at their recorded pace; Step walks them one at a time.
    let source = null, position = 0;
    const status = el("span", { id: "playback", "aria-live": "polite", class: "muted" }, "stopped");
    const speed = el("select", { id: "speed", "aria-label": "speed" },
      [1, 2, 4, 8, 16].map((x) => el("option", { value: x }, x + "×")));
    const play = el("button", { id: "play" }, "Play");
    const step = el("button", { id: "step" }, "Step");
    function mark(n) {
      items.forEach((li, i) => { li.classList.toggle("played", i < n); li.classList.toggle("current", i === n - 1); });
      position = n;
      if (n > 0) items[n - 1].scrollIntoView({ block: "nearest" });
      status.textContent = `${n} / ${items.length} events` + (n ? ` (at ${(items[n - 1].dataset.offset * 1).toFixed(2)} s)` : "");
    }
    function stop(label) {
      if (source) { source.close(); source = null; }
      play.textContent = "Play";
      status.textContent = label + " · " + status.textContent.replace(/^.* · /, "");
    }
    function start() {
      if (position >= items.length) mark(0);
      const from = position ? items[position - 1].dataset.offset * 1 + 1e-6 : 0;
      source = new EventSource(`${API}sessions/${encodeURIComponent(key)}/replay?speed=${speed.value}&start=${from}`);
      play.textContent = "Pause";
      source.onmessage = null;
      source.addEventListener("end", () => stop("finished"));
      source.onerror = () => stop("stopped");
      for (const t of new Set(events.map((e) => e.type))) {
        source.addEventListener(t, (m) => {
          const d = JSON.parse(m.data);
          const i = items.findIndex((li, j) => j >= position && li.dataset.seq == d.event.seq && li.dataset.type === d.event.type);
          mark(i >= 0 ? i + 1 : position + 1);
        });
      }
    }
    play.addEventListener("click", () => (source ? stop("paused") : start()));
    step.addEventListener("click", () => { if (source) stop("paused"); mark(position >= items.length ? 1 : position + 1); });
    speed.addEventListener("change", () => { if (source) { stop("paused"); start(); } });
    document.onkeydown = (ev) => {
      if (ev.target.matches("input, select, textarea")) return;
      if (ev.key === " " || ev.key === "k") { ev.preventDefault(); play.click(); }
      else if (ev.key === "." || ev.key === "ArrowRight" || ev.key === "l") { ev.preventDefault(); step.click(); }
    };
    main.replaceChildren(
      el("p", {}, el("a", { href: PREFIX }, "← all sessions")),
      el("h1", {}, "Session " + s.session),
      el("div", { class: "summary", id: "summary" }, stateBadge(s.state), verifiedBadge(s.verified),
        ...[`server ${s.server || "-"}`, `user ${s.user || "-"}`, `started ${fmt(s.started)}`,
          `${s.exchanges} exchanges`, `${s.events} events`].map((t) => el("span", {}, t)), verifyBtn),
      s.state === "incomplete"
        ? el("p", { class: "state-incomplete", id: "incomplete-note" },
            "Incomplete: a processor stopped before some exchanges ended; what it wrote before is kept.") : null,
      findings,
      el("div", { class: "controls", role: "group", "aria-label": "playback" }, play, step,
        el("label", {}, "speed ", speed), status,
        el("span", { class: "muted" }, "keys: space play/pause, → step")),
      el("h2", {}, "Timeline"), timeline,
      el("h2", {}, "Calls (arguments and results)"), el("div", { id: "calls" }, doc.calls.map(callBlock)));
    mark(0);
  }

  async function route() {
    document.onkeydown = null;
    const me = await whoami();
    if (!me) return;
    const m = location.pathname.slice(PREFIX.length).match(/^s\/([^/]+)$/);
    if (m) await sessionPage(decodeURIComponent(m[1]));
    else await listPage();
    main.focus();
  }
  window.addEventListener("popstate", route);
  route();
})();
