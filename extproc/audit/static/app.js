// The audit web viewer: plain DOM, no build step, no external assets. Untrusted text only ever goes into
// textContent (never innerHTML). Every request is same-origin and carries the login cookie.
"use strict";
(function () {
  const PREFIX = document.body.dataset.prefix;
  const API = PREFIX + "api/";
  const TRACE_LINK = document.body.dataset.traceLink || "";  // telemetry.trace_link: "...{trace_id}..."
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
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  // Times are shown in UTC, saying so (the CLI and the API filters speak UTC too); the viewer's local time is on
  // hover. fmt is for text that already sits inside a sentence; when() is the element to use everywhere else.
  const fmt = (t) => (t ? new Date(t * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC" : "-");
  const when = (t) => (t
    ? el("time", { datetime: new Date(t * 1000).toISOString(),
                   title: new Date(t * 1000).toLocaleString(undefined, { timeZoneName: "short" }) + " (your time)" },
         fmt(t))
    : "-");
  // replaceChildren(…, null) would print "null": every page is built through show(), which drops the absent parts.
  const show = (...nodes) => main.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
  const json = (v) => JSON.stringify(v, null, 2);
  const badge = (cls, text, title) => el("span", { class: "badge " + cls, title: title || null }, text);
  const stateBadge = (s) => badge("state-" + s, s, s === "incomplete" ? "a processor stopped mid-exchange" : null);
  const deniedBadge = (n) => el("span", { class: "badge denied denied-count", title: `${n} exchange(s) refused by the gateway` },
    `${n} denied`);
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
    if (document.body.dataset.login !== "on") {
      // No OIDC client configured: a Log in link would only lead to an error. Say how to turn login on instead.
      const api = location.origin + PREFIX;
      show(
        el("h1", {}, "Web login is not turned on"),
        el("div", { id: "login-off", class: "notice" },
          el("p", {}, "This audit service has no OIDC client for the web viewer, so nobody can log in here yet. " +
            "The API works with a bearer token meanwhile:"),
          el("pre", {}, `mcp-extproc sessions list --api ${api} --token "$TOKEN"`),
          el("p", {}, "To turn the web login on, an operator:"),
          el("ol", {},
            el("li", {}, "registers a public OIDC client (Authorization Code + PKCE) at the identity provider, " +
              "with the redirect URI ", el("code", {}, api + "callback"),
              " (the development issuer, mcp-extproc dev-issuer, accepts any client name);"),
            el("li", {}, "sets ", el("code", {}, "audit.client_id"), " to that client's id in gateway.yaml " +
              "(and audit.client_secret_file for a confidential client);"),
            el("li", {}, "restarts the audit service."))));
      return;
    }
    show(
      el("h1", {}, "Log in to see recorded sessions"),
      el("p", {}, el("a", { id: "login", href: PREFIX + "login?next=" + encodeURIComponent(next) }, "Log in")));
  }

  function showError(e) {
    show(el("h1", {}, e.status === 404 ? "Not found" : "Error"),
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
                          placeholder: f === "since" ? "24h or 2026-12-01" : f === "until" ? "2026-12-01T10:00Z" : "",
                          title: f === "since" || f === "until"
                            ? "UTC time (2026-12-01T10:00Z), Unix seconds, or an age like 30m, 24h, 7d" : null }))),
      el("button", { type: "submit" }, "Filter"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const p = new URLSearchParams();
      for (const f of FILTERS) { const v = form.elements[f].value.trim(); if (v) p.set(f, v); }
      history.pushState(null, "", PREFIX + (p.toString() ? "?" + p : ""));
      route();
    });
    const body = el("tbody");
    const COLS = ["session", "server", "user", "started", "exchanges", "tools", "state", "verified"];
    const table = el("table", { id: "sessions", class: "cards" }, el("caption", { class: "muted" }, "newest first"),
      el("thead", {}, el("tr", {}, COLS.map((h) => el("th", { scope: "col" }, h)))), body);
    const more = el("button", { id: "more", hidden: true }, "More");
    show(el("h1", {}, "Recorded sessions"), form, table, more);
    // data-label: on narrow screens each row is a card and each cell names its column (style.css).
    const cell = (n, ...c) => el("td", { "data-label": COLS[n] }, ...c);
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
          cell(0, el("a", { href: PREFIX + "s/" + encodeURIComponent(s.session) }, s.session)),
          cell(1, s.server || "-"), cell(2, s.user || "-"), cell(3, when(s.started)),
          cell(4, s.exchanges, s.denied ? [" ", deniedBadge(s.denied)] : null), cell(5, s.tools.join(", ") || "-"),
          cell(6, stateBadge(s.state)), cell(7, verifiedBadge(s.verified))));
      }
      if (!body.children.length) body.append(el("tr", { class: "empty" }, el("td", { colspan: 8 }, "No sessions you may see.")));
      cursor = doc.next_cursor;
      more.hidden = !cursor;
    }
    more.addEventListener("click", load);
    await load();
  }

  // --- one session ------------------------------------------------------------------------------------------
  // A policy.decision's budget (extproc/controls/budgets.py): the counters after the call, the limit it went
  // over, or the counter store down (and whether the rule let the call pass).
  function budgetText(b) {
    if (b.outcome === "counted") return "budget: " + (b.limits || []).map((l) => `${l.count} of ${l.limit}`).join("; ");
    if (b.outcome === "exceeded") return `over budget: ${b.limit}, counter ${b.count}`;
    return `budget store unavailable (${b.store}), on_store_error: ${b.on_store_error}`;
  }
  function redactionsOf(ev) { return (ev.redactions || []).map((r) => r.rule || r.name || "redaction"); }

  // A trace id, linked to the tracing backend when telemetry.trace_link is set.
  function traceRef(id) {
    if (!TRACE_LINK || !/^[0-9a-f]{32}$/.test(id || "")) return el("code", {}, id || "");
    return el("a", { class: "trace", href: TRACE_LINK.split("{trace_id}").join(id), rel: "noreferrer" }, id);
  }

  function timelineItem(ev, base) {
    const off = ((ev.time - base)).toFixed(3) + " s";
    const li = el("li", { "data-offset": ev.time - base, "data-seq": ev.seq, "data-type": ev.type });
    const head = el("div", {}, el("span", { class: "muted" }, off + "  "), el("strong", {}, ev.type), " ");
    li.append(head);
    const red = redactionsOf(ev);
    if (red.length) head.append(badge("redacted", "redacted: " + red.join(", ")));
    if (ev.type === "exchange.start") {
      head.append(`${ev.method} ${ev.path} by ${(ev.principal || {}).username || "anonymous"} from ${ev.client || "?"}`);
      const tp = ((ev.headers || {}).traceparent || "").split("-");
      if (tp.length === 4 && /^[0-9a-f]{32}$/.test(tp[1])) head.append(" trace ", traceRef(tp[1]));
    } else if (ev.type === "trace.context") {
      head.append("trace ", traceRef(ev.trace_id), ` span ${ev.span_id} (parent: ${ev.parent})`);
    } else if (ev.type === "policy.decision") {
      head.append(ev.allowed ? badge("verified-yes", "allowed") : badge("denied", "denied"),
        ` rule ${ev.rule || "(default deny)"}: ${ev.call || ""} ${ev.reason || ""}`);
      if (ev.budget) head.append(" ", badge(ev.budget.outcome === "counted" ? "verified-yes" : "denied", budgetText(ev.budget)));
      const g = ev.grant, k = ev.kubernetes;  // a just-in-time grant let it through; a Kubernetes review decided
      if (g) head.append(" ", badge("verified-yes", "grant"), ` ${g.id} approved by ${g.approved_by || "?"} (${g.reason || "-"})`);
      if (k) head.append(" ", badge(k.outcome === "allowed" ? "verified-yes" : "denied", "kubernetes " + k.outcome),
        [k.verb, k.resource].filter(Boolean).map((x) => " " + x).join(""), k.cached ? " (cached)" : "");


      const ap = ev.approval;  // an approve rule held the call: the request, or the approval it used
      if (ap) head.append(" ", badge("approval approval-" + ap.state, `approval ${ap.state}`), " ",
        el("a", { href: PREFIX + "approvals/" + encodeURIComponent(ap.id) }, ap.id), ap.by ? ` by ${ap.by}` : "");
    } else if (ev.type === "exchange.end") {
      head.append(ev.outcome === "denied" ? badge("denied", "refused " + ev.status) : `${ev.outcome} ${ev.status}`,
        ` ${ev.duration_ms} ms ${ev.detail || ""}`);
      const tr = ev.trace;  // a traced exchange's ids (older records: a trace.context event, above)
      if (tr && tr.trace_id) head.append(" trace ", traceRef(tr.trace_id), ` span ${tr.span_id} (parent: ${tr.parent})`);
    } else if (ev.type === "exchange.incomplete") {
      head.append(badge("state-incomplete", "incomplete"), " " + ev.reason);
    } else if (ev.type === "http.response") {
      head.append(`status ${ev.status}`);
    } else if (ev.type === "mcp.request" || ev.type === "mcp.response") {
      for (const m of ev.messages || []) {
        li.append(el("pre", {}, (m.method ? m.method + " " : "") + json(m.params || m.result || m.error || {})));
      }
      if (ev.sse_event || ev.sse_id) head.append(`SSE event ${ev.sse_event || ""} id ${ev.sse_id || ""}`);
      if (ev.error) head.append(" ", badge("denied", "not JSON-RPC"), ` ${ev.size} bytes: ${ev.error}`);
    } else if (ev.type === "definition.changed") {
      li.classList.add("changed");
      head.append(badge("flag-changed", "definition changed"), ` ${ev.kind} ${ev.name} on ${ev.server}: `,
        shortFp(ev.old), " → ", shortFp(ev.new), ` decision ${ev.decision}`, ...(ev.rule ? [" (", ruleRef(ev.rule), ")"] : []));
    } else if (ev.type === "tool.definition") {
      head.append(`${ev.kind} ${ev.name} on ${ev.server}, fingerprint `, shortFp(ev.fingerprint),
        ` pin ${ev.pin}` + (ev.shown === false ? ", withheld from the caller" : ""));
      if ((ev.findings || []).length) li.append(definitionLine(ev));
    } else if (ev.type === "policy.list_filtered") {
      head.append(filteredLine(ev));
    } else if (ev.type === "result.screened") {
      head.append(screenedLine(ev));
    } else if (ev.type === "guardrail.verdict") {
      head.append(guardrailLine(ev));
    } else if (ev.type === "upstream.credential") {
      head.append(credentialLine(ev));
    } else if (ev.type === "audit.access") {
      head.append(`${(ev.principal || {}).username || "anonymous"} ${ev.action} ${ev.target} → ${ev.result} (${ev.client})`);
    }
    return li;
  }

  // The other side of a call: its result, the gateway's refusal (status, rule, what it answered; the same data
  // `sessions show` prints as "refused by the gateway"), or nothing at all.
  function outcomeOf(c) {
    const res = c.response, ref = c.refusal;
    if (res) {
      return el("div", {}, el("div", { class: "muted" }, "result at ", when(c.response_time)),
        el("pre", {}, json(res.result !== undefined ? res.result : { error: res.error })));
    }
    if (ref) {
      return el("div", { class: "refusal" },
        el("div", { class: "muted" }, "refused by the gateway at ", when(ref.time)),
        el("p", {}, badge("denied", "refused " + ref.status), " ",
          ref.rule ? ["rule ", el("strong", { class: "rule" }, ref.rule)] : "no rule allowed it (default deny)"),
        ref.detail ? el("pre", {}, ref.detail) : null);
    }
    if (c.request.id === undefined) return el("div", {}, el("div", { class: "muted" }, "notification: no response expected"));
    return el("div", {}, el("div", { class: "muted" }, "no response"), el("pre", {}, "-"));
  }

  // Fingerprints are "sha256:" and 64 hex digits; 12 digits tell two apart on screen (the whole one is on hover).
  const shortFp = (fp) => el("code", { class: "fp", title: fp }, String(fp).replace(/^sha256:/, "").slice(0, 12));
  // An integrity rule is "file:line" (or "default"): the file's name is enough on screen, its path on hover.
  const ruleRef = (r) => el("span", { class: "rule", title: r }, String(r).split("/").pop());
  const FLAGS = {
    changed: ["changed", "CHANGED", "the server changed this definition (or it differs from its pin) and no one approved it"],
    withheld: ["withheld", "WITHHELD", "the gateway withheld this definition from the caller"],
    unpinned: ["unpinned", "UNPINNED", "the gateway could not pin this definition (no signing key)"],
    unlisted: ["unlisted", "NOT LISTED", "the caller was never shown this definition"],
  };

  // What the caller was shown of the tool it called (session_doc's call.definition, as `sessions show` prints it).
  function listedLine(d) {
    const f = FLAGS[d.flag];
    const flag = f ? [" ", el("span", { class: "badge flag-" + f[0], title: f[2] }, f[1])] : null;
    let what;
    if (d.fingerprint === null || d.fingerprint === undefined) {
      what = ["not listed to this caller", d.withheld ? ` (withheld: ${d.withheld})` : ""];
    } else {
      what = [d.listed_at !== undefined && d.listed_at !== null ? ["as listed at ", when(d.listed_at), ", "] : "not listed, ",
        "fingerprint ", shortFp(d.fingerprint)];
    }
    return el("div", { class: "listed" + (f ? " flagged" : ""), "data-flag": d.flag || "" }, what, flag,
      d.approved ? ` · approved by ${d.approved.by}` : null,
      (d.changes || []).map((x) => el("div", { class: "muted" }, "changed at ", when(x.time), ": ", shortFp(x.old),
        " → ", shortFp(x.new), `, decision ${x.decision}`, x.rule ? [" (", ruleRef(x.rule), ")"] : "")));
  }

  // A stateless run is recorded one unit per window: the same client's units of the windows before and after.
  function windowLinks(w) {
    if (!w || (!w.before && !w.after)) return null;
    const link = (key, text) => el("a", { href: PREFIX + "s/" + encodeURIComponent(key), class: "window-link" }, text);
    return el("p", { id: "run-windows", class: "muted" }, "This client's run continues: ",
      w.before ? link(w.before, "← window before") : null, w.before && w.after ? " · " : null,
      w.after ? link(w.after, "window after →") : null);
  }

  // Who the server saw: the upstream credential of the call's exchange (session_doc's upstream). Never a token:
  // the recording holds only its SHA-256.
  function credentialLine(u) {
    if (u.refused) {
      return el("div", { class: "credential refused-credential" }, `upstream ${u.kind}: `,
        badge("denied", "IdP refused"), ` ${u.refused.error || ""}${u.refused.description ? ": " + u.refused.description : ""}`);
    }
    return el("div", { class: "credential" }, `upstream ${u.kind} in ${u.header}, sha256 `,
      el("code", { title: u.sha256 || "" }, (u.sha256 || "-").slice(0, 12)),
      u.expires_at ? [", expires ", when(u.expires_at)] : null,
      (u.delegation || []).length ? ", " + u.delegation.slice().reverse().join(" acting for ") : null,
      (u.audience || []).length ? `, audience ${u.audience.join(" ")}` : null,
      (u.scopes || []).length ? `, scopes ${u.scopes.join(" ")}` : null,
      u.cached ? ", cached" : null);
  }

  // What a result screen found in the call's result and what was done (session_doc's screened), and what the
  // server's guardrail answered about the call or its result (session_doc's guardrail): the lines `sessions show`
  // prints, from the same data. The result shown beside them is what the server sent.
  const SCREEN_ACTIONS = {
    strip: ["verified-yes", "stripped", "stripped before the client saw it"],
    alarm: ["flag-unpinned", "alarm", "alarm: passed, recorded"],
    refuse: ["denied", "refused", "refused: the client got an error instead"],
  };
  const findingText = (f) => `${f.screen} ${f.rule} at ${f.path || "/"} [${f.start}:${f.end}]` +
    (f.excerpt ? " " + JSON.stringify(f.excerpt) : "") + (f.action ? ` -> ${f.action}` : "");
  function screenedLine(s) {
    const a = SCREEN_ACTIONS[s.action] || ["", s.action, s.action];
    const found = (s.findings || []).map(findingText).join("; ");
    return el("div", { class: "screened", "data-action": s.action || "" }, badge(a[0], a[1]), " ",
      `result screened, ${a[2]}: ${found || "-"}`);
  }
  // On the exchange: what a list hid from its caller, and listed definitions a description screen found
  // something in (each finding with what it led to: strip, alarm, hide, refuse).
  function filteredLine(f) {
    const hidden = f.hidden || [];
    const more = hidden.length > 10 ? `, and ${hidden.length - 10} more` : "";
    return el("div", { class: "filtered" },
      `${f.method} filtered for the caller: ${hidden.length} hidden (${hidden.slice(0, 10).join(", ")}${more})`);
  }
  function definitionLine(d) {
    const shown = d.shown === false ? "withheld from the caller" : "shown";
    return el("div", { class: "definition-screened" }, badge("flag-unpinned", "screened"), " ",
      `${d.kind} ${d.name} screened (${shown}, pin ${d.pin}): ${(d.findings || []).map(findingText).join("; ")}`);
  }
  const GUARD = { passed: "verified-yes", modified: "flag-unpinned" };
  function guardrailLine(g) {
    // a modify: what the call went on with, or what the client got in place of the result
    const changed = g.arguments !== null && g.arguments !== undefined ? ["arguments", g.arguments]
      : g.result !== null && g.result !== undefined ? ["result", g.result] : null;
    return el("div", { class: "guardrail", "data-phase": g.phase || "request", "data-verdict": g.verdict || "" },
      badge(GUARD[g.outcome] || "denied", g.verdict), " ",
      `guardrail on the ${g.phase || "request"}: ${g.verdict}${g.reason ? ` (${g.reason})` : ""} -> ` +
      `${g.outcome || "-"}, ${g.latency_ms} ms`,
      changed ? [`; ${changed[0]} now`, el("pre", {}, json(changed[1]))] : null);
  }

  function callBlock(c) {
    const req = c.request;
    return el("div", { class: "callwrap" + (c.refusal ? " refused" : ""), "data-exchange": c.exchange },
      el("h3", {}, when(c.time), ` ${c.from === "client" ? "→" : "←"} ${req.method}` +
        (req.params && req.params.name ? " " + req.params.name : "")),
      c.definition ? listedLine(c.definition) : null,
      (c.upstream || []).map(credentialLine),
      (c.guardrail || []).map(guardrailLine),
      (c.screened || []).map(screenedLine),
      el("div", { class: "call" },
        el("div", {}, el("div", { class: "muted" }, "arguments"), el("pre", {}, json(req.params || {}))),
        outcomeOf(c)),
      c.notifications.length ? el("ul", {}, c.notifications.map((n) =>
        el("li", {}, when(n.time), ` ${n.message.method} ${json(n.message.params || {})}`))) : null,
      (c.rounds || []).length ? el("div", { class: "rounds" }, c.rounds.map(callBlock)) : null);
  }

  // One HTTP exchange: what was asked, how it ended, and the credential the server got for it (or the IdP's
  // refusal: such an exchange never reached the server, so it has no call below).
  function exchangeItem(x) {
    return el("li", { "data-exchange": x.exchange, class: x.outcome === "denied" ? "refused" : null },
      when(x.time), ` ${x.method || "?"} ${x.path || ""} → ${x.status || "-"} `,
      x.outcome === "denied" ? badge("denied", "refused") : x.outcome,
      x.duration_ms !== null && x.duration_ms !== undefined ? ` ${x.duration_ms} ms` : null,
      (x.upstream || []).map(credentialLine),
      (x.filtered || []).map(filteredLine),
      (x.definitions || []).map(definitionLine),
      (x.guardrail || []).map(guardrailLine),
      (x.screened || []).map(screenedLine),
      x.erased ? el("div", { class: "erased" }, "payloads erased on ", when(x.erased.time),
        ` by ${x.erased.by || "?"} (${x.erased.reason || "no reason given"})`) : null);
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
            ` ${v.events} events in ${v.streams} stream(s); signatures ${v.signatures_checked ? "checked" : "not checked"}`
            + (v.capture ? `; capture ${v.capture}` : "")),
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
    show(
      el("p", {}, el("a", { href: PREFIX }, "← all sessions")),
      el("h1", {}, "Session " + s.session),
      el("div", { class: "summary", id: "summary" }, stateBadge(s.state), verifiedBadge(s.verified),
        ...[`server ${s.server || "-"}`, `user ${s.user || "-"}`, ["started ", when(s.started)],
          `${s.exchanges} exchanges`, `${s.events} events`].map((t) => el("span", {}, t)),
        doc.summary && doc.summary.capture ? el("span", { id: "capture" }, "capture " + doc.summary.capture) : null,
        s.denied ? deniedBadge(s.denied) : null, verifyBtn),
      windowLinks(doc.windows),
      s.state === "incomplete"
        ? el("p", { class: "state-incomplete", id: "incomplete-note" },
            "Incomplete: a processor stopped before some exchanges ended; what it wrote before is kept.") : null,
      findings,
      el("div", { class: "controls", role: "group", "aria-label": "playback" }, play, step,
        el("label", {}, "speed ", speed), status,
        el("span", { class: "muted" }, "keys: space play/pause, → step")),
      el("h2", {}, "Exchanges"), el("ol", { class: "exchanges", id: "exchanges" }, doc.exchanges.map(exchangeItem)),
      el("h2", {}, "Timeline"), timeline,
      el("h2", {}, "Calls (arguments and results)"), el("div", { id: "calls" }, doc.calls.length ? doc.calls.map(callBlock)
        : el("p", { class: "muted" }, "No JSON-RPC message was recorded (see the exchanges above).")));
    mark(0);
  }

  // --- held calls (policy rules with effect: approve) ---------------------------------------------------------
  // Approve/deny POST with the login's CSRF token in x-csrf-token, as logout sends it in its form.
  async function approvalsPage(id, me) {
    let rows;
    try {
      rows = id ? [await (await api("approvals/" + encodeURIComponent(id))).json()]
                : (await (await api("approvals?state=pending")).json()).approvals;
    } catch (e) { if (e.status) showError(e); return; }
    const item = (a) => {
      const reason = el("input", { name: "reason", class: "reason", "aria-label": "reason", maxlength: 500,
                                   placeholder: "reason (required to deny)" });
      const result = el("p", { class: "decision", role: "status" });
      const decide = (verb) => async () => {
        try {
          const r = await api(`approvals/${encodeURIComponent(a.id)}/${verb}?reason=` + encodeURIComponent(reason.value),
            { method: "POST", headers: { "x-csrf-token": me.csrf || "" } });
          const d = (await r.json()).decision;
          result.textContent = `${d.approved ? "approved" : "denied"} by ${d.by}`;
          form.hidden = true;
        } catch (e) { result.textContent = e.message; result.classList.add("error"); }
      };
      const form = el("div", { class: "decide", role: "group", "aria-label": "decide", hidden: !a.may_decide },
        reason, el("button", { class: "approve", onclick: decide("approve") }, "Approve"),
        el("button", { class: "deny", onclick: decide("deny") }, "Deny"));
      const d = a.decision;
      return el("li", { class: "approval", "data-approval": a.id },
        el("h2", {}, `${a.caller.username} asks to call ${a.tool} on ${a.server}`),
        el("p", {}, badge("state-" + a.state, a.state), " ", `requested `, when(a.requested_at),
          ` · rule ${a.rule} · approvers: ${a.approvers} · ${a.count} identical call(s)`),
        el("p", { class: "muted" }, `caller ${a.caller.subject} (${a.caller.issuer}) · id ${a.id}`),
        el("pre", { class: "arguments" }, (() => { try { return json(JSON.parse(a.arguments)); } catch (e) { return a.arguments; } })()),
        d ? el("p", {}, `${d.approved ? "approved" : "denied"} by ${d.by}`, d.reason ? `: ${d.reason}` : "") : null,
        form, result);
    };
    show(el("p", {}, el("a", { href: PREFIX }, "← all sessions")),
      el("h1", {}, id ? "Approval " + id : "Calls waiting for approval"),
      rows.length ? el("ul", { id: "approvals", class: "approvals" }, rows.map(item))
                  : el("p", { class: "muted", id: "no-approvals" }, "No call is waiting for your approval."));
  }

  async function route() {
    document.onkeydown = null;
    const me = await whoami();
    if (!me) return;
    const path = location.pathname.slice(PREFIX.length);
    const m = path.match(/^s\/([^/]+)$/);
    const a = path.match(/^approvals(?:\/([^/]+))?$/);
    if (m) await sessionPage(decodeURIComponent(m[1]));
    else if (a) await approvalsPage(a[1] ? decodeURIComponent(a[1]) : null, me);
    else await listPage();
    main.focus();
  }
  window.addEventListener("popstate", route);
  route();
})();
