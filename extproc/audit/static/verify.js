// Verify an exported session bundle in the browser: WebCrypto SHA-256 and Ed25519, no server call (the page's
// Content-Security-Policy has connect-src 'none'). A third implementation of docs/record-format.md, beside
// `sessions verify --bundle` and docs/verifier/verify_bundle.py; all three report the same findings on every
// test vector (tests/integration/test_verify_browser.py).
"use strict";

const FORMAT = "mcp-extproc/session-bundle";
const GENESIS = "0".repeat(64);
const SAFE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const MANIFEST_FIELDS = {
  session: null, writer: null, segment: null, first: null, last: null, count: null, size: null, sha256: null,
  head: null, prev_manifest: null, final: false, open: [], created: "0.0f", sealed_by: "", v: 1, key_id: "", sig: "",
};
const DIGEST_FIELDS = {
  writer: null, number: null, start: null, end: null, prev: null, segments: [], final: false, closed_by: "", v: 1,
  key_id: "", sig: "",
};
const LISTED = ["session", "stream", "segment", "sha256", "first", "last", "final"];

class NotABundle extends Error {}

// --- JSON as Python reads it: numbers keep whether they are int or float (1.0 stays a float) ----------------

class PyNum {
  constructor(text) {
    this.isFloat = /[.eE]/.test(text);
    this.value = Number(text);
    this.text = text;
  }
}

function parseJson(text) {
  let i = 0;
  const fail = (why) => { throw new SyntaxError(`${why} at ${i}`); };
  const ws = () => { while (i < text.length && " \t\n\r".includes(text[i])) i++; };
  function value() {
    ws();
    const c = text[i];
    if (c === "{") {
      i++; const obj = {}; ws();
      if (text[i] === "}") { i++; return obj; }
      for (;;) {
        ws(); if (text[i] !== '"') fail("expected a key");
        const k = string(); ws();
        if (text[i] !== ":") fail("expected :"); i++;
        Object.defineProperty(obj, k, { value: value(), enumerable: true, writable: true, configurable: true });
        ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "}") { i++; return obj; }
        fail("expected , or }");
      }
    }
    if (c === "[") {
      i++; const arr = []; ws();
      if (text[i] === "]") { i++; return arr; }
      for (;;) {
        arr.push(value()); ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "]") { i++; return arr; }
        fail("expected , or ]");
      }
    }
    if (c === '"') return string();
    if (text.startsWith("true", i)) { i += 4; return true; }
    if (text.startsWith("false", i)) { i += 5; return false; }
    if (text.startsWith("null", i)) { i += 4; return null; }
    for (const [word, v] of [["NaN", NaN], ["Infinity", Infinity], ["-Infinity", -Infinity]]) {
      if (text.startsWith(word, i)) { // Python's json reads these (as floats); so must we
        i += word.length;
        const n = new PyNum("0.0");
        n.value = v;
        return n;
      }
    }
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (!m || !m[0]) fail("unexpected character");
    i += m[0].length;
    return new PyNum(m[0]);
  }
  function string() {
    i++; let out = "";
    for (;;) {
      const c = text[i];
      if (c === undefined) fail("unterminated string");
      if (c === '"') { i++; return out; }
      if (c < " ") fail("control character in string");
      if (c === "\\") {
        const e = text[i + 1];
        const simple = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
        if (e in simple) { out += simple[e]; i += 2; continue; }
        if (e === "u" && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) {
          out += String.fromCharCode(parseInt(text.slice(i + 2, i + 6), 16)); i += 6; continue;
        }
        fail("bad escape");
      }
      out += c; i++;
    }
  }
  const v = value(); ws();
  if (i !== text.length) fail("extra data");
  return v;
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });
const ENCODE = new TextEncoder();

function loads(bytes) {
  return parseJson(UTF8.decode(bytes));
}

function isObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof PyNum);
}

// Python's values: == across int/float/bool, repr, float repr.
function num(v) {
  if (v instanceof PyNum) return v.value;
  if (v === true) return 1;
  if (v === false) return 0;
  return v;
}
function pyEq(a, b) {
  const x = num(a), y = num(b);
  if (typeof x === "number" || typeof y === "number") return x === y;
  if (typeof x !== "object" || x === null || typeof y !== "object" || y === null) return x === y;
  return JSON.stringify(canonical(x, false)) === JSON.stringify(canonical(y, false));
}
function pyInt(v) {
  if (v instanceof PyNum && !v.isFloat) return v.value;
  if (v === true) return 1;
  if (v === false) return 0;
  return null;
}
function floatRepr(x) {
  if (Object.is(x, -0)) return "-0.0";
  if (x === 0) return "0.0";
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "NaN" : x > 0 ? "Infinity" : "-Infinity";
  const sign = x < 0 ? "-" : "";
  const [mant, expText] = Math.abs(x).toExponential().split("e");
  const e = Number(expText);
  const digits = mant.replace(".", "");
  if (e < -4 || e >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  }
  if (e < 0) return `${sign}0.${"0".repeat(-e - 1)}${digits}`;
  const int = digits.length > e + 1 ? digits.slice(0, e + 1) : digits.padEnd(e + 1, "0");
  const frac = digits.slice(e + 1) || "0";
  return `${sign}${int}.${frac}`;
}
function numText(n) {
  if (n.isFloat) return floatRepr(n.value);
  const t = BigInt(n.text).toString();
  return t;
}
function strRepr(s) {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === "\\" || ch === quote) out += "\\" + ch;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (c < 0x20 || c === 0x7f) out += "\\x" + c.toString(16).padStart(2, "0");
    else out += ch;
  }
  return out + quote;
}
function pyStr(v) {
  return typeof v === "string" ? v : pyRepr(v);
}
function pyRepr(v) {
  if (v === undefined || v === null) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (v instanceof PyNum) return numText(v);
  if (typeof v === "number") return String(v);
  if (typeof v === "string") return strRepr(v);
  if (Array.isArray(v)) return "[" + v.map(pyRepr).join(", ") + "]";
  return "{" + Object.keys(v).map((k) => `${strRepr(k)}: ${pyRepr(v[k])}`).join(", ") + "}";
}

// The canonical forms: sorted keys, no spaces; manifests escape every non-ASCII character (ascii=true).
function quoteString(s, ascii) {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i], c = s.charCodeAt(i);
    const short = { '"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f" };
    if (ch in short) out += short[ch];
    else if (c < 0x20 || (ascii && c > 0x7e)) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += ch;
  }
  return out + '"';
}
function canonical(v, ascii) {
  if (v === null) return "null";
  if (v === true) return "true";
  if (v === false) return "false";
  if (v instanceof PyNum) return numText(v);
  if (typeof v === "string") return quoteString(v, ascii);
  if (Array.isArray(v)) return "[" + v.map((x) => canonical(x, ascii)).join(",") + "]";
  const keys = Object.keys(v).sort();
  return "{" + keys.map((k) => quoteString(k, ascii) + ":" + canonical(v[k], ascii)).join(",") + "}";
}

function withDefaults(doc, fields, what) {
  if (!isObject(doc)) throw new Error(`${what} is not a JSON object`);
  const missing = Object.keys(fields).filter((k) => fields[k] === null && !(k in doc));
  if (missing.length) throw new Error(`${what} is missing fields: ${missing}`);
  const out = {};
  for (const [k, d] of Object.entries(fields)) {
    if (k in doc) out[k] = doc[k];
    else if (d === "0.0f") out[k] = new PyNum("0.0");
    else if (Array.isArray(d)) out[k] = [];
    else if (typeof d === "number") out[k] = new PyNum(String(d));
    else out[k] = d;
  }
  return out;
}

// --- bytes, hashes, signatures ------------------------------------------------------------------------------

function unb64(value, where) {
  if (typeof value !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(value) || value.length % 4) {
    throw new NotABundle(`${where}: not base64`);
  }
  const bin = atob(value);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}
async function sha256(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}
function safeKey(name, hashed) {
  return SAFE.test(name) && !name.includes("..") ? name : "h-" + hashed.slice(0, 40);
}
async function keyOf(name) {
  if (typeof name !== "string") return null;
  return safeKey(name, SAFE.test(name) && !name.includes("..") ? "" : await sha256(ENCODE.encode(name)));
}

async function importKey(raw) {
  const key = await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
  return { key, id: (await sha256(raw)).slice(0, 16) };
}
async function keyFromPem(pem) {
  const body = pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
  const der = unb64(body, "public key");
  // SubjectPublicKeyInfo of an Ed25519 key: a fixed 12-byte prefix, then the 32 raw bytes.
  const prefix = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
  if (der.length !== 44 || prefix.some((b, i) => der[i] !== b)) throw new Error("not an Ed25519 public key (PEM)");
  return importKey(der.slice(12));
}
async function checkSigned(sig, kid, signed, pub, what) {
  if (!sig) return "unsigned";
  if (kid && kid !== pub.id) return `signed by another key (${kid})`;
  let ok = false;
  try {
    ok = typeof sig === "string" && (await crypto.subtle.verify("Ed25519", pub.key, unb64(sig, "sig"), signed));
  } catch (e) {
    ok = false;
  }
  return ok ? null : `signature does not match its content (${what} edited)`;
}
function withoutSig(doc) {
  const out = {};
  for (const k of Object.keys(doc)) if (k !== "sig") out[k] = doc[k];
  return out;
}

// --- the checks (the same order and words as the other verifiers) --------------------------------------------

function problem(writer, line, message, segment) {
  return `${writer}: ${segment === undefined || segment === null ? `line ${line}` : `segment ${segment}`}: ${message}`;
}

async function readLines(data) {
  const pieces = [];
  let start = 0;
  for (let i = 0; i < data.length; i++) if (data[i] === 10) { pieces.push(data.slice(start, i)); start = i + 1; }
  const terminated = start === data.length;
  if (!terminated) pieces.push(data.slice(start));
  const digests = await Promise.all(pieces.map(sha256)); // WebCrypto hashes them concurrently
  const lines = [];
  for (let n = 0; n < pieces.length; n++) {
    let ev = null;
    try { ev = loads(pieces[n]); } catch (e) { ev = null; }
    lines.push({ number: n + 1, raw: pieces[n], ev: isObject(ev) ? ev : null, digest: digests[n] });
  }
  return { lines, terminated };
}

function checkChain(writer, lines, terminated, out) {
  if (!terminated) out.findings.push(problem(writer, lines.length, "last line is not terminated (truncated write)"));
  let prev = GENESIS;
  for (const ln of lines) {
    if (ln.ev === null) out.findings.push(problem(writer, ln.number, "not valid JSON (edited or corrupted)"));
    else {
      if (!pyEq(ln.ev.seq, ln.number - 1)) {
        const why = `sequence ${pyRepr(ln.ev.seq)}, expected ${ln.number - 1} (line removed or reordered)`;
        out.findings.push(problem(writer, ln.number, why));
      }
      if (ln.ev.prev !== prev) {
        out.findings.push(problem(writer, ln.number, "hash chain broken: previous line was altered, removed or reordered"));
      }
    }
    prev = ln.digest;
  }
}

async function checkManifests(key, writer, rawManifests, lines, pub, out) {
  const bad = (m) => out.findings.push(m);
  const manifests = [];
  rawManifests.forEach((raw, i) => {
    try { manifests.push(withDefaults(loads(raw), MANIFEST_FIELDS, "manifest")); } catch (e) {
      bad(problem(writer, 0, `manifest unreadable (edited or corrupted): ${e.message}`, i));
    }
  });
  if (!manifests.length) {
    if (lines.length) bad(problem(writer, 1, `${lines.length} lines and no manifest: unsigned data`));
    return;
  }
  const signed = manifests.filter((m) => m.sig);
  if (pub) {
    for (let i = 0; i < manifests.length; i++) {
      const m = manifests[i];
      const why = await checkSigned(m.sig, m.key_id, ENCODE.encode(canonical(withoutSig(m), true)), pub, "manifest");
      if (why !== null) bad(problem(writer, 0, `manifest ${why}`, i));
    }
    out.checks.push(`${writer}: ${manifests.length} manifest signatures (Ed25519, key ${pub.id})`);
  } else if (signed.length && signed.length !== manifests.length) {
    manifests.forEach((m, i) => { if (!m.sig) bad(problem(writer, 0, "manifest unsigned while the others are signed", i)); });
  } else if (signed.length) out.notes.push(`${writer}: manifests are signed but not checked (give the public key)`);
  else out.notes.push(`${writer}: manifests are not signed; integrity rests on hashes only`);
  let prevDigest = GENESIS;
  for (let i = 0; i < manifests.length; i++) {
    const m = manifests[i];
    if ((await keyOf(m.session)) !== key) {
      bad(problem(writer, 0, `manifest belongs to session ${pyRepr(m.session)} (spliced from another session)`, i));
    }
    if ((await keyOf(m.writer)) !== writer) {
      bad(problem(writer, 0, `manifest belongs to writer ${pyRepr(m.writer)} (spliced from another stream)`, i));
    }
    if (!pyEq(m.segment, i)) {
      bad(problem(writer, 0, `manifest of segment ${pyStr(m.segment)} found here: a segment is missing or reordered`, i));
    } else if (m.prev_manifest !== prevDigest) {
      bad(problem(writer, 0, "does not follow the previous segment's manifest (segment removed or reordered)", i));
    }
    if (i && manifests[i - 1].final) bad(problem(writer, 0, "manifest after the stream's final manifest (appended later)", i));
    prevDigest = await sha256(ENCODE.encode(canonical(m, true)));
  }
  out.checks.push(`${writer}: ${manifests.length} manifests numbered and linked (SHA-256 of each previous one)`);
  await checkSegments(key, writer, manifests, lines, out);
  if (!manifests[manifests.length - 1].final) {
    out.open.push(
      `${writer}: no final manifest after segment ${manifests.length - 1}: its writer is still running or died ` +
        "before the completer ran, or its last segments were removed",
    );
  }
}

// seq -> the first segment, in stored order, whose first..last holds it: bisection when the ranges are disjoint
// integers (as the recorder writes them), else a scan in stored order (the same answer).
function locator(manifests) {
  const ranges = manifests.map((m, i) => [m.first, m.last, i]);
  const scan = (seq) => {
    const at = ranges.findIndex(([first, last]) => num(first) <= seq && seq <= num(last));
    return at < 0 ? null : at;
  };
  const isInt = (v) => v instanceof PyNum && !v.isFloat;
  if (!ranges.every(([first, last]) => isInt(first) && isInt(last))) return scan;
  const ordered = ranges.map(([f, l, i]) => [f.value, l.value, i]).filter(([f, l]) => f <= l);
  ordered.sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]);
  for (let k = 1; k < ordered.length; k++) if (ordered[k - 1][1] >= ordered[k][0]) return scan;
  return (seq) => {
    let lo = 0, hi = ordered.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (ordered[mid][0] <= seq) lo = mid + 1; else hi = mid; }
    const k = lo - 1;
    return k >= 0 && seq <= ordered[k][1] ? ordered[k][2] : null;
  };
}

async function checkSegments(key, writer, manifests, lines, out) {
  const bad = (m) => out.findings.push(m);
  const segmentOf = locator(manifests);
  const groups = manifests.map(() => []);
  const uncovered = [];
  let current = null;
  for (const ln of lines) {
    const seq = ln.ev ? pyInt(ln.ev.seq) : null;
    const session = seq !== null ? ln.ev.session : undefined;
    if (session !== undefined && session !== null && (await keyOf(session)) !== key) {
      bad(problem(writer, ln.number, `event of session ${pyRepr(session)} (spliced from another session)`));
      continue;
    }
    if (seq !== null) current = segmentOf(seq);
    if (current === null) uncovered.push(ln.number);
    else groups[current].push(ln);
  }
  if (uncovered.length) {
    bad(problem(writer, uncovered[0], `${uncovered.length} lines not covered by any signed manifest (unsigned data)`));
  }
  let lastPosition = 0;
  for (let i = 0; i < manifests.length; i++) {
    const m = manifests[i], got = groups[i];
    const first = num(m.first), last = num(m.last);
    const seqs = got.map((ln) => pyInt(ln.ev ? ln.ev.seq : null)).filter((s) => s !== null);
    const want = [];
    for (let s = first; s <= last; s++) want.push(s);
    if (num(m.count) && !got.length) {
      bad(problem(writer, 0, `missing: events ${pyStr(m.first)}..${pyStr(m.last)} are gone (segment deleted)`, i));
      continue;
    }
    if (got.length && got[0].number < lastPosition) {
      bad(problem(writer, got[0].number, `stored before segment ${i - 1} (segments reordered)`, i));
    }
    lastPosition = Math.max(lastPosition, got.length ? got[got.length - 1].number : 0);
    const same = (a, b) => a.length === b.length && a.every((x, j) => x === b[j]);
    if (!same(seqs, want)) {
      if (same(seqs, want.slice(0, seqs.length))) {
        const end = seqs.length ? seqs[seqs.length - 1] : first - 1;
        bad(problem(writer, 0, `truncated: ends at event ${end}, its manifest says ${pyStr(m.last)}`, i));
      } else {
        const shown = "[" + seqs.slice(0, 5).join(", ") + "]";
        bad(problem(writer, 0, `events ${shown}… do not match its manifest's ${pyStr(m.first)}..${pyStr(m.last)}`, i));
      }
      continue;
    }
    const content = concat(got.flatMap((ln) => [ln.raw, new Uint8Array([10])]));
    if ((await sha256(content)) !== m.sha256) bad(problem(writer, 0, "content differs from its signed manifest (edited)", i));
  }
  out.checks.push(`${writer}: ${lines.length} lines assigned to their segments; each segment's SHA-256 compared`);
}

async function walkDigests(writer, raw, pub, out) {
  const bad = (m) => out.findings.push(m);
  const parsed = new Map();
  const numbers = [...raw.keys()].sort((a, b) => a - b);
  for (const n of numbers) {
    try {
      const d = withDefaults(loads(raw.get(n)), DIGEST_FIELDS, "digest");
      if (!Array.isArray(d.segments) || d.segments.some((s) => !isObject(s)
          || Object.keys(s).some((k) => !LISTED.includes(k)) || LISTED.slice(0, 6).some((k) => !(k in s)))) {
        throw new Error("digest fields are wrong");
      }
      d.segments = d.segments.map((s) => ({ final: false, ...s }));
      parsed.set(n, d);
    } catch (e) {
      bad(`digest ${n} of writer ${writer}: unreadable (edited or corrupted): ${e.message}`);
    }
  }
  if (!parsed.size) return [];
  const walked = [];
  let signed = 0, unsigned = 0;
  for (let n = 0; n <= numbers[numbers.length - 1]; n++) {
    const where = `digest ${n} of writer ${writer}`;
    if (!raw.has(n)) {
      const gap = n === 0 ? "the chain does not start at digest 0" : `the chain jumps from ${n - 1} to the next digest`;
      bad(`${where}: missing (deleted): ${gap}`);
      continue;
    }
    const d = parsed.get(n);
    if (!d) continue;
    if ((await keyOf(d.writer)) !== writer || !pyEq(d.number, n)) {
      bad(`${where}: says it is digest ${pyStr(d.number)} of writer ${pyRepr(d.writer)} (copied or renamed)`);
    }
    const expected = n === 0 ? GENESIS : raw.has(n - 1) ? await sha256(raw.get(n - 1)) : null;
    if (expected !== null && d.prev !== expected) {
      bad(`${where}: does not follow digest ${n - 1} (chain broken: a digest was edited, replaced or reordered)`);
    }
    if (n && parsed.has(n - 1) && parsed.get(n - 1).final) bad(`${where}: follows the writer's closing digest (appended later)`);
    if (pub) {
      const why = await checkSigned(d.sig, d.key_id, ENCODE.encode(canonical(withoutSig(d), false)), pub, "digest");
      if (why !== null) bad(`${where}: ${why}`);
    }
    if (d.sig) signed++; else unsigned++;
    walked.push([where, d]);
  }
  if (!pub && signed && unsigned) bad(`writer ${writer}: ${unsigned} digests unsigned while the others are signed`);
  out.checks.push(`digest chain of writer ${writer}: ${walked.length} digests numbered from 0, linked${pub ? ", signatures" : ""}`);
  return walked;
}

async function checkListing(key, streams, digests, pub, out) {
  const bad = (m) => out.findings.push(m);
  const listed = new Map();
  let count = 0;
  for (const writer of [...digests.keys()].sort()) {
    for (const [where, d] of await walkDigests(writer, digests.get(writer), pub, out)) {
      count++;
      for (const s of d.segments) {
        if ((await keyOf(s.session)) === key) {
          if (!listed.has(s.stream)) listed.set(s.stream, new Map());
          listed.get(s.stream).set(num(s.segment), [s, where]);
        }
      }
    }
  }
  if (count === 0) bad("no digests: nothing shows which segments were stored");
  if (!listed.size) return;
  const session = [...listed.values()][0].values().next().value[0].session;
  if (!streams.size) {
    const total = [...listed.values()].reduce((n, s) => n + s.size, 0);
    const first = [...new Set([...listed.values()].flatMap((s) => [...s.values()].map(([, w]) => w)))].sort()[0];
    bad(`session ${pyRepr(session)} missing (deleted): ${total} segments in ${listed.size} streams listed by ${first}`);
    return;
  }
  for (const stream of [...listed.keys()].sort()) {
    const segments = listed.get(stream);
    const numbers = [...segments.keys()].sort((a, b) => a - b);
    const data = streams.get(await keyOf(stream));
    if (!data) {
      bad(`session ${pyRepr(session)}: stream ${stream} missing (deleted): segments ${numbers[0]}..${numbers[numbers.length - 1]} ` +
        `listed by ${segments.get(numbers[0])[1]}`);
      continue;
    }
    const manifests = new Map();
    for (const raw of data.manifests) {
      let m;
      try { m = withDefaults(loads(raw), MANIFEST_FIELDS, "manifest"); } catch (e) { continue; }
      if (!manifests.has(num(m.segment))) manifests.set(num(m.segment), m);
    }
    for (const n of numbers) {
      const [entry, where] = segments.get(n);
      const m = manifests.get(n);
      if (!m) bad(`session ${pyRepr(session)}: stream ${stream}: segment ${n} missing (deleted), listed by ${where}`);
      else if (m.sha256 !== entry.sha256 || !pyEq(m.first, entry.first) || !pyEq(m.last, entry.last)) {
        bad(`session ${pyRepr(session)}: stream ${stream}: segment ${n} differs from ${where} (replaced)`);
      }
    }
  }
  out.checks.push(`every segment the digests list for this session is present with the listed SHA-256`);
}

function readBundle(doc) {
  if (!isObject(doc) || doc.format !== FORMAT) throw new NotABundle(`not a session bundle (format is not '${FORMAT}')`);
  if (!pyEq(doc.version, 1) || typeof doc.version === "boolean") {
    throw new NotABundle(`bundle version ${pyRepr(doc.version)} is not supported (this reads 1)`);
  }
  if (typeof doc.session !== "string" || !SAFE.test(doc.session) || doc.session.includes("..")) {
    if (!(typeof doc.session === "string" && /^h-[0-9a-f]{40}$/.test(doc.session))) {
      throw new NotABundle("bundle 'session' must be a stored session key");
    }
  }
  for (const name of ["streams", "digests"]) if (!Array.isArray(doc[name])) throw new NotABundle(`bundle '${name}' must be a list`);
  const streams = new Map();
  doc.streams.forEach((st, i) => {
    const writer = isObject(st) ? st.writer : undefined;
    if (typeof writer !== "string" || !SAFE.test(writer) || writer.includes("..") || streams.has(writer)) throw new NotABundle(`streams[${i}].writer must be a distinct stored writer key`);
    if (!Array.isArray(st.manifests)) throw new NotABundle(`streams[${i}].manifests must be a list`);
    streams.set(writer, {
      data: unb64(st.data, `streams[${i}].data`),
      manifests: st.manifests.map((m, j) => unb64(m, `streams[${i}].manifests[${j}]`)),
    });
  });
  const digests = new Map();
  doc.digests.forEach((d, i) => {
    const writer = isObject(d) ? d.writer : undefined;
    const number = isObject(d) ? pyInt(d.number) : null;
    if (typeof writer !== "string" || number === null || typeof d.number === "boolean" || number < 0) {
      throw new NotABundle(`digests[${i}] needs a writer and a number`);
    }
    if (!digests.has(writer)) digests.set(writer, new Map());
    if (digests.get(writer).has(number)) throw new NotABundle(`digests[${i}]: digest ${number} of writer '${writer}' appears twice`);
    digests.get(writer).set(number, unb64(d.data, `digests[${i}].data`));
  });
  let embedded = null;
  if (doc.public_key !== null && doc.public_key !== undefined) {
    const raw = unb64(isObject(doc.public_key) ? doc.public_key.ed25519 : undefined, "public_key.ed25519");
    if (raw.length !== 32) throw new NotABundle("public_key.ed25519 must be 32 bytes");
    embedded = raw;
  }
  return { key: doc.session, streams, digests, embedded };
}

// Verify a parsed bundle document; ``pem`` is the published key (PEM) or "" to use the bundle's own key.
async function verifyBundle(doc, pem) {
  const { key, streams, digests, embedded } = readBundle(doc);
  const out = { findings: [], open: [], notes: [], checks: [], events: 0 };
  let pub = pem && pem.trim() ? await keyFromPem(pem) : null;
  if (!pub && embedded) {
    pub = await importKey(embedded);
    out.notes.push(`signatures checked against the key inside the bundle (${pub.id}): compare it with the published key`);
  }
  if (!streams.size) out.findings.push("the bundle holds no stream");
  for (const writer of [...streams.keys()].sort()) {
    const st = streams.get(writer);
    const { lines, terminated } = await readLines(st.data);
    out.events += lines.filter((ln) => ln.ev !== null).length;
    checkChain(writer, lines, terminated, out);
    out.checks.push(`${writer}: hash chain of ${lines.length} lines (each line's prev = SHA-256 of the line before)`);
    await checkManifests(key, writer, st.manifests, lines, pub, out);
  }
  await checkListing(key, streams, digests, pub, out);
  out.findings.sort();
  out.open.sort();
  return out;
}

// --- the page -------------------------------------------------------------------------------------------------

function show(out, error) {
  const result = document.getElementById("result");
  const list = (title, items, cls) => {
    if (!items.length) return;
    const h = document.createElement("h3"); h.textContent = title; result.append(h);
    const ul = document.createElement("ul"); ul.className = cls;
    for (const item of items) { const li = document.createElement("li"); li.textContent = item; ul.append(li); }
    result.append(ul);
  };
  result.replaceChildren();
  const verdict = document.createElement("p");
  verdict.id = "verdict";
  if (error) {
    verdict.textContent = `Not a bundle: ${error}`;
    verdict.className = "bad";
    result.append(verdict);
    document.getElementById("result-json").textContent = JSON.stringify({ error });
    return;
  }
  const ok = !out.findings.length && !out.open.length;
  verdict.textContent = ok
    ? `Intact: ${out.events} events; every chain, manifest and digest verified in this browser.`
    : `${out.findings.length + out.open.length} finding(s): this recording was altered or is incomplete.`;
  verdict.className = ok ? "good" : "bad";
  result.append(verdict);
  list("Findings", out.findings, "findings");
  list("Streams without their final manifest", out.open, "findings");
  list("Checks run", out.checks, "checks");
  list("Notes", out.notes, "notes");
  document.getElementById("result-json").textContent = JSON.stringify({ findings: out.findings, open: out.open, ok });
}

async function run() {
  const file = document.getElementById("bundle").files[0];
  document.getElementById("result-json").textContent = "";
  if (!file) return;
  try {
    const doc = loads(new Uint8Array(await file.arrayBuffer()));
    show(await verifyBundle(doc, document.getElementById("key").value));
  } catch (e) {
    show(null, e.message || String(e));
  }
}

if (typeof document !== "undefined") {
  document.getElementById("verify").addEventListener("click", run);
}
