// #/runs: every run with status, progress and headline metrics, live from the run-list SSE stream.
// Filters, sort order and the selection live in module state so they survive navigating away and back; the
// filters, columns and sort are also kept in the URL (run_columns.js), so a reload or a shared link shows them.

import {h, replace, toDate, fmtDateTime, fmtDuration, statusBadge, attachedBadge, metricList, isAbort, debounce, ALL_STATUSES}
  from './util.js';
import {api, enc, LiveStream} from './api.js';
import {RateMeter, progressCell, durationOf} from './progress.js';
import {columnDef, compareValues, parseFilter, formatValue, loadView, loadRunFilters, saveView, ColumnPicker}
  from './run_columns.js';
import {notesHint, searchText} from './run_notes.js';
import {BulkActions} from './bulk_actions.js';

const LIMIT = 500;
const state = {
  filters: {status: '', name: '', tag: ''},
  sort: {key: 'created', dir: -1},
  selected: new Set(),
  columns: [], // added columns: ids of run_columns.columnDef
  colFilters: {}, // column id -> filter text
};
const DEFAULT_SORT = {key: 'created', dir: -1};

/** The metric the Best column ranks by: the first headline metric any run has a best value of. */
const BEST_ORDER = ['val/loss', 'val/acc', 'val/zeroshot_top1', 'val/i2t_R@1', 'val/t2i_R@1', 'val/similarity'];
function bestMetric(runs) {
  for (const name of BEST_ORDER) if (runs.some((r) => r.best?.[name] != null)) return name;
  for (const r of runs) for (const name of Object.keys(r.best || {})) return name;
  return null;
}

const COLUMNS = [
  {key: 'status', label: 'Status', value: (r) => ALL_STATUSES.indexOf(r.status)},
  {key: 'name', label: 'Name', value: (r) => (r.name || r.id).toLowerCase()},
  {key: 'model', label: 'Model', value: (r) => String(modelOf(r)).toLowerCase()},
  {key: 'dataset', label: 'Dataset', value: (r) => String(datasetOf(r)).toLowerCase()},
  {key: 'gpus', label: 'GPUs', value: (r) => r.gpus ?? 0},
  {key: 'progress', label: 'Progress', value: (r) => (r.total_steps ? (r.step ?? 0) / r.total_steps : 0)},
  {key: 'latest', label: 'Latest', value: (r) => r.latest?.loss ?? Infinity},
  {key: 'best', label: 'Best', value: (r) => r.best?.['val/loss'] ?? r.best?.loss ?? Infinity},
  {key: 'created', label: 'Started', value: (r) => (toDate(r.started_at) || toDate(r.created_at) || new Date(0)).getTime()},
  {key: 'duration', label: 'Duration', value: (r) => durationOf(r) ?? -1},
  {key: 'tags', label: 'Tags', value: (r) => (r.tags || []).join(',')},
];

const modelOf = (r) => r.model || r.config?.model?.preset || '';
const datasetOf = (r) => r.dataset || r.config?.data?.train || '';

export function mount(root, {query, scope}) {
  const saved = loadView(query);
  Object.assign(state, {columns: saved.columns, colFilters: saved.filters, sort: saved.sort || state.sort});
  const filters = loadRunFilters(query);
  if (filters) {
    state.filters = filters;
    if (!ALL_STATUSES.includes(state.filters.status)) state.filters.status = ''; // a mistyped link: any status
  }
  new RunsList(root, scope).start();
}

class RunsList {
  constructor(root, scope) {
    this.root = root;
    this.scope = scope;
    this.runs = new Map();
    this.rows = new Map(); // id -> {tr, sig}
    this.meters = new Map();
    this.total = null;
    this.loaded = false;
    this.searchSeq = 0;
    this.searchServerSoon = debounce(() => this.searchServer(), 250);
    scope.onDispose(() => this.searchServerSoon.cancel());
  }

  start() {
    this.build();
    this.load();
    const stream = new LiveStream('/api/stream', {run: (run) => this.upsert(run), deleted: (body) => this.remove(body?.id)},
      {label: 'Live run list', onGap: () => this.load()});
    this.scope.onDispose(() => stream.close());
    // Durations and ETAs move with the clock, not only with events.
    this.scope.interval(() => this.tick(), 1000);
  }

  build() {
    const f = state.filters;
    const statusSel = h('select', {id: 'filter-status', onchange: (e) => this.setFilter('status', e.target.value)},
      h('option', {value: ''}, 'any status'), ALL_STATUSES.map((s) => h('option', {value: s, selected: f.status === s}, s)));
    const nameIn = h('input', {id: 'filter-name', type: 'search', placeholder: 'name or notes', value: f.name,
      oninput: (e) => this.setFilter('name', e.target.value)});
    const tagIn = h('input', {id: 'filter-tag', type: 'search', placeholder: 'tag', value: f.tag,
      oninput: (e) => this.setFilter('tag', e.target.value)});
    this.compareBtn = h('button', {type: 'button', class: 'btn', id: 'compare-selected', onclick: () => this.compare()});
    this.countEl = h('span', {class: 'muted', 'aria-live': 'polite'});
    this.selectAll = h('input', {type: 'checkbox', 'aria-label': 'Select all shown runs',
      onchange: (e) => this.toggleAll(e.target.checked)});
    this.headRow = h('tr', {});
    this.tbody = h('tbody', {});
    this.emptyEl = h('div', {class: 'empty-state'});
    this.errorEl = h('div', {});
    this.picker = new ColumnPicker((id, on) => this.toggleColumn(id, on));
    this.scope.onDispose(() => this.picker.dispose());
    this.colFiltersEl = h('div', {class: 'filters column-filters'});
    this.bulk = new BulkActions({onResult: (results, kind) => this.afterBulk(results, kind),
      onClear: () => { state.selected.clear(); this.render(); }});
    replace(this.root,
      h('div', {class: 'page-head'}, h('h1', {}, 'Runs'),
        h('div', {class: 'page-actions'}, this.compareBtn, h('a', {class: 'btn btn-primary', href: '#/new'}, 'New run'))),
      h('form', {class: 'filters', role: 'search', onsubmit: (e) => e.preventDefault()},
        h('label', {for: 'filter-status'}, 'Status'), statusSel,
        h('label', {for: 'filter-name'}, 'Name'), nameIn,
        h('label', {for: 'filter-tag'}, 'Tag'), tagIn,
        this.picker.el,
        this.countEl),
      this.colFiltersEl,
      this.bulk.el,
      this.errorEl,
      this.tableWrap = h('div', {class: 'table-wrap'},
        h('table', {class: 'table runs-table'}, h('thead', {}, this.headRow), this.tbody)),
      this.emptyEl);
    this.renderHead();
    this.updateCompare();
  }

  async load() {
    try {
      const body = await api(`/api/runs?limit=${LIMIT}&sort=-created_at`, {signal: this.scope.signal});
      this.runs = new Map((body?.items || []).map((r) => [r.id, r]));
      this.total = body?.total ?? this.runs.size;
      this.loaded = true;
      replace(this.errorEl);
      for (const id of [...state.selected]) if (!this.runs.has(id)) state.selected.delete(id);
      this.render();
      this.saveView();
      this.searchServer();
    } catch (err) {
      if (isAbort(err)) return;
      replace(this.errorEl, h('div', {class: 'error-box', role: 'alert'}, `Could not load the runs: ${err.message}`,
        ' ', h('button', {type: 'button', class: 'btn btn-small', onclick: () => this.load()}, 'Try again')));
    }
  }

  remove(id) {
    if (!id || !this.runs.delete(id)) return;
    state.selected.delete(id);
    if (this.total != null) this.total -= 1;
    this.render();
  }

  upsert(run) {
    if (!run?.id) return;
    if (run.deleted) { this.remove(run.id); return; }
    if (!this.runs.has(run.id) && this.total != null) this.total += 1;
    this.runs.set(run.id, run);
    if (!this.meters.has(run.id)) this.meters.set(run.id, new RateMeter());
    this.meters.get(run.id).add(run.step);
    this.render();
  }

  setFilter(key, value) {
    state.filters[key] = value;
    this.render();
    this.saveView();
    this.searchServerSoon();
  }

  /**
   * The table holds the latest LIMIT runs. When the server has more, a filter also asks the server for
   * matching runs and adds them, so an older run is found rather than "No runs match these filters".
   * `q` (name, notes, tags or id) is a superset of what the Name or Tag box matches; matches() decides.
   */
  async searchServer() {
    const {status, name, tag} = state.filters;
    const text = name.trim() || tag.trim();
    if (!(this.total > this.runs.size) || !(status || text)) return;
    const params = new URLSearchParams({limit: String(LIMIT), sort: '-created_at'});
    if (status) params.set('status', status);
    if (text) params.set('q', text);
    const seq = ++this.searchSeq;
    try {
      const body = await api(`/api/runs?${params}`, {signal: this.scope.signal});
      if (seq !== this.searchSeq) return;
      replace(this.errorEl);
      let added = false;
      for (const run of body?.items || []) {
        if (!run?.id || this.runs.has(run.id)) continue;
        this.runs.set(run.id, run);
        added = true;
      }
      if (added) this.render();
    } catch (err) {
      if (isAbort(err) || seq !== this.searchSeq) return;
      replace(this.errorEl, h('div', {class: 'error-box', role: 'alert'}, `Could not search the older runs: ${err.message}`));
    }
  }

  matches(run) {
    for (const [id, text] of Object.entries(state.colFilters)) {
      const col = columnDef(id);
      if (col && state.columns.includes(id) && !parseFilter(text)(col.value(run))) return false;
    }
    const {status, name, tag} = state.filters;
    if (status && run.status !== status) return false;
    if (name && !searchText(run).includes(name.trim().toLowerCase())) return false;
    if (tag && !(run.tags || []).some((t) => t.toLowerCase().includes(tag.trim().toLowerCase()))) return false;
    return true;
  }

  visible() {
    const dir = state.sort.dir;
    const runs = [...this.runs.values()].filter((r) => this.matches(r));
    const metric = this.sortColumn(runs);
    if (metric) return runs.sort((a, b) => compareValues(metric.value(a), metric.value(b), dir) || (a.id < b.id ? 1 : -1));
    const col = COLUMNS.find((c) => c.key === state.sort.key) || COLUMNS[8];
    return runs.sort((a, b) => {
      const va = col.value(a), vb = col.value(b);
      return (va < vb ? -1 : va > vb ? 1 : 0) * dir || (a.id < b.id ? 1 : -1);
    });
  }

  /** The added column, or for Best its headline metric's best, that the table is sorted by; null otherwise. */
  sortColumn(runs) {
    if (state.sort.key === 'best') {
      const name = bestMetric(runs);
      return name ? columnDef(`best:${name}`) : null;
    }
    return state.columns.includes(state.sort.key) ? columnDef(state.sort.key) : null;
  }

  toggleColumn(id, on) {
    state.columns = on ? [...new Set([...state.columns, id])] : state.columns.filter((c) => c !== id);
    if (!on) delete state.colFilters[id];
    if (!on && state.sort.key === id) state.sort = {...DEFAULT_SORT};
    this.renderHead();
    this.render();
    this.saveView();
  }

  saveView() {
    const sortIsDefault = state.sort.key === DEFAULT_SORT.key && state.sort.dir === DEFAULT_SORT.dir;
    saveView({columns: state.columns, sort: sortIsDefault ? null : state.sort, filters: state.colFilters,
      runFilters: state.filters});
  }

  /** One filter box per added column (`< 0.5`, `= 8`, text). */
  renderColumnFilters() {
    const focused = document.activeElement?.dataset?.colFilter;
    this.colFiltersEl.replaceChildren(...state.columns.map((id, i) => {
      const col = columnDef(id);
      const input = h('input', {type: 'search', id: `col-filter-${i}`, class: 'col-filter', dataset: {colFilter: id},
        placeholder: col.kind === 'config' ? 'e.g. = 8 or adamw' : 'e.g. < 0.5', value: state.colFilters[id] || '',
        oninput: (e) => { state.colFilters[id] = e.target.value; this.render(); this.saveView(); }});
      return h('span', {class: 'col-filter-item'}, h('label', {for: `col-filter-${i}`}, col.label), input);
    }));
    if (focused) this.colFiltersEl.querySelector(`[data-col-filter="${CSS.escape(focused)}"]`)?.focus();
    this.colFiltersEl.hidden = !state.columns.length;
  }

  renderHead() {
    const cells = [h('th', {scope: 'col', class: 'col-check'}, this.selectAll)];
    for (const c of COLUMNS) {
      const active = state.sort.key === c.key;
      const sortAttr = active ? (state.sort.dir > 0 ? 'ascending' : 'descending') : null;
      cells.push(h('th', {scope: 'col', 'aria-sort': sortAttr, class: `col-${c.key}`},
        h('button', {type: 'button', class: 'sort', onclick: () => this.sortBy(c.key)},
          c.label, h('span', {class: 'sort-mark', 'aria-hidden': 'true'}, active ? (state.sort.dir > 0 ? ' ▲' : ' ▼') : ''))));
    }
    for (const id of state.columns) {
      const col = columnDef(id);
      const active = state.sort.key === id;
      cells.push(h('th', {scope: 'col', class: 'col-extra', 'aria-sort': active ? (state.sort.dir > 0 ? 'ascending' : 'descending') : null,
        dataset: {col: id}, title: col.title},
        h('button', {type: 'button', class: 'sort', onclick: () => this.sortBy(id)},
          col.label, h('span', {class: 'sort-mark', 'aria-hidden': 'true'}, active ? (state.sort.dir > 0 ? ' ▲' : ' ▼') : '')),
        h('button', {type: 'button', class: 'link remove-col', 'aria-label': `Remove the column ${col.label}`,
          onclick: () => this.toggleColumn(id, false)}, '×')));
    }
    this.headRow.replaceChildren(...cells);
    this.renderColumnFilters();
  }

  /** Sort by `key`; the first click on a metric puts its best runs first (lowest loss, highest accuracy). */
  sortBy(key) {
    const best = key === 'best' ? bestMetric([...this.runs.values()]) : null;
    const metric = key === 'best' ? (best && columnDef(`best:${best}`)) : columnDef(key);
    const first = metric ? metric.firstDir : key === 'name' ? 1 : -1;
    state.sort = state.sort.key === key ? {key, dir: -state.sort.dir} : {key, dir: first};
    this.renderHead();
    this.render();
    this.saveView();
    const th = [...this.headRow.children].find((el) => el.dataset.col === key) || this.headRow.querySelector(`.col-${key}`);
    th?.querySelector('button.sort')?.focus();
  }

  render() {
    if (!this.loaded) return;
    const runs = this.visible();
    this.picker.refresh([...this.runs.values()], state.columns);
    const best = bestMetric([...this.runs.values()]);
    this.headRow.querySelector('th.col-best')?.setAttribute('title', best
      ? `Sorts by the best ${best} over the evaluations, ${columnDef(`best:${best}`).firstDir < 0 ? 'highest' : 'lowest'} first`
      : 'No run has evaluated yet');
    const wanted = new Set(runs.map((r) => r.id));
    for (const [id, row] of this.rows) if (!wanted.has(id)) { row.tr.remove(); this.rows.delete(id); }
    runs.forEach((run, i) => {
      let row = this.rows.get(run.id);
      const sig = JSON.stringify(run) + state.selected.has(run.id) + state.columns.join('\u0000');
      if (!row) {
        row = {tr: h('tr', {dataset: {runId: run.id}}), sig: null};
        this.rows.set(run.id, row);
      }
      if (row.sig !== sig) { this.fillRow(row, run); row.sig = sig; }
      // Move only rows that are out of place, so a focused checkbox keeps its focus.
      if (this.tbody.children[i] !== row.tr) this.tbody.insertBefore(row.tr, this.tbody.children[i] || null);
    });
    const shown = runs.length, all = this.runs.size;
    this.countEl.textContent = shown === all
      ? `${all} run${all === 1 ? '' : 's'}${this.total > all ? ` (latest ${all} of ${this.total})` : ''}`
      : `showing ${shown} of ${all}`;
    this.renderEmpty(shown, all);
    this.updateCompare();
    this.selectAll.checked = shown > 0 && runs.every((r) => state.selected.has(r.id));
  }

  renderEmpty(shown, all) {
    this.tableWrap.hidden = !shown;
    if (shown) { replace(this.emptyEl); return; }
    if (!all) {
      if (this.emptyEl.querySelector('#start-demo')) return; // keep the button (and its busy state) as it is
      this.demoError = h('div', {'aria-live': 'assertive'});
      replace(this.emptyEl, h('p', {}, 'No runs yet. '), h('p', {},
        h('button', {type: 'button', class: 'btn btn-primary', id: 'start-demo', onclick: (e) => this.startDemo(e.target)},
          'Start the CPU demo'),
        ' trains a tiny CLIP on the built-in demo dataset in a minute or two.'),
        h('p', {}, 'Or ', h('a', {href: '#/new', id: 'demo-form-link'}, 'open the new-run form'),
          ' to choose the model, data and steps first.'),
        this.demoError);
    } else {
      replace(this.emptyEl, h('p', {}, 'No runs match these filters. '),
        h('button', {type: 'button', class: 'btn', onclick: () => this.clearFilters()}, 'Clear filters'));
    }
  }

  /** Start the bundled CPU demo config as the new-run form would submit it, then open the new run's page. */
  async startDemo(button) {
    button.disabled = true;
    button.textContent = 'Starting the CPU demo…';
    replace(this.demoError);
    const signal = this.scope.signal;
    try {
      const configs = await api('/api/configs', {signal});
      const demo = (configs || []).find((c) => c.default) || (configs || []).find((c) => /^cpu[-_]demo$/.test(c.name));
      // Without the bundled file `{}` is the CPU demo too: every field's default is the demo's.
      const config = demo?.config || {};
      const run = await api('/api/runs', {method: 'POST', signal, body: {
        name: config.name, config, gpus: 0, nproc: 1, tags: config.tags || []}});
      location.hash = `#/runs/${enc(run.id)}`;
    } catch (err) {
      if (isAbort(err)) return;
      button.disabled = false;
      button.textContent = 'Start the CPU demo';
      replace(this.demoError, h('div', {class: 'error-box', role: 'alert'}, `The demo was not started: ${err.message}`));
    }
  }

  clearFilters() {
    state.filters = {status: '', name: '', tag: ''};
    for (const id of ['filter-status', 'filter-name', 'filter-tag']) document.getElementById(id).value = '';
    state.colFilters = {};
    this.renderColumnFilters();
    this.render();
    this.saveView();
  }

  /**
   * Cells are re-rendered one by one, only when their own content changed, so a progress update does not
   * replace (and unfocus) the checkbox or link a keyboard user is on.
   */
  fillRow(row, run) {
    // A run that never started (queued, or stopped while queued) has no start time to show.
    const started = run.started_at ? fmtDateTime(run.started_at) : '—';
    const label = run.name || run.id;
    const cells = [
      ['check', state.selected.has(run.id), () => h('input', {type: 'checkbox', class: 'select-run',
        'aria-label': `Select ${label}`, checked: state.selected.has(run.id),
        onchange: (e) => { if (e.target.checked) state.selected.add(run.id); else state.selected.delete(run.id); this.render(); }})],
      ['status', [run.status, run.attached], () => [statusBadge(run.status), attachedBadge(run)]],
      // One block: on a phone the cell is a flex row, and the reason and notes lines go under the name.
      ['name', [label, run.status, run.reason, run.notes], () => h('div', {class: 'name-cell'},
        h('a', {href: `#/runs/${enc(run.id)}`, class: 'run-name', title: label}, label), failureHint(run), notesHint(run))],
      ['model', modelOf(run), () => modelOf(run)],
      ['dataset', datasetOf(run), () => shortPath(datasetOf(run))],
      ['gpus', [run.gpus, run.nproc, run.executor, run.slurm_job_id], () => devicesCell(run)],
      ['progress', [run.step, run.total_steps, run.status], () => progressCell(run, this.meters.get(run.id))],
      ['latest', run.latest, () => metricList(run.latest, 2)],
      ['best', run.best, () => metricList(run.best, 2)],
      ['created', [run.started_at, run.created_at, run.status], () => started],
      ['duration', [run.started_at, run.finished_at, run.status], () => fmtDuration(durationOf(run)) || '–'],
      ['tags', run.tags, () => (run.tags || []).map((t) => h('button', {type: 'button', class: 'tag', title: `Show runs tagged ${t}`,
        onclick: () => { document.getElementById('filter-tag').value = t; this.setFilter('tag', t); }}, t))],
    ];
    for (const id of state.columns) {
      const col = columnDef(id);
      cells.push([`extra:${id}`, col.value(run), () => formatValue(col.value(run))]);
    }
    const layout = cells.map(([key]) => key).join('\u0000');
    if (row.layout !== layout) { row.cells = null; row.layout = layout; } // columns were added or removed
    if (!row.cells) {
      row.cells = cells.map(([key]) => h('td', {class: key.startsWith('extra:') ? 'col-extra num' : `col-${key}`,
        'data-label': cellLabel(key)})); // the label a phone shows beside the value (the table is cards there)
      row.sigs = cells.map(() => null);
      row.tr.replaceChildren(...row.cells);
      row.cells[4].title = datasetOf(run);
    }
    cells.forEach(([key, sigValue, render], i) => {
      const sig = JSON.stringify(sigValue ?? null);
      if (row.sigs[i] === sig) return;
      row.sigs[i] = sig;
      if (key === 'check' && row.cells[i].firstChild) { row.cells[i].firstChild.checked = !!sigValue; return; }
      replace(row.cells[i], render());
    });
    row.cells[4].title = datasetOf(run);
    row.cells[9].title = run.started_at ? `Started ${toDate(run.started_at)}`
      : run.created_at ? `Not started; created ${toDate(run.created_at)}` : '';
  }

  tick() {
    for (const [id, row] of this.rows) {
      const run = this.runs.get(id);
      if (!run || run.status !== 'running') continue;
      const cell = row.tr.querySelector('td.col-progress');
      if (cell) cell.replaceChildren(progressCell(run, this.meters.get(id)));
      const dur = row.tr.querySelector('td.col-duration');
      if (dur) dur.textContent = fmtDuration(durationOf(run)) || '–';
    }
  }

  toggleAll(checked) {
    for (const run of this.visible()) if (checked) state.selected.add(run.id); else state.selected.delete(run.id);
    this.render();
  }

  /** What a bulk action did: deleted runs leave the table and the selection; changed ones show at once. */
  afterBulk(results, kind) {
    for (const {run, value, error} of results) {
      if (error) continue;
      if (kind === 'delete') this.remove(run.id);
      else if (value?.id) this.upsert(value);
    }
  }

  updateCompare() {
    const selected = [...state.selected].map((id) => this.runs.get(id)).filter(Boolean);
    const shown = new Set([...this.tbody.children].map((tr) => tr.dataset.runId));
    this.bulk.update(selected, selected.filter((r) => !shown.has(r.id)).length);
    const n = state.selected.size;
    this.compareBtn.textContent = n ? `Compare selected (${n})` : 'Compare selected';
    this.compareBtn.disabled = n < 2;
    this.compareBtn.title = n < 2 ? 'Tick two or more runs to compare them' : '';
  }

  compare() {
    if (state.selected.size < 2) return;
    location.hash = `#/compare?ids=${[...state.selected].map(enc).join(',')}`;
  }
}

function cellLabel(key) {
  if (key.startsWith('extra:')) return columnDef(key.slice(6))?.label;
  return ['check', 'name', 'status'].includes(key) ? null : COLUMNS.find((c) => c.key === key)?.label;
}

/** GPUs (or CPU) and processes; a SLURM run says so, with its job id on hover. */
function devicesCell(run) {
  const devices = run.gpus ? (run.nproc > 1 ? `${run.gpus} (×${run.nproc})` : String(run.gpus)) : 'CPU';
  if (run.executor !== 'slurm') return devices;
  return h('span', {title: run.slurm_job_id ? `SLURM job ${run.slurm_job_id}` : 'SLURM'}, `${devices} · SLURM`);
}

/** A one-line reason under the name of a failed run (or one SLURM holds), visible without opening it. */
function failureHint(run) {
  const waiting = run.status === 'queued' && run.executor === 'slurm';
  if (!(['failed', 'lost'].includes(run.status) || waiting) || !run.reason) return null;
  return h('div', {class: waiting ? 'row-reason row-reason-info' : 'row-reason', title: run.reason}, run.reason);
}

function shortPath(p) {
  const s = String(p || '');
  if (s.length <= 28) return s;
  const parts = s.split('/');
  return parts.length > 2 ? `…/${parts.slice(-2).join('/')}` : `…${s.slice(-27)}`;
}

