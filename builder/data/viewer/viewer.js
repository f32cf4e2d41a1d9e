"use strict";
// lpt view: renders one page of the embedded records at a time. The state (tab, filters, search, page) lives in
// the URL hash, e.g. #view=traces&stage=expansion&label=wrong&q=texture&page=2 (read on load and on change).

const D = JSON.parse(document.getElementById("lpt-data").textContent);
// served (`lpt view RUN --serve`): D holds no records; each page of them is fetched from the server (SERVE.api)
const SERVE = D.serve || null;
const FL = D.flags, META = D.meta;
let T, M, S, E, P, IMG, nM, nS, nE, nP;
const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const TYPE_TITLE = {
  O: "a correct simple thought", X: "a wrong simple thought",
  O_O: "a correct simple thought, expanded, still correct", O_X: "a correct simple thought, expanded, now wrong",
  X_O: "a wrong simple thought whose expansion reaches the right answer", X_X: "a wrong simple thought, expanded, still wrong",
};
const REASON_TITLE = {
  unparseable: "no answer could be parsed", duplicate: "an exact repeat of another sample",
  bad_word: "a bad word (as a word) in the added text", no_end_of_thought: "the model never closed </think>",
};
const DEFAULTS = {view: "traces", stage: "all", type: "", label: "", kept: "", cue: "", qt: "", kind: "", set: "",
                  valid: "", q: "", mcq: "", page: "1"};
const FILTERS = {  // which controls each tab shows
  traces: ["stage", "type", "label", "kept", "cue", "qt", "set"],
  pairs: ["kind", "qt"],
  mcqs: ["valid", "qt"],
};
let st = {...DEFAULTS};

// ------------------------------------------------------------------------------------------ derived, once
const typeOfS = i => (S.f[i] & FL.correct) ? "O" : "X";
const typeOfE = j => ((E.f[j] & FL.simple_correct) ? "O" : "X") + "_" + ((E.f[j] & FL.correct) ? "O" : "X");
const typeLabel = t => t.replace("_", "→");
const kindLabel = k => k.split(">").map(typeLabel).join(" ≻ ");
let expStart, pairsOfS, pairsOfE, pairsOfM, sOfM, sOkOfM, eOfM, eKeptOfM, eOkOfM, XS, nX, inXS, inXE, pairOrder;
const member = (list, n) => { const u = new Uint8Array(n); for (const k of list) u[k] = 1; return u; };
function useData(d) {  // the records (all of them, or a served page of them) and what is derived from them
  T = d.tables; M = d.mcq; S = d.simple; E = d.exp; P = d.pairs; IMG = d.images;
  nM = M.id.length; nS = S.id.length; nE = E.id.length; nP = P.k.length;
  expStart = new Int32Array(nS + 1);  // expansions are sorted by their simple thought: E[expStart[i]..expStart[i+1])
  const cnt = new Int32Array(nS);
  for (let j = 0; j < nE; j++) cnt[E.s[j]]++;
  for (let i = 0; i < nS; i++) expStart[i + 1] = expStart[i] + cnt[i];
  // configs of plugins (d.sets): which simple thoughts / expansions each one holds
  XS = d.sets; nX = XS.name.length;
  inXS = XS.s.map(l => member(l, nS)); inXE = XS.e.map(l => member(l, nE));
  pairOrder = Array.from({length: nP}, (_, p) => p).sort((a, b) => P.m[a] - P.m[b] || P.k[a] - P.k[b] || a - b);
  lcCache.clear(); hitCache = {q: null};
  if (d.agg) {  // a served page: the counts over the whole run, per record of the page
    ({pairsOfS, pairsOfE, pairsOfM, sOfM, sOkOfM, eOfM, eKeptOfM, eOkOfM} = d.agg);
    return;
  }
  pairsOfS = new Int32Array(nS); pairsOfE = new Int32Array(nE); pairsOfM = new Int32Array(nM);
  for (let p = 0; p < nP; p++) {
    pairsOfM[P.m[p]]++;
    for (const r of [P.c[p], P.r[p]]) if (r >= 0) (r & 1 ? pairsOfE : pairsOfS)[r >> 1]++;
  }
  sOfM = new Int32Array(nM); sOkOfM = new Int32Array(nM); eOfM = new Int32Array(nM); eKeptOfM = new Int32Array(nM);
  eOkOfM = new Int32Array(nM);
  for (let i = 0; i < nS; i++) { sOfM[S.m[i]]++; if (S.f[i] & FL.correct) sOkOfM[S.m[i]]++; }
  for (let j = 0; j < nE; j++) {
    const m = S.m[E.s[j]];
    eOfM[m]++;
    if (E.f[j] & FL.keep) { eKeptOfM[m]++; if (E.f[j] & FL.correct) eOkOfM[m]++; }
  }
}

// ----------------------------------------------------------------------------------------------- helpers
const $ = id => document.getElementById(id);
const fmt = n => Number(n).toLocaleString("en-US");
const ESC = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ESC[c]);
const escRe = s => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const plural = (n, one, many) => `${fmt(n)} ${n === 1 ? one : (many || one + "s")}`;

// text with marks: pats = [[RegExp /g, class], …]; overlapping matches keep the earlier one
function marked(text, pats) {
  text = String(text ?? "");
  const hits = [];
  for (const [re, cls] of pats) {
    if (!re) continue;
    re.lastIndex = 0;
    let m;
    while ((m = re.exec(text)) !== null) {
      if (!m[0].length) { re.lastIndex++; continue; }
      hits.push([m.index, m.index + m[0].length, cls]);
      if (hits.length > 2000) break;
    }
  }
  if (!hits.length) return esc(text);
  hits.sort((a, b) => a[0] - b[0] || b[1] - a[1]);
  let out = "", at = 0;
  for (const [s, e, cls] of hits) {
    if (s < at) continue;
    out += esc(text.slice(at, s)) + `<mark class="${cls}">` + esc(text.slice(s, e)) + "</mark>";
    at = e;
  }
  return out + esc(text.slice(at));
}
let searchRe = null;  // the current search as a RegExp (global, case-insensitive), or null
const hl = text => marked(text, [[searchRe, "hit"]]);
const badRe = w => w ? new RegExp("(?<![\\w'])" + escRe(w) + "(?![\\w'])", "gi") : null;

// ------------------------------------------------------------------------------------------------ search
const lcCache = new Map();
function lc(arr, i) {  // lower-cased strings, built the first time a search needs them
  let c = lcCache.get(arr);
  if (!c) { c = new Array(arr.length); lcCache.set(arr, c); }
  if (c[i] === undefined) c[i] = String(arr[i] ?? "").toLowerCase();
  return c[i];
}
let hitCache = {q: null};
function hits(q) {  // per-query match arrays (null when no search)
  if (!q) return null;
  if (hitCache.q === q) return hitCache;
  const mq = new Uint8Array(nM), sq = new Uint8Array(nS), eq = new Uint8Array(nE);
  const optHit = T.opts.map(o => o.some(x => String(x).toLowerCase().includes(q)));
  for (let m = 0; m < nM; m++)
    mq[m] = lc(M.q, m).includes(q) || optHit[M.o[m]] || M.id[m].startsWith(q) || lc(IMG.id, M.img[m]).includes(q) ? 1 : 0;
  for (let i = 0; i < nS; i++)
    sq[i] = lc(S.t, i).includes(q) || lc(S.a, i).includes(q) || S.id[i].startsWith(q)
      || (S.raw[i] != null && lc(S.raw, i).includes(q)) ? 1 : 0;
  for (let j = 0; j < nE; j++)
    eq[j] = lc(E.x, j).includes(q) || lc(E.a, j).includes(q) || E.id[j].startsWith(q) || (E.pre[j] && lc(E.pre, j).includes(q))
      || (E.pre[j] == null && sq[E.s[j]] && lc(S.t, E.s[j]).includes(q)) ? 1 : 0;
  hitCache = {q, mq, sq, eq};
  return hitCache;
}
function pairSideHit(h, ref, text, q) {
  if (ref < 0) return String(text || "").toLowerCase().includes(q);
  return ref & 1 ? h.eq[ref >> 1] : h.sq[ref >> 1];
}

// ---------------------------------------------------------------------------------------------- filtering
function mcqOk(m) {
  if (st.qt && T.qt[M.qt[m]] !== st.qt) return false;
  if (st.mcq && !M.id[m].startsWith(st.mcq)) return false;
  return true;
}
function keptOk(f, r) {
  if (!st.kept) return true;
  if (st.kept === "kept") return !!(f & FL.keep);
  if (st.kept === "dropped") return !(f & FL.keep);
  return !(f & FL.keep) && ("r:" + T.reason[r]) === st.kept;
}
function labelOk(f) {
  if (st.label === "correct") return !!(f & FL.correct);
  if (st.label === "wrong") return !(f & FL.correct);
  if (st.label === "unparsed") return !(f & FL.parsed);
  return true;
}
function setOk(f, nPairs, isE, k) {
  if (st.set.startsWith("x:")) { const x = XS.name.indexOf(st.set.slice(2)); return x >= 0 && (isE ? inXE : inXS)[x][k] === 1; }
  if (st.set === "sft") return !!(f & FL.sft);
  if (st.set === "dpo") return nPairs > 0;
  if (st.set === "none") return !(f & FL.sft) && !nPairs;
  return true;
}
function traceStream() {
  const h = hits(st.q), out = [];
  const wantS = st.stage !== "expansion" && !st.cue && (!st.type || st.type.length === 1);
  const wantE = st.stage !== "simple" && (!st.type || st.type.length === 3);
  const cueIdx = st.cue ? T.cue.indexOf(st.cue) : -1;
  for (let i = 0; i < nS; i++) {
    const m = S.m[i];
    if (!mcqOk(m)) continue;
    const mHit = h ? h.mq[m] : 1;
    if (wantS && (!st.type || typeOfS(i) === st.type) && labelOk(S.f[i]) && keptOk(S.f[i], S.r[i])
        && setOk(S.f[i], pairsOfS[i], 0, i) && (!h || mHit || h.sq[i])) out.push(2 * i);
    if (!wantE) continue;
    for (let j = expStart[i]; j < expStart[i + 1]; j++) {
      if (st.cue && E.c[j] !== cueIdx) continue;
      if (st.type && typeOfE(j) !== st.type) continue;
      if (!labelOk(E.f[j]) || !keptOk(E.f[j], E.r[j]) || !setOk(E.f[j], pairsOfE[j], 1, j)) continue;
      if (h && !mHit && !h.eq[j]) continue;
      out.push(2 * j + 1);
    }
  }
  return out;
}
function pairStream() {
  const h = hits(st.q), out = [];
  const kIdx = st.kind ? T.kind.indexOf(st.kind) : -1;
  for (const p of pairOrder) {
    if (st.kind && P.k[p] !== kIdx) continue;
    if (!mcqOk(P.m[p])) continue;
    if (h && !h.mq[P.m[p]] && !pairSideHit(h, P.c[p], P.ct[p], st.q) && !pairSideHit(h, P.r[p], P.rt[p], st.q)) continue;
    out.push(p);
  }
  return out;
}
function mcqStream() {
  const h = hits(st.q), out = [];
  for (let m = 0; m < nM; m++) {
    if (!mcqOk(m)) continue;
    if (st.valid === "valid" && !M.ok[m]) continue;
    if (st.valid === "invalid" && M.ok[m]) continue;
    if (h && !h.mq[m]) continue;
    out.push(m);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------- rendering
function optionsList(optIdx, gold, pred) {
  const opts = T.opts[optIdx] || [];
  return `<ol class="opts">` + opts.map((o, k) =>
    `<li class="${k === gold ? "gold" : ""}"><span class="l">(${LETTERS[k]})</span>${hl(o)}</li>`).join("") + `</ol>`;
}
function imageBox(img) {
  const src = IMG.src[img], id = IMG.id[img];
  if (src) return `<figure class="thumb"><img src="${src}" alt="image ${esc(id)}" data-img="${img}" loading="lazy"></figure>`;
  return `<figure class="thumb"><div class="noimg">image ${esc(id)}<br>is not on this machine</div></figure>`;
}
function mcqHead(m, optIdx, gold, continued) {
  const desc = IMG.desc[M.img[m]];
  const links = [];
  if ((st.view !== "traces" || st.mcq !== M.id[m]) && sOfM[m]) links.push(`<a href="${link({view: "traces", mcq: M.id[m]})}">all its traces (${fmt(sOfM[m] + eOfM[m])})</a>`);
  if (pairsOfM[m] && (st.view !== "pairs" || st.mcq !== M.id[m])) links.push(`<a href="${link({view: "pairs", mcq: M.id[m]})}">its DPO pairs (${fmt(pairsOfM[m])})</a>`);
  return `<div class="mcq-head">${imageBox(M.img[m])}<div class="mcq-body">
    <div class="q">${hl(M.q[m] || "(no question)")}${continued ? ` <span class="cont">(continued)</span>` : ""}</div>
    ${optionsList(optIdx, gold, -1)}
    <div class="qmeta"><span>${esc(T.qt[M.qt[m]] || "no question type")}</span><span>image <code>${esc(IMG.id[M.img[m]])}</code></span>
      <span>question <code>${esc(M.id[m])}</code></span>${M.ok[m] ? "" : `<span class="invalid">invalid: ${esc(M.why[m])}${M.at[m] ? ` (answer as written: “${esc(M.at[m])}”)` : ""}</span>`}${links.map(l => `<span>${l}</span>`).join("")}</div>
    ${desc ? `<details class="desc"><summary>image description (what stages 1 and 3 read)</summary><p>${hl(desc)}</p></details>` : ""}
  </div></div>`;
}
function answerLine(optIdx, gold, pred, answer, f) {
  const opts = T.opts[optIdx] || [];
  const goldTxt = gold >= 0 ? `(${LETTERS[gold]}) ${esc(opts[gold] ?? "")}` : "–";
  let got;
  if (!(f & FL.parsed)) got = `<span class="bad">no answer parsed</span>`;
  else if (pred < 0) got = `<b>${hl(answer)}</b> <span class="bad">names no option</span>`;
  else got = `<b>${hl(answer)}</b> → (${LETTERS[pred]}) ${esc(opts[pred] ?? "")} ${pred === gold ? '<span class="right">✓</span>' : '<span class="bad">✗</span>'}`;
  return `<div class="ans">answered ${got}<span class="muted"> · gold ${goldTxt}</span></div>`;
}
const KEPT_TITLE = {
  simple: "kept: an answer was parsed and it repeats no other sample",
  expansion: "kept: it closed its thought, its answer was parsed, no bad word in the added text, it repeats no other expansion",
};
function labelChips(type, f, reason, bad, nPairs, stage, parentDropped) {
  const c = [`<span class="chip type t${type}" title="${esc(TYPE_TITLE[type])}">${typeLabel(type)}</span>`];
  c.push(f & FL.correct ? `<span class="chip ok">correct</span>` : `<span class="chip wrong">wrong</span>`);
  if (f & FL.keep) c.push(parentDropped
    ? `<span class="chip drop" title="the expansion passed stage 3's filters, but its simple thought was dropped, so no set uses it">kept · its simple thought was dropped</span>`
    : `<span class="chip kept" title="${KEPT_TITLE[stage]}">kept</span>`);
  else {
    const r = T.reason[reason] || "dropped";
    c.push(`<span class="chip drop" title="${esc(REASON_TITLE[r] || r)}">dropped · ${esc(r.replace(/_/g, " "))}${bad && r === "bad_word" ? ` “${esc(bad)}”` : ""}</span>`);
  }
  if (bad && T.reason[reason] !== "bad_word") c.push(`<span class="chip drop" title="the first bad word in the added text">bad word “${esc(bad)}”</span>`);
  if (f & FL.sft) c.push(`<span class="chip sft" title="${esc(META.sft_from)}">in SFT</span>`);
  if (nPairs) c.push(`<span class="chip dpo" title="${esc(META.dpo_from)}">in ${plural(nPairs, "DPO pair")}</span>`);
  return c.join("");
}
function setChips(isE, k) {  // the plugin configs a trace is in
  let c = "";
  for (let x = 0; x < nX; x++) if ((isE ? inXE : inXS)[x][k])
    c += `<span class="chip xset" title="${esc(XS.desc[x] || "a plugin's config")}">in ${esc(XS.name[x])}</span>`;
  return c;
}
function prefixOf(j) {
  if (E.pre[j] != null) return E.pre[j];
  const t = String(S.t[E.s[j]] || "").replace(/\s+$/, "");
  return (t.endsWith(".") ? t : t + ".") + (T.sep[E.sep[j]] ?? " ");
}
const openPre = new Set();  // expansions whose whole simple-thought part is shown
function expansionText(j) {
  const pre = prefixOf(j), x = String(E.x[j] ?? ""), cue = T.cue[E.c[j]] || "";
  let preHtml;
  const words = pre.trim().split(/\s+/).length;
  const preHit = searchRe && (searchRe.lastIndex = 0, searchRe.test(pre));
  if (openPre.has(j) || preHit || pre.length <= 260) preHtml = `<span class="pre">${hl(pre)}</span>`;
  else {
    let tail = pre.slice(-200);
    const nl = tail.replace(/\s+$/, "").lastIndexOf("\n");
    tail = nl >= 0 && tail.length - nl > 40 ? tail.slice(nl + 1) : tail.slice(Math.max(0, tail.indexOf(" ") + 1));
    preHtml = `<button class="more" data-pre="${j}" title="show the whole simple thought">… ${plural(words, "word")} of the simple thought</button><span class="pre short" data-pre="${j}">${hl(tail)}</span>`;
  }
  const pats = [[searchRe, "hit"], [badRe(E.b[j]), "badw"]];
  let body;
  if (cue && x.startsWith(cue)) body = `<mark class="cue">${esc(cue)}</mark><span class="add">${marked(x.slice(cue.length), pats)}</span>`;
  else body = `<span class="add">${marked(x, pats)}</span>`;
  const after = E.after[j] != null ? `<div class="raw"><span>${E.after[j] ? "after the thought (no answer could be parsed):" : "the model never closed the thought (no &lt;/think&gt;)"}</span>${E.after[j] ? `<div class="text">${hl(E.after[j])}</div>` : ""}</div>` : "";
  return `<div class="text">${preHtml}${body}</div>${after}`;
}
function simpleCard(i, solo, own = "") {
  return `<article class="card s${solo ? " solo" : ""}" data-stage="simple" data-type="${typeOfS(i)}" data-correct="${S.f[i] & FL.correct ? 1 : 0}" data-kept="${S.f[i] & FL.keep ? 1 : 0}" data-id="${S.id[i]}">
    <div class="row1"><span class="what">Stage 2 · simple thought #${S.n[i] + 1}</span>${labelChips(typeOfS(i), S.f[i], S.r[i], "", pairsOfS[i], "simple", false)}${setChips(0, i)}<span class="id" title="sample_id">${esc(S.id[i])}</span></div>
    ${own}${answerLine(S.o[i], S.g[i], S.p[i], S.a[i], S.f[i])}
    <div class="text">${hl(S.t[i])}</div>${S.raw[i] != null ? `<div class="raw"><span>what the model wrote (no answer could be parsed):</span><div class="text">${hl(S.raw[i]) || "<i>(nothing)</i>"}</div></div>` : ""}</article>`;
}
function expansionCard(j, afterItsSimple, own = "") {
  const i = E.s[j], type = typeOfE(j), cue = T.cue[E.c[j]];
  return `<article class="card e${afterItsSimple ? "" : " solo"}" data-stage="expansion" data-type="${type}" data-correct="${E.f[j] & FL.correct ? 1 : 0}" data-kept="${E.f[j] & FL.keep ? 1 : 0}" data-cue="${esc(cue)}" data-id="${E.id[j]}">
    <div class="row1"><span class="what">Stage 3 · expansion #${E.n[j] + 1} of simple thought #${S.n[i] + 1}</span><span class="chip cue" title="the cue the reasoning model continued from">cue “${esc(cue)}”</span>${labelChips(type, E.f[j], E.r[j], E.b[j], pairsOfE[j], "expansion", !(S.f[i] & FL.keep))}${setChips(1, j)}<span class="id" title="expansion_id">${esc(E.id[j])}</span></div>
    ${own}${answerLine(S.o[i], S.g[i], E.p[j], E.a[j], E.f[j])}
    ${expansionText(j)}</article>`;
}
function sideHtml(ref, text, role) {
  if (ref < 0) return `<div class="side ${role}"><h3>${role} <span class="muted">(exported text; not among the raw records)</span></h3><div class="text">${hl(text)}</div></div>`;
  const isE = ref & 1, k = ref >> 1, i = isE ? E.s[k] : k, f = isE ? E.f[k] : S.f[k];
  const type = isE ? typeOfE(k) : typeOfS(k);
  const p = isE ? E.p[k] : S.p[k], opts = T.opts[S.o[i]] || [];
  const what = isE ? `expansion #${E.n[k] + 1} of simple thought #${S.n[i] + 1}, cue “${esc(T.cue[E.c[k]])}”` : `simple thought #${S.n[i] + 1}`;
  const ans = p >= 0 ? `(${LETTERS[p]}) ${esc(opts[p] ?? "")}` : "no option";
  return `<div class="side ${role}"><h3>${role} <span class="chip type t${type}" title="${esc(TYPE_TITLE[type])}">${typeLabel(type)}</span>
      <span class="chip ${f & FL.correct ? "ok" : "wrong"}">${ans} ${f & FL.correct ? "✓" : "✗"}</span><span class="muted">${what}</span></h3>
    ${isE ? expansionText(k) : `<div class="text">${hl(S.t[k])}</div>`}</div>`;
}
function pairCard(p) {
  const kind = T.kind[P.k[p]];
  return `<article class="card pair solo" data-kind="${esc(kind)}"><div class="row1"><span class="chip kind" title="chosen ≻ rejected">${esc(kindLabel(kind))}</span>
    <span class="muted small">${esc(TYPE_TITLE[kind.split(">")[0]])} preferred over ${esc(TYPE_TITLE[kind.split(">")[1]])}</span></div>
    <div class="sides">${sideHtml(P.c[p], P.ct[p], "chosen")}${sideHtml(P.r[p], P.rt[p], "rejected")}</div></article>`;
}
function mcqCard(m) {
  const chips = [
    `<span class="chip">${plural(sOfM[m], "simple thought")} · ${fmt(sOkOfM[m])} correct</span>`,
    `<span class="chip">${plural(eOfM[m], "expansion")} · ${fmt(eKeptOfM[m])} kept · ${fmt(eOkOfM[m])} kept correct</span>`,
  ];
  if (pairsOfM[m]) chips.push(`<span class="chip dpo">${plural(pairsOfM[m], "DPO pair")}</span>`);
  return `<section class="group mcq" data-id="${M.id[m]}">${mcqHead(m, M.o[m], M.g[m], false)}
    <div class="card"><div class="mcq-stats">${chips.join("")}${M.ok[m] ? `<span class="chip ok">valid</span>` : `<span class="chip wrong">invalid: ${esc(M.why[m])}</span>`}</div></div></section>`;
}

// ------------------------------------------------------------------------------------------------- pages
function link(over) {
  const s = {...DEFAULTS, ...over};
  const parts = [];
  for (const k of Object.keys(DEFAULTS)) if (s[k] !== DEFAULTS[k]) parts.push(k + "=" + encodeURIComponent(s[k]));
  return "#" + parts.join("&");
}
function readState() {
  st = {...DEFAULTS};
  const params = new URLSearchParams(location.search.slice(1));
  for (const [k, v] of new URLSearchParams(location.hash.slice(1))) params.set(k, v);
  for (const [k, v] of params) if (k in DEFAULTS) st[k] = v;
  if (!FILTERS[st.view]) st.view = "traces";
  st.q = st.q.trim().toLowerCase();
}
function writeState() {
  const h = link(st);
  if (location.hash !== h && !(h === "#" && !location.hash)) history.replaceState(null, "", h || "#");
}
let current = [], total = 0;  // the matching items (here: all of them; served: the page's), how many match
let served = null, asked = 0;  // served: the last page the server sent; asked: the number of the last request
function render() {
  const t0 = performance.now();
  searchRe = st.q ? new RegExp(escRe(st.q), "gi") : null;
  if (SERVE) { fetchPage(t0); return; }
  current = st.view === "pairs" ? pairStream() : st.view === "mcqs" ? mcqStream() : traceStream();
  total = current.length;
  const pages = Math.max(1, Math.ceil(current.length / PAGE_SIZE));
  let page = Math.min(Math.max(1, parseInt(st.page, 10) || 1), pages);
  st.page = String(page);
  const slice = current.slice((page - 1) * PAGE_SIZE, page * PAGE_SIZE);
  const before = current[(page - 1) * PAGE_SIZE - 1];
  const mcqOfRef = ref => S.m[ref & 1 ? E.s[ref >> 1] : ref >> 1];
  draw(slice, pages, page, before !== undefined && slice.length > 0 && st.view === "traces" && mcqOfRef(before) === mcqOfRef(slice[0]), t0);
}
function fetchPage(t0) {  // served: the server filters, searches and pages; the page's records come back
  const n = ++asked, params = new URLSearchParams(link(st).slice(1));
  params.set("size", String(PAGE_SIZE));
  document.body.dataset.loading = "1";
  fetch(SERVE.api + "?" + params).then(r => r.ok ? r.json() : r.text().then(t => { throw new Error(t); })).then(res => {
    if (n !== asked) return;  // a later request is under way
    served = res;
    redraw(t0);
  }).catch(e => {
    if (n !== asked) return;
    $("list").innerHTML = `<div class="empty"><p>The server did not answer: ${esc(e.message || e)}</p></div>`;
    document.body.dataset.error = String(e.message || e);
  }).finally(() => { if (n === asked) delete document.body.dataset.loading; });
}
function redraw(t0) {  // served: draw the last page again (e.g. a simple thought unfolded)
  if (!SERVE) { render(); return; }
  useData(served.data);
  current = served.refs; total = served.matches;
  st.page = String(served.page);
  draw(current, served.pages, served.page, served.continued, t0 ?? performance.now());
  document.body.dataset.ready = "1";
}
function draw(slice, pages, page, continuedFirst, t0) {
  let html = "";
  if (!slice.length) html = `<div class="empty"><p>Nothing matches these filters.</p><button onclick="location.hash=''">show everything</button></div>`;
  else if (st.view === "mcqs") html = slice.map(mcqCard).join("");
  else if (st.view === "pairs") {
    let open = -1;
    for (const p of slice) {
      if (P.m[p] !== open) {
        if (open >= 0) html += "</section>";
        open = P.m[p];
        const first = [P.c[p], P.r[p]].find(r => r >= 0);
        const si = first === undefined ? -1 : (first & 1 ? E.s[first >> 1] : first >> 1);
        html += `<section class="group">` + (si >= 0 ? mcqHead(open, S.o[si], S.g[si], false) : mcqHead(open, M.o[open], M.g[open], false));
      }
      html += pairCard(p);
    }
    html += "</section>";
  } else {
    let open = -1, lastSimple = -1, headOpts = -1;
    for (const ref of slice) {
      const isE = ref & 1, k = ref >> 1, i = isE ? E.s[k] : k, m = S.m[i];
      if (m !== open) {
        if (open >= 0) html += "</section>";
        const continued = ref === slice[0] && continuedFirst;
        html += `<section class="group" data-mcq="${M.id[m]}">` + mcqHead(m, S.o[i], S.g[i], continued);
        open = m;
        lastSimple = -1;
        headOpts = S.o[i];
      }
      const own = S.o[i] !== headOpts ? `<div class="opts-own">shown with its own option order: ${(T.opts[S.o[i]] || []).map((o, n) => `(${LETTERS[n]}) ${esc(o)}`).join(" ")}</div>` : "";
      if (isE) html += expansionCard(k, lastSimple === i, own);
      else { html += simpleCard(i, false, own); lastSimple = i; }
    }
    html += "</section>";
  }
  $("list").innerHTML = html;
  renderBar(pages, page);
  writeState();
  document.body.dataset.view = st.view;
  document.body.dataset.matches = String(total);
  document.body.dataset.renderMs = (performance.now() - t0).toFixed(1);
}

const noun = () => st.view === "pairs" ? ["DPO pair", "DPO pairs"] : st.view === "mcqs" ? ["MCQ", "MCQs"] : ["trace", "traces"];
function pagerHtml(pages, page) {
  const [one, many] = noun();
  const from = total ? (page - 1) * PAGE_SIZE + 1 : 0, to = Math.min(page * PAGE_SIZE, total);
  return `<span class="count"><b id="match-count">${fmt(total)}</b> ${total === 1 ? one : many} match` +
    (total ? ` · showing ${fmt(from)}–${fmt(to)}` : "") + `</span>
    <button data-page="1" ${page <= 1 ? "disabled" : ""} title="first page">«</button>
    <button data-page="${page - 1}" ${page <= 1 ? "disabled" : ""} title="previous page (←)">‹ prev</button>
    <span>page <b>${fmt(page)}</b> of ${fmt(pages)}</span>
    <button data-page="${page + 1}" ${page >= pages ? "disabled" : ""} title="next page (→)">next ›</button>
    <button data-page="${pages}" ${page >= pages ? "disabled" : ""} title="last page">»</button>`;
}

// the bar: tabs, filters, search, pager (built once; values and visibility refreshed on each render)
function countBy(n, key) { const c = new Map(); for (let i = 0; i < n; i++) { const k = key(i); c.set(k, (c.get(k) || 0) + 1); } return c; }
const CONTROLS = {};
function barCounts() {  // per filter value (by name), over all the records; served: the server's counts
  if (SERVE) {
    const b = SERVE.bar, m = k => new Map(b[k]);
    return {n: b.n, type: m("type"), reason: m("reason"), cue: m("cue"), qt: m("qt"), kind: m("kind")};
  }
  const named = (c, names) => new Map([...c].map(([k, v]) => [names[k], v]));
  const type = countBy(nS, typeOfS); for (const [k, v] of countBy(nE, typeOfE)) type.set(k, v);
  const reason = new Map();
  for (let i = 0; i < nS; i++) if (!(S.f[i] & FL.keep)) reason.set(S.r[i], (reason.get(S.r[i]) || 0) + 1);
  for (let j = 0; j < nE; j++) if (!(E.f[j] & FL.keep)) reason.set(E.r[j], (reason.get(E.r[j]) || 0) + 1);
  return {n: {S: nS, E: nE, M: nM, P: nP}, type, reason: named(reason, T.reason), cue: named(countBy(nE, j => E.c[j]), T.cue),
          qt: named(countBy(nM, m => M.qt[m]), T.qt), kind: named(countBy(nP, p => P.k[p]), T.kind)};
}
let pairsTotal = 0;
function buildBar() {
  const c = barCounts(), typeCount = c.type, N = c.n;
  pairsTotal = N.P;
  const sel = (name, label, opts, title) => ({name, label, opts, title});
  const defs = [
    sel("stage", "stage", [["all", "all traces"], ["simple", `stage 2 · simple thoughts (${fmt(N.S)})`], ["expansion", `stage 3 · expansions (${fmt(N.E)})`]]),
    sel("type", "type", [["", "any"], ...["O", "X", "O_O", "O_X", "X_O", "X_X"].filter(t => typeCount.get(t)).map(t => [t, `${typeLabel(t)} (${fmt(typeCount.get(t))})`])],
        "O correct, X wrong; A→B: an expansion of an A simple thought that ends B"),
    sel("label", "label", [["", "any"], ["correct", "correct"], ["wrong", "wrong"], ["unparsed", "no answer parsed"]]),
    sel("kept", "kept", [["", "any"], ["kept", "kept"], ["dropped", "dropped"], ...[...c.reason].filter(([r]) => r).map(([r, n]) => ["r:" + r, `dropped · ${r.replace(/_/g, " ")} (${fmt(n)})`])]),
    sel("cue", "cue", [["", "any"], ...[...c.cue].map(([cue, n]) => [cue, `${cue} (${fmt(n)})`])], "the cue stage 3 continued from (only expansions have one)"),
    sel("qt", "question type", [["", "any"], ...[...c.qt].sort((a, b) => b[1] - a[1]).map(([q, n]) => [q, `${q || "(none)"} (${fmt(n)})`])]),
    sel("set", "in set", [["", "any"], ["sft", "in SFT"], ["dpo", "in a DPO pair"], ["none", "in neither"],
      ...XS.name.map((n, x) => ["x:" + n, `in ${n} (${plural(XS.rows[x], "row")})`])], META.sft_from + "; " + META.dpo_from),
    sel("kind", "pair kind", [["", "any"], ...[...c.kind].map(([k, n]) => [k, `${kindLabel(k)} (${fmt(n)})`])], "chosen ≻ rejected"),
    sel("valid", "stage 1", [["", "any"], ["valid", "valid"], ["invalid", "invalid"]]),
  ];
  const tabs = [["traces", "Traces", N.S + N.E], ["pairs", "DPO pairs", N.P], ["mcqs", "MCQs", N.M]];
  let html = `<div class="inner"><div class="barline"><div class="tabs" role="tablist">` + tabs.map(([v, l, n]) =>
    `<button class="tab" role="tab" data-view="${v}">${l}<span class="n">${fmt(n)}</span></button>`).join("") + `</div>
    <div id="pager-top" class="pager"></div></div>
    <div class="filters"><input id="f-q" type="search" placeholder="Search question, options, thoughts, ids…  ( / )" aria-label="search">`;
  for (const d of defs) {
    html += `<label id="l-${d.name}" ${d.title ? `title="${esc(d.title)}"` : ""}>${d.label} <select id="f-${d.name}" data-f="${d.name}">` +
      d.opts.map(([v, l]) => `<option value="${esc(v)}">${esc(l)}</option>`).join("") + `</select></label>`;
  }
  html += `<label id="l-mcq" title="only this question">question <input id="f-mcq" data-f="mcq" size="12"></label>
    <button id="f-reset" title="clear every filter and the search">reset</button></div></div>`;
  $("bar").innerHTML = html;
  for (const d of defs) CONTROLS[d.name] = $("f-" + d.name);
  CONTROLS.mcq = $("f-mcq");
  CONTROLS.q = $("f-q");
  $("bar").addEventListener("change", ev => {
    const f = ev.target.dataset && ev.target.dataset.f;
    if (f) { st[f] = ev.target.value.trim(); st.page = "1"; render(); }
  });
  let timer = null;
  CONTROLS.q.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { st.q = CONTROLS.q.value.trim().toLowerCase(); st.page = "1"; render(); }, 180);
  });
  $("bar").addEventListener("click", ev => {
    const b = ev.target.closest("button");
    if (!b) return;
    if (b.dataset.view) { st = {...DEFAULTS, view: b.dataset.view, q: st.q, qt: st.qt, mcq: st.mcq}; render(); }
    else if (b.id === "f-reset") { st = {...DEFAULTS, view: st.view}; render(); }
  });
}
function renderBar(pages, page) {
  for (const b of document.querySelectorAll(".tab")) b.setAttribute("aria-selected", String(b.dataset.view === st.view));
  const shown = new Set([...FILTERS[st.view], "mcq"]);
  for (const [name, el] of Object.entries(CONTROLS)) {
    if (name === "q") { if (document.activeElement !== el) el.value = st.q; el.classList.toggle("set", !!st.q); continue; }
    if (el.value !== st[name]) el.value = st[name];
    if (el.tagName === "SELECT" && el.value !== st[name]) {  // a value the data has no option for (a hand-made link)
      const o = document.createElement("option"); o.value = o.textContent = st[name]; el.appendChild(o); el.value = st[name];
    }
    el.classList.toggle("set", st[name] !== DEFAULTS[name]);
    const lab = $("l-" + name);
    if (lab) lab.hidden = !shown.has(name) || (name === "mcq" && !st.mcq) || (name === "kind" && !pairsTotal);
  }
  $("pager-top").innerHTML = pagerHtml(pages, page);
  $("pager-bottom").innerHTML = total > PAGE_SIZE ? pagerHtml(pages, page) : "";
}

function header() {
  // META.counts holds the question, short-thought and long-thought tables, in that order, under the names the
  // stage registry gives them (a later stage that takes over a role is counted under its own name)
  const [mq = {}, s2 = {}, s3 = {}] = Object.values(META.counts || {});
  const pct = (a, b) => b ? ` (${(100 * a / b).toFixed(1)}%)` : "";
  const box = (title, big, unit, parts) => `<div class="stagebox"><h2>${title}</h2><div class="big">${fmt(big)} <small>${unit}</small></div><div class="parts">${parts}</div></div>`;
  const models = Object.entries(META.models || {}).filter(([, v]) => typeof v === "string").map(([k, v]) => `${k.replace("_model", "")}: ${esc(v)}`).join(" · ");
  $("top").innerHTML = `<div class="inner">
    <div class="titleline"><h1>LongPerceptualThoughts <span>· trace viewer</span></h1></div>
    <p class="read">Read the <span class="kind">${esc(META.kind_label)}</span><code>${esc(META.path)}</code> · page made ${esc(META.generated)}${models ? " · " + models : ""}</p>
    <div class="stages">
      ${box("Stage 1 · questions", mq.questions ?? mq.rows ?? 0, "MCQs", `<b>${fmt(mq.valid ?? 0)}</b> valid${pct(mq.valid ?? 0, mq.questions ?? 0)}${mq.placeholders ? ` · ${fmt(mq.placeholders)} images without a question` : ""}`)}
      ${box("Stage 2 · simple thoughts", s2.rows ?? 0, "samples", `<b>${fmt(s2.parsed ?? 0)}</b> parsed · <b>${fmt(s2.correct ?? 0)}</b> correct${pct(s2.correct ?? 0, s2.rows ?? 0)} · <b>${fmt(s2.kept ?? 0)}</b> kept`)}
      ${box("Stage 3 · expansions", s3.rows ?? 0, "expansions", `<b>${fmt(s3.parsed ?? 0)}</b> parsed · <b>${fmt(s3.correct ?? 0)}</b> correct · <b>${fmt(s3.kept ?? 0)}</b> kept · <b>${fmt(s3.kept_correct ?? 0)}</b> kept correct`)}
      ${box("Sets", META.sft_rows, "SFT rows", `<b>${fmt(META.dpo_rows)}</b> DPO pairs${XS.name.map((n, x) => ` · <b>${fmt(XS.rows[x])}</b> <span title="${esc(XS.desc[x] || "a plugin's config")}">${esc(n)}</span>`).join("")} · <span title="SFT: ${esc(META.sft_from)}; DPO: ${esc(META.dpo_from)}">${esc(META.sets_from)}</span>`)}
    </div>
    ${META.notes.length ? `<ul class="notes">${META.notes.map(n => `<li>${esc(n)}</li>`).join("")}</ul>` : ""}
  </div>`;
  $("legend").innerHTML = `<p><b>Trace types</b> (docs/method.md): O a correct and X a wrong simple thought (stage 2); O→O, O→X, X→O, X→X an expansion (stage 3) of a correct or wrong simple thought that ends correct or wrong.</p>
    <p><b>In an expansion</b>: <span class="sw" style="color:#8a93a3">grey</span> the simple thought the reasoning model was given, <span class="sw" style="background:var(--cue)">yellow</span> the cue, <span class="sw" style="background:var(--added)">blue</span> what the model added, <span class="sw" style="background:#fcc9c2">red</span> a bad word. Keys: <code>/</code> search, <code>←</code> <code>→</code> pages. Every view is a link: the filters live in the address (#…).</p>`;
}

// ------------------------------------------------------------------------------------------------- events
$("list").addEventListener("click", ev => {
  const pre = ev.target.closest("[data-pre]");
  if (pre) { openPre.add(+pre.dataset.pre); const scroll = window.scrollY; redraw(); window.scrollTo(0, scroll); return; }
  const img = ev.target.closest("img[data-img]");
  if (img) {
    const lb = $("lightbox");
    lb.querySelector("img").src = img.src;
    lb.querySelector("p").textContent = `image ${IMG.id[+img.dataset.img]} (a thumbnail embedded in this page)`;
    lb.hidden = false;
  }
});
$("lightbox").addEventListener("click", () => { $("lightbox").hidden = true; });
document.addEventListener("click", ev => {
  const b = ev.target.closest("button[data-page]");
  if (b && !b.disabled) { st.page = b.dataset.page; render(); window.scrollTo(0, 0); }
});
document.addEventListener("keydown", ev => {
  const typing = /INPUT|SELECT|TEXTAREA/.test(document.activeElement.tagName);
  if (ev.key === "Escape") { $("lightbox").hidden = true; if (typing) document.activeElement.blur(); }
  if (typing) return;
  if (ev.key === "/") { ev.preventDefault(); CONTROLS.q.focus(); }
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE)), page = +st.page;
  if (ev.key === "ArrowRight" && page < pages) { st.page = String(page + 1); render(); window.scrollTo(0, 0); }
  if (ev.key === "ArrowLeft" && page > 1) { st.page = String(page - 1); render(); window.scrollTo(0, 0); }
});
window.addEventListener("hashchange", () => { readState(); render(); });

useData(D);
header();
buildBar();
readState();
render();
if (!SERVE) document.body.dataset.ready = "1";
document.body.dataset.readyMs = performance.now().toFixed(0);  // since navigation start: parse + first page
