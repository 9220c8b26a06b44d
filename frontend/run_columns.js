// The columns a user adds to the runs table to rank a sweep: any metric the runs logged (its latest value, or
// its best over the evaluations, as the server keeps it) and any config field (optim.lr, train.batch_size).
// Each is sortable (the first click puts the best runs first: lowest loss, highest accuracy) and filterable
// (`< 0.5`, `>= 1e-3`, `= 8`, `!= adamw` or a piece of text). The choice lives in the URL and in local storage.

import {h, flatten, fmtNum, getPath} from './util.js';
import {readableQuery} from './view_url.js';

const STORAGE_KEY = 'cliplab.runs.view';
const KINDS = {latest: 'latest', best: 'best', config: 'config'};

/** Lower is better for losses, higher for everything else (accuracy, similarity, recall@K, zero-shot):
 * the rule the server uses for a run's `best` (backend/services/ingest.py). */
export const higherIsBetter = (name) => !name.split('/').pop().includes('loss');

/** The column with id `latest:<metric>`, `best:<metric>` or `config:<dotted key>`; null for anything else. */
export function columnDef(id) {
  const cut = String(id).indexOf(':');
  const kind = String(id).slice(0, cut), key = String(id).slice(cut + 1);
  if (cut < 0 || !key || !(kind in KINDS)) return null;
  if (kind === 'config') {
    return {id, kind, key, label: key, title: `config: ${key}`, value: (run) => configValue(run, key), firstDir: 1};
  }
  return {id, kind, key, label: `${key} (${kind})`, value: (run) => run[kind]?.[key] ?? null,
    title: kind === 'best' ? `the best ${key} over the evaluations (${higherIsBetter(key) ? 'highest' : 'lowest'})`
      : `the last logged ${key}`,
    firstDir: higherIsBetter(key) ? -1 : 1};
}

function configValue(run, key) {
  const v = getPath(run.config || {}, key);
  if (v === undefined || v === null) return null;
  return typeof v === 'object' ? JSON.stringify(v) : v;
}

/** Everything the runs could show: {latest: [names], best: [names], config: [dotted keys]}, sorted. */
export function columnCatalogue(runs) {
  const sets = {latest: new Set(), best: new Set(), config: new Set()};
  for (const run of runs) {
    for (const k of Object.keys(run.latest || {})) sets.latest.add(k);
    for (const k of Object.keys(run.best || {})) sets.best.add(k);
    for (const k of Object.keys(flatten(run.config || {}))) sets.config.add(k);
  }
  return Object.fromEntries(Object.entries(sets).map(([k, s]) => [k, [...s].sort()]));
}

/** Order two cell values with `dir` (1 ascending, -1 descending); runs without a value always come last. */
export function compareValues(a, b, dir) {
  const missingA = a == null || a === '', missingB = b == null || b === '';
  if (missingA || missingB) return missingA === missingB ? 0 : (missingA ? 1 : -1);
  if (typeof a === 'number' && typeof b === 'number') return (a - b) * dir;
  return String(a).localeCompare(String(b), undefined, {numeric: true}) * dir;
}

/**
 * A filter typed for a column: `< 0.5`, `<= 0.5`, `> 1e-3`, `>= 8`, `= 8`, `!= adamw`, or text (contained).
 * Returns a predicate on a cell value; an empty filter keeps every run.
 */
export function parseFilter(text) {
  const t = String(text || '').trim();
  if (!t) return () => true;
  const m = t.match(/^(<=|>=|!=|<|>|=)\s*(.*)$/);
  if (!m) return (v) => v != null && String(v).toLowerCase().includes(t.toLowerCase());
  const [, op, rhs] = m;
  const num = rhs.trim() !== '' && Number.isFinite(Number(rhs)) ? Number(rhs) : null;
  const cmp = (v) => (num != null && typeof v === 'number' ? v - num
    : String(v).localeCompare(rhs.trim(), undefined, {numeric: true}));
  return (v) => {
    if (v == null) return op === '!=';
    const c = cmp(v);
    return {'<': c < 0, '<=': c <= 0, '>': c > 0, '>=': c >= 0, '=': c === 0, '!=': c !== 0}[op];
  };
}

export function formatValue(v) {
  if (v == null) return '–';
  return typeof v === 'number' ? fmtNum(v) : String(v);
}

// ---- where the choice is kept ----

const RUN_FILTERS = ['status', 'name', 'tag']; // the boxes above the table; in the URL only (a link shares them)

/**
 * The saved view: {columns: [id], sort: {key, dir} | null, filters: {id: text}}. The URL wins (a shared
 * link shows what its sender saw); without view parameters there, the last choice from local storage.
 */
export function loadView(query) {
  if (query && (query.has('col') || query.has('sort'))) return viewFromQuery(query);
  return storedView();
}

/**
 * The status, name and tag filters a runs-list URL carries: {status, name, tag} when it carries a view (any
 * of them, columns or a sort: a link shows what its sender saw), else null (the page keeps the filters it had
 * this session).
 */
export function loadRunFilters(query) {
  if (!query || ![...RUN_FILTERS, 'col', 'sort'].some((k) => query.has(k))) return null;
  return Object.fromEntries(RUN_FILTERS.map((k) => [k, query.get(k) || '']));
}

function storedView() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || 'null');
    if (saved && Array.isArray(saved.columns)) {
      return {columns: saved.columns.filter(columnDef), sort: saved.sort || null, filters: saved.filters || {}};
    }
  } catch { /* a corrupt entry: start afresh */ }
  return {columns: [], sort: null, filters: {}};
}

function viewFromQuery(query) {
  const columns = query.getAll('col').filter((id) => columnDef(id));
  const filters = {};
  for (const f of query.getAll('filter')) {
    // `<column id>~<text>`: either may hold a `~`, so match the chosen columns' ids, longest first.
    const id = [...columns].sort((a, b) => b.length - a.length).find((c) => f.startsWith(`${c}~`));
    if (id) filters[id] = f.slice(id.length + 1);
  }
  const s = query.get('sort');
  const sort = s ? {key: s.replace(/^-/, ''), dir: s.startsWith('-') ? -1 : 1} : null;
  return {columns: [...new Set(columns)], sort, filters};
}

/**
 * Keep the view in local storage and in the URL (rewritten in place: no history entry, no re-route); the
 * status, name and tag filters go in the URL only, so a reload or a shared link keeps them but a new tab
 * does not start filtered.
 */
export function saveView({columns, sort, filters, runFilters = {}}) {
  const kept = Object.fromEntries(Object.entries(filters).filter(([id, text]) => columns.includes(id) && text));
  try { localStorage.setItem(STORAGE_KEY, JSON.stringify({columns, sort, filters: kept})); } catch { /* private mode */ }
  const query = new URLSearchParams();
  for (const id of columns) query.append('col', id);
  if (sort) query.set('sort', `${sort.dir < 0 ? '-' : ''}${sort.key}`);
  for (const [id, text] of Object.entries(kept)) query.append('filter', `${id}~${text}`);
  for (const key of RUN_FILTERS) if (runFilters[key]) query.set(key, runFilters[key]);
  const qs = readableQuery(query);
  const next = `#/runs${qs ? `?${qs}` : ''}`;
  if (location.hash.startsWith('#/runs') && next !== location.hash) history.replaceState(history.state, '', next);
}

// ---- the picker ----

/**
 * A "Columns" disclosure listing every metric and config field of `runs` with a checkbox each, and a search
 * box to narrow a long config. `onToggle(id, on)` when a box changes; `refresh(runs, chosen)` rebuilds it.
 */
export class ColumnPicker {
  constructor(onToggle) {
    this.onToggle = onToggle;
    this.search = h('input', {type: 'search', id: 'column-search', placeholder: 'find a metric or config field',
      'aria-label': 'Find a column', oninput: () => this.applySearch()});
    this.lists = h('div', {class: 'column-lists'});
    this.el = h('details', {class: 'column-picker'},
      h('summary', {class: 'btn'}, 'Columns'),
      h('div', {class: 'column-panel'}, this.search, this.lists));
    this.key = '';
    // Like a menu: Escape or a click elsewhere closes the panel.
    this.onOutside = (e) => { if (this.el.open && !this.el.contains(e.target)) this.el.open = false; };
    this.onKey = (e) => {
      if (e.key === 'Escape' && this.el.open) { this.el.open = false; this.el.querySelector('summary').focus(); }
    };
    document.addEventListener('click', this.onOutside);
    this.el.addEventListener('keydown', this.onKey);
  }

  dispose() { document.removeEventListener('click', this.onOutside); }

  refresh(runs, chosen) {
    const cat = columnCatalogue(runs);
    const key = JSON.stringify(cat);
    if (key === this.key) { // the same choices: only tick the boxes, so a keyboard user's focus stays put
      for (const el of this.lists.querySelectorAll('.column-choice')) el.querySelector('input').checked = chosen.includes(el.dataset.col);
      return;
    }
    this.key = key;
    const focused = this.lists.contains(document.activeElement) ? document.activeElement.closest('.column-choice')?.dataset.col : null;
    const group = (title, kind, names) => names.length && h('fieldset', {class: 'column-group'},
      h('legend', {}, title),
      names.map((name) => {
        const id = `${kind}:${name}`;
        return h('label', {class: 'column-choice', dataset: {col: id}},
          h('input', {type: 'checkbox', checked: chosen.includes(id), onchange: (e) => this.onToggle(id, e.target.checked)}),
          ' ', name);
      }));
    this.lists.replaceChildren(...[
      group('Metrics: latest value', 'latest', cat.latest),
      group('Metrics: best over the evaluations', 'best', cat.best),
      group('Config', 'config', cat.config),
    ].filter(Boolean));
    if (!this.lists.children.length) this.lists.append(h('p', {class: 'muted'}, 'No metrics or config fields yet.'));
    this.applySearch();
    if (focused) [...this.lists.querySelectorAll('.column-choice')].find((el) => el.dataset.col === focused)?.querySelector('input').focus();
  }

  applySearch() {
    const q = this.search.value.trim().toLowerCase();
    for (const el of this.lists.querySelectorAll('.column-choice')) el.hidden = !!q && !el.dataset.col.toLowerCase().includes(q);
    for (const group of this.lists.querySelectorAll('.column-group')) group.hidden = !group.querySelector('.column-choice:not([hidden])');
  }
}
