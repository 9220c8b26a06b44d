// Small DOM and formatting helpers shared by every page. No framework: `h()` builds elements, and all
// user-supplied text goes through text nodes (never innerHTML), so run names and captions cannot inject markup.

/** Build an element: h('a', {href: '#/runs', class: 'btn', onclick: fn}, 'text', childEl, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'style' && typeof value === 'object') Object.assign(el.style, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'value' || key === 'checked' || key === 'selected') el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

/** Append children (strings, nodes, nested arrays; null/false skipped). */
export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace all children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/**
 * What a page owns while it is mounted: timers, streams, plots and in-flight requests. The router disposes
 * it on navigation so nothing from a previous page keeps running or writes into the new one.
 */
export class Scope {
  constructor() {
    this.controller = new AbortController();
    this.cleanups = [];
  }
  get signal() { return this.controller.signal; }
  get alive() { return !this.controller.signal.aborted; }
  onDispose(fn) { this.cleanups.push(fn); return fn; }
  interval(fn, ms) { const t = setInterval(fn, ms); this.onDispose(() => clearInterval(t)); return t; }
  timeout(fn, ms) { const t = setTimeout(fn, ms); this.onDispose(() => clearTimeout(t)); return t; }
  dispose() {
    this.controller.abort();
    for (const fn of this.cleanups.splice(0).reverse()) {
      try { fn(); } catch (err) { console.warn('cleanup failed', err); }
    }
  }
}

export function isAbort(err) { return err && (err.name === 'AbortError'); }

/** Delay calls until `ms` have passed without another call. */
export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

// ---- time ----

/** Accept epoch seconds, epoch ms or ISO strings (naive ones are UTC, as the backend stores them). */
export function toDate(value) {
  if (value == null || value === '') return null;
  if (typeof value === 'number') return new Date(value > 1e12 ? value : value * 1000);
  const s = String(value);
  const hasZone = /[zZ]$|[+-]\d\d:?\d\d$/.test(s);
  const d = new Date(hasZone ? s : s.replace(' ', 'T') + 'Z');
  return Number.isNaN(d.getTime()) ? null : d;
}

export function fmtDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return '';
  seconds = Math.max(0, Math.round(seconds));
  const d = Math.floor(seconds / 86400), hh = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${String(m).padStart(2, '0')}m`;
  if (m) return `${m}m ${String(s).padStart(2, '0')}s`;
  return `${s}s`;
}

export function fmtDateTime(value) {
  const d = toDate(value);
  if (!d) return '';
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  const time = d.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'});
  return sameDay ? time : `${d.toLocaleDateString([], {month: 'short', day: 'numeric'})} ${time}`;
}

// ---- numbers ----

export function fmtNum(value, digits = 4) {
  if (value == null) return '–';
  if (typeof value !== 'number') return String(value);
  if (!Number.isFinite(value)) return String(value);
  if (Number.isInteger(value) && Math.abs(value) < 1e6) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
  return String(Number(value.toPrecision(digits)));
}

export function fmtBytes(n) {
  if (n == null) return '';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

// ---- runs ----

export const ACTIVE_STATUSES = new Set(['queued', 'starting', 'running', 'stopping']);
export const ALL_STATUSES = ['queued', 'starting', 'running', 'stopping', 'stopped', 'finished', 'failed', 'lost'];
// What the API allows in each status (backend/services/runs.py): stop a live or queued run, delete one with no
// process (a run SLURM still holds in its queue must be stopped first).
export const STOPPABLE = new Set(['queued', 'starting', 'running', 'lost']);
export const DELETABLE = new Set(['queued', 'stopped', 'failed', 'finished']);
export const canStop = (run) => STOPPABLE.has(run.status);
export const canDelete = (run) => DELETABLE.has(run.status) && !(run.status === 'queued' && run.slurm_job_id);

export function statusBadge(status) {
  return h('span', {class: `status status-${status || 'unknown'}`}, status || 'unknown');
}

/** The "attached" marker of a run started outside this dashboard (`cliplab train --server`); null otherwise. */
export function attachedBadge(run) {
  if (!run.attached) return null;
  const where = run.attached_host ? ` on ${run.attached_host}` : '';
  return h('span', {class: 'attached-badge', title: `Started outside this dashboard${where}; it streams its events `
    + 'here and polls for stop requests'}, 'attached');
}

/** Pick the few metrics worth a glance from a {name: value} dict, in a fixed order. */
export function headlineMetrics(values, limit = 3) {
  if (!values) return [];
  const preferred = ['loss', 'val/loss', 'acc', 'val/acc', 'val/zeroshot_top1', 'val/i2t_R@1', 'val/t2i_R@1'];
  const keys = preferred.filter((k) => values[k] != null);
  for (const k of Object.keys(values)) if (!keys.includes(k) && values[k] != null) keys.push(k);
  return keys.slice(0, limit).map((k) => [k, values[k]]);
}

export function metricList(values, limit = 3) {
  const items = headlineMetrics(values, limit);
  if (!items.length) return h('span', {class: 'muted'}, '–');
  return h('span', {class: 'metrics'},
    items.map(([k, v]) => h('span', {class: 'metric', title: `${k} = ${v}`}, h('span', {class: 'k'}, k), ' ', fmtNum(v))));
}

// ---- nested config objects ----

/** {"optim": {"lr": 1}} -> {"optim.lr": 1}; lists stay values (compared as JSON). */
export function flatten(obj, prefix = '', out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length) flatten(v, key, out);
    else out[key] = v;
  }
  return out;
}

export function getPath(obj, dotted) {
  let node = obj;
  for (const part of dotted.split('.')) {
    if (node == null || typeof node !== 'object') return undefined;
    node = node[part];
  }
  return node;
}

export function setPath(obj, dotted, value) {
  const parts = dotted.split('.');
  let node = obj;
  for (const part of parts.slice(0, -1)) {
    if (node[part] == null || typeof node[part] !== 'object') node[part] = {};
    node = node[part];
  }
  node[parts[parts.length - 1]] = value;
}

export function deepCopy(value) { return value == null ? value : JSON.parse(JSON.stringify(value)); }

// Distinct, colour-blind-friendly colours (Okabe-Ito first, then Tableau).
export const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#8c564b', '#7f7f7f',
  '#bcbd22', '#17becf', '#F0E442', '#1f77b4'];
