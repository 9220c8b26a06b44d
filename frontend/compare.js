// #/compare?ids=a,b: the chosen runs overlaid on the same charts (one colour per run) and a diff of their
// configs as flattened dotted keys, the differing ones highlighted. Runs still in progress stream their new
// points into the charts, as on a run's own page.

import {h, replace, isAbort, flatten, statusBadge, PALETTE, ACTIVE_STATUSES} from './util.js';
import {api, enc, LiveStream} from './api.js';
import {banner} from './banner.js';
import {ChartBoard} from './charts.js';
import {loadPlotly} from './plotly_loader.js';
import {readView, boardParams, writeView, readableQuery} from './view_url.js';
import {sectionNav} from './section_nav.js';
import {ParametersPlot} from './parameters_plot.js';

export function mount(root, {query, scope}) {
  const ids = (query.get('ids') || '').split(',').map((s) => s.trim()).filter(Boolean);
  new ComparePage(root, scope, [...new Set(ids)], readView(query)).start();
}

// Each live run holds one SSE connection, and a browser opens at most six HTTP/1.1 connections per server:
// beyond this many the rest would starve the page's own requests.
const MAX_LIVE_RUNS = 4;

/** Compare `ids`, keeping the charts' view (smoothing, x-axis, zoom) of the current URL. */
const goTo = (ids) => {
  const query = new URLSearchParams(location.hash.split('?')[1] || '');
  query.delete('ids');
  const view = readableQuery(query);
  const params = [ids.length ? `ids=${ids.map(enc).join(',')}` : '', view].filter(Boolean).join('&');
  location.hash = `#/compare${params ? `?${params}` : ''}`;
};

/** Rows of the config diff: [{key, values: [...], differs}] over the union of keys, in first-seen order. */
export function configDiff(configs) {
  const flat = configs.map((c) => flatten(c || {}));
  const keys = [];
  for (const f of flat) for (const k of Object.keys(f)) if (!keys.includes(k)) keys.push(k);
  return keys.map((key) => {
    const values = flat.map((f) => (key in f ? JSON.stringify(f[key]) : undefined));
    return {key, values, differs: new Set(values).size > 1};
  });
}

class ComparePage {
  constructor(root, scope, ids, urlView) {
    this.root = root;
    this.scope = scope;
    this.ids = ids;
    this.urlView = urlView;
  }

  async start() {
    const signal = this.scope.signal;
    replace(this.root, h('p', {class: 'muted'}, 'Loading runs…'));
    if (this.ids.length) loadPlotly().catch(() => {}); // parse it while the runs load
    const results = await Promise.all(this.ids.map(async (id) => {
      try {
        const [run, cfg] = await Promise.all([api(`/api/runs/${enc(id)}`, {signal}), api(`/api/runs/${enc(id)}/config`, {signal})]);
        return {id, run, config: cfg?.config || run.config || {}};
      } catch (err) {
        if (isAbort(err)) throw err;
        return {id, error: err.status === 404 ? `no run with id “${id}”` : err.message};
      }
    })).catch((err) => { if (!isAbort(err)) throw err; return null; });
    if (!results) return;
    this.entries = results.filter((r) => r.run).map((r, i) => ({...r, color: PALETTE[i % PALETTE.length]}));
    const missing = results.filter((r) => r.error);
    let allRuns = [];
    try {
      allRuns = (await api('/api/runs?limit=200&sort=-created_at', {signal}))?.items || [];
    } catch (err) {
      if (isAbort(err)) return;
      banner.error(`Could not list runs to add: ${err.message}`);
    }
    this.render(allRuns, missing);
  }

  render(allRuns, missing) {
    const ids = this.entries.map((e) => e.id);
    const addable = allRuns.filter((r) => !ids.includes(r.id));
    const addSel = h('select', {id: 'add-run'}, h('option', {value: ''}, 'choose a run…'),
      addable.map((r) => h('option', {value: r.id}, `${r.name || r.id} (${r.status}, ${r.id})`)));
    const picker = h('form', {class: 'compare-picker', onsubmit: (e) => {
      e.preventDefault();
      if (addSel.value) goTo([...ids, addSel.value]);
    }}, h('label', {for: 'add-run'}, 'Add a run'), addSel, h('button', {type: 'submit', class: 'btn'}, 'Add'));
    const chips = h('ul', {class: 'run-chips', 'aria-label': 'Runs being compared'}, this.entries.map((e) => h('li', {class: 'chip'},
      h('span', {class: 'swatch', style: {background: e.color}}),
      h('a', {href: `#/runs/${enc(e.id)}`}, e.run.name || e.id), ' ', e.badge = h('span', {}, statusBadge(e.run.status)),
      h('button', {type: 'button', class: 'link', 'aria-label': `Remove ${e.run.name || e.id} from the comparison`,
        onclick: () => goTo(ids.filter((x) => x !== e.id))}, '×'))));
    const charts = h('div');
    const diffHost = h('div');
    const paramsHost = h('div');
    replace(this.root,
      h('div', {class: 'page-head'}, h('h1', {}, 'Compare runs')),
      missing.length ? h('div', {class: 'error-box', role: 'alert'}, 'Left out: ', missing.map((m) => m.error).join('; ')) : null,
      h('section', {class: 'card'}, chips, picker),
      this.entries.length ? [
        sectionNav('Sections of this comparison', [['Metrics', () => document.getElementById('compare-charts')],
          ['Settings and results', () => document.getElementById('compare-params')],
          ['Config differences', () => document.getElementById('config-diff')]]),
        h('section', {class: 'card', id: 'compare-charts'}, h('header', {class: 'card-head'}, h('h2', {}, 'Metrics')), charts),
        paramsHost,
        h('section', {class: 'card', id: 'config-diff'},
          h('header', {class: 'card-head'}, h('h2', {}, 'Config differences')), diffHost),
      ] : h('div', {class: 'empty-state'}, h('p', {}, 'No runs chosen yet. Tick runs in the ',
        h('a', {href: '#/runs'}, 'runs list'), ' and press “Compare selected”, or add them here.')));
    if (!this.entries.length) return;
    const board = new ChartBoard(charts, {scope: this.scope,
      runs: this.entries.map((e) => ({id: e.id, label: e.run.name || e.id, color: e.color, start: e.run.started_at})),
      onError: (err) => { if (!isAbort(err)) banner.error(err.message); },
      view: this.urlView.view, onViewChange: (b) => writeView(boardParams(b))});
    this.followLiveRuns(board);
    const params = new ParametersPlot(paramsHost, this.entries,
      {onError: (err) => { if (!isAbort(err)) banner.error(`Could not draw the settings plot: ${err.message}`); }});
    this.scope.onDispose(() => params.dispose());
    params.draw();
    this.renderDiff(diffHost);
  }

  /**
   * Stream the new points of the runs still in progress into `board`. Each stream starts after the run's
   * last seq as fetched, and events arriving while the charts load wait and are replayed after, so no point
   * falls between the overview and the stream (the charts drop steps they already hold).
   */
  followLiveRuns(board) {
    let pending = [];
    const feed = (id, ev) => (pending ? pending.push([id, ev]) : board.ingest(id, ev));
    const live = this.entries.filter((e) => ACTIVE_STATUSES.has(e.run.status));
    for (const e of live.slice(0, MAX_LIVE_RUNS)) {
      const stream = new LiveStream(`/api/runs/${enc(e.id)}/stream?after=${e.run.last_seq}`, {
        run: (run) => { e.run = run; replace(e.badge, statusBadge(run.status)); },
        metric: (ev) => feed(e.id, ev),
        eval: (ev) => feed(e.id, ev),
      }, {label: `Live updates for ${e.run.name || e.id}`, resumable: true});
      this.scope.onDispose(() => stream.close());
    }
    if (live.length > MAX_LIVE_RUNS) {
      banner.show('compare-live', `Only the first ${MAX_LIVE_RUNS} runs in progress update live; reload for the others' new points.`, 'warn');
      this.scope.onDispose(() => banner.clear('compare-live'));
    }
    board.load()
      .then(() => board.applyZooms(this.urlView.zooms))
      .catch((err) => { if (!isAbort(err)) banner.error(`Could not load the charts: ${err.message}`); })
      .finally(() => {
        const queued = pending;
        pending = null;
        for (const [id, ev] of queued) board.ingest(id, ev);
      });
  }

  renderDiff(host) {
    // A run's name and tags are edited after it starts (PATCH) and its stored config keeps the first ones.
    const rows = configDiff(this.entries.map((e) => ({...e.config, name: e.run.name, tags: e.run.tags})));
    const nDiff = rows.filter((r) => r.differs).length;
    const onlyDiff = h('input', {type: 'checkbox', id: 'only-diff', checked: nDiff > 0,
      onchange: () => paint()});
    const tbody = h('tbody');
    const paint = () => {
      const shown = onlyDiff.checked ? rows.filter((r) => r.differs) : rows;
      tbody.replaceChildren(...shown.map((r) => h('tr', {class: r.differs ? 'differs' : ''},
        h('th', {scope: 'row', class: 'mono'}, r.key),
        r.values.map((v) => h('td', {class: 'mono'}, v === undefined ? h('span', {class: 'muted'}, '(absent)') : v)))));
      if (!shown.length) tbody.append(h('tr', {}, h('td', {colspan: this.entries.length + 1, class: 'muted'},
        'The configs are identical.')));
    };
    replace(host,
      h('p', {}, nDiff ? `${nDiff} of ${rows.length} keys differ (highlighted).` : `All ${rows.length} keys are equal.`, ' ',
        h('label', {class: 'inline', for: 'only-diff'}, onlyDiff, ' show only differing keys')),
      // Room for each run's values before the table scrolls sideways in its box (a phone, many runs).
      h('div', {class: 'table-wrap'}, h('table', {class: 'table diff-table',
        style: {minWidth: `calc(9rem + ${this.entries.length} * 8rem)`}},
        h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'key'), this.entries.map((e) => h('th', {scope: 'col'},
          h('span', {class: 'swatch', style: {background: e.color}}), e.run.name || e.id)))),
        tbody)));
    paint();
  }
}
