// The new-run form's "Sweep over settings": rows of a dotted config key and its values, each combination (or
// each of N random draws) one run, launched as `cliplab sweep` does (trainer/commands/sweep.py is the reference):
// every config is checked by the server before the first run is created, the runs share a tag, and the page
// lands on the runs table of that tag with a column per swept setting.

import {h, replace, flatten, deepCopy, setPath, isAbort} from './util.js';
import {api, enc, ApiError} from './api.js';
import jsyaml from './vendor/js-yaml.js';

export const MAX_SWEEP_RUNS = 100;
const RANGE = /^(loguniform|uniform|randint)\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)$/;
const NOT_SWEPT = new Set(['name', 'tags']); // the sweep names and tags its runs itself

/** A problem with what the user typed; `row` is the index of the row it is about (null: the sweep as a whole). */
export class SweepProblem extends Error {
  constructor(message, row = null) { super(message); this.row = row; }
}

// ---- parsing ----

/** Python's `f"{x:g}"`, so run names read as the CLI's: 0.0003, 1e-05, 64. */
export function fmtG(x) {
  if (!Number.isFinite(x)) return String(x);
  if (x === 0) return '0';
  const strip = (s) => (s.includes('.') ? s.replace(/\.?0+$/, '') : s);
  const [mantissa, expText] = x.toExponential(5).split('e');
  const exp = Number(expText);
  if (exp < -4 || exp >= 6) return `${strip(mantissa)}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  return strip(x.toFixed(Math.max(0, 5 - exp)));
}

const readable = (x) => Number(x.toPrecision(4)); // 0.000312 rather than 0.00031187461 in names and configs

/** A small seeded PRNG (mulberry32): the same seed draws the same sweep on every visit. */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function rangeDraw(key, kind, lowText, highText) {
  const whole = kind === 'randint';
  const num = (t) => (whole ? (/^[+-]?\d+$/.test(t) ? Number(t) : NaN) : Number(t));
  const [low, high] = [num(lowText), num(highText)];
  if (Number.isNaN(low) || Number.isNaN(high)) {
    throw new SweepProblem(`${key}: ${kind} takes two ${whole ? 'whole ' : ''}numbers, got (${lowText}, ${highText})`);
  }
  if (!(low < high) || !Number.isFinite(low) || !Number.isFinite(high)) {
    throw new SweepProblem(`${key}: ${kind}(${lowText}, ${highText}) needs finite bounds, low < high`);
  }
  if (kind === 'randint') return (rng) => low + Math.floor(rng() * (high - low + 1));
  if (kind === 'uniform') return (rng) => readable(low + (high - low) * rng());
  if (low <= 0) throw new SweepProblem(`${key}: loguniform needs bounds above 0, got ${lowText}`);
  const [a, b] = [Math.log(low), Math.log(high)];
  return (rng) => readable(Math.exp(a + (b - a) * rng()));
}

/**
 * One row -> an axis {key, values: [{value, label}], draw}. `raw` is `v1, v2, ...`, a YAML list `[[1,5],[1,10]]`
 * for a list-valued setting, or a range `loguniform(a,b)` / `uniform(a,b)` / `randint(a,b)` (inclusive);
 * `parseValue(key, text)` reads one value as the form reads that setting.
 */
export function parseAxis(key, raw, parseValue) {
  const m = raw.match(RANGE);
  if (m) return {key, values: [], draw: rangeDraw(key, m[1], m[2], m[3]), spec: raw};
  let values;
  if (raw.startsWith('[')) {
    let list;
    try { list = jsyaml.load(raw); } catch { list = null; }
    if (!Array.isArray(list) || !list.length) throw new SweepProblem(`${key}: ${raw} is not a non-empty YAML list of values`);
    values = list.map((v) => ({value: v, label: typeof v === 'string' ? v : JSON.stringify(v)}));
  } else {
    const pieces = raw.split(',').map((p) => p.trim());
    if (pieces.some((p) => p === '')) throw new SweepProblem(`${key}: an empty value in “${raw}”; separate values with single commas`);
    values = pieces.map((p) => ({value: parseValue(key, p), label: p}));
  }
  const seen = values.map((v) => JSON.stringify(v.value));
  const twice = seen.find((s, i) => seen.indexOf(s) !== i);
  if (twice !== undefined) throw new SweepProblem(`${key}: ${values[seen.indexOf(twice)].label} is listed twice`);
  return {key, values, draw: null, spec: raw};
}

/**
 * The settings of each run, [{key, value, label}, ...] per run: every combination of the axes, or `randomRuns`
 * random draws (distinct combinations when every axis is a list). Throws SweepProblem over `max` runs.
 */
export function sweepPoints(axes, randomRuns, seed, max = MAX_SWEEP_RUNS) {
  const combos = axes.reduce((n, a) => n * (a.draw ? Infinity : a.values.length), 1);
  const combo = (index) => {
    const point = [];
    for (let i = axes.length - 1; i >= 0; i--) { // the last axis varies fastest, as itertools.product
      const {key, values} = axes[i];
      point.unshift({key, ...values[index % values.length]});
      index = Math.floor(index / values.length);
    }
    return point;
  };
  if (randomRuns == null) {
    const ranged = axes.find((a) => a.draw);
    if (ranged) throw new SweepProblem(`${ranged.key}: a range is drawn from only in a random sweep; tick “Random” and say how many runs`, axes.indexOf(ranged));
    if (combos > max) {
      throw new SweepProblem(`This sweep makes ${combos} runs, over the limit of ${max}: remove some values, or tick “Random” to draw fewer.`);
    }
    return Array.from({length: combos}, (_, i) => combo(i));
  }
  if (randomRuns > max) throw new SweepProblem(`${randomRuns} random runs is over the limit of ${max}; ask for fewer.`);
  const rng = seededRandom(seed);
  if (Number.isFinite(combos)) { // only lists: distinct combinations, as many as there are
    if (randomRuns > combos) {
      throw new SweepProblem(`The values given make only ${combos} different combinations, fewer than ${randomRuns} random runs; untick “Random” to run them all, or add values.`);
    }
    const picked = new Set();
    while (picked.size < randomRuns) picked.add(Math.floor(rng() * combos));
    return [...picked].map(combo);
  }
  return Array.from({length: randomRuns}, () => axes.map((a) => {
    if (!a.draw) return {key: a.key, ...a.values[Math.floor(rng() * a.values.length)]};
    const value = a.draw(rng);
    return {key: a.key, value, label: Number.isInteger(value) && a.spec.startsWith('randint') ? String(value) : fmtG(value)};
  }));
}

const short = (text) => (text.length <= 24 ? text : `${text.slice(0, 23)}…`);

/** `cpu-demo-03 lr=3e-4 batch_size=128`: the sweep's name, the run's number and its settings (as the CLI). */
export function runName(base, index, width, point) {
  const settings = point.map((p) => `${p.key.split('.').pop()}=${short(p.label)}`).join(' ');
  return `${base}-${String(index).padStart(width, '0')} ${settings}`.trim().slice(0, 200);
}

/** Python's quote(text, safe=':/@'), so the link is the one `cliplab sweep` prints. */
const quote = (text) => encodeURIComponent(text).replace(/%3A/g, ':').replace(/%2F/g, '/').replace(/%40/g, '@')
  .replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/** The runs table showing only this sweep, a column per swept key, sorted by the best of `metric`. */
export function tableLink(tag, keys, metric) {
  const query = [['tag', tag], ...keys.map((k) => ['col', `config:${k}`])];
  if (metric) {
    const lowerIsBetter = metric.split('/').pop().includes('loss');
    query.push(['col', `best:${metric}`], ['sort', `${lowerIsBetter ? '' : '-'}best:${metric}`]);
  }
  return `#/runs?${query.map(([k, v]) => `${k}=${quote(v)}`).join('&')}`;
}

function defaultTag(base) {
  const d = new Date();
  const two = (n) => String(n).padStart(2, '0');
  return `sweep-${base}-${two(d.getMonth() + 1)}${two(d.getDate())}-${two(d.getHours())}${two(d.getMinutes())}${two(d.getSeconds())}`.slice(0, 64);
}

// ---- the widget ----

let rowIds = 0;

export class SweepFields {
  /** `parseValue(key, text)`: a value as the form reads that setting; `onChange()`: the sweep's count changed. */
  constructor({parseValue, onChange}) {
    this.parseValue = parseValue;
    this.onChange = onChange;
    this.rows = [];
    this.config = {};
    this.state = {active: false, points: [], problem: null};
  }

  /** The <details> part of the form. */
  element() {
    this.keyList = h('datalist', {id: 'sweep-keys'});
    this.rowsEl = h('div', {class: 'sweep-rows'});
    this.randomBox = h('input', {type: 'checkbox', id: 'sweep-random', onchange: () => this.update()});
    const num = (id, value, min) => h('input', {id, type: 'number', min, step: 1, inputmode: 'numeric', value,
      'aria-describedby': 'sweep-problem', oninput: () => this.update()});
    this.runsInput = num('sweep-runs', '10', 1);
    this.seedInput = num('sweep-seed', '0', 0);
    this.tagInput = h('input', {id: 'sweep-tag', type: 'text', autocomplete: 'off', 'aria-describedby': 'sweep-tag-hint',
      oninput: () => this.update()});
    this.countEl = h('p', {class: 'sweep-count', id: 'sweep-count', 'aria-live': 'polite'});
    this.problemEl = h('p', {class: 'field-error', id: 'sweep-problem', 'aria-live': 'polite'});
    this.namesEl = h('ol', {class: 'sweep-names', tabindex: 0, 'aria-label': 'The runs of the sweep'});
    this.summaryCount = h('span', {class: 'muted'});
    this.details = h('details', {class: 'sweep', id: 'sweep', ontoggle: () => {
      if (this.details.open && !this.rows.length) this.addRow(false);
    }},
    h('summary', {}, 'Sweep over settings', this.summaryCount),
    h('p', {class: 'hint', id: 'sweep-hint'}, 'Each setting takes comma-separated values; every combination becomes a run, ',
      'queued until the server has room. With “Random”, N runs are drawn instead, and a setting may also take a range: ',
      h('code', {}, 'loguniform(1e-5,1e-3)'), ', ', h('code', {}, 'uniform(0.1,0.5)'), ' or ', h('code', {}, 'randint(1,8)'), '.'),
    this.keyList, this.rowsEl,
    h('button', {type: 'button', class: 'btn btn-small', id: 'sweep-add', onclick: () => this.addRow(true)}, 'Add a setting'),
    h('div', {class: 'sweep-options'},
      h('label', {class: 'inline', for: 'sweep-random'}, this.randomBox, 'Random'),
      h('span', {class: 'sweep-option'}, h('label', {for: 'sweep-runs'}, 'Runs'), this.runsInput),
      h('span', {class: 'sweep-option'}, h('label', {for: 'sweep-seed'}, 'Seed'), this.seedInput),
      h('span', {class: 'sweep-option sweep-tag'}, h('label', {for: 'sweep-tag'}, 'Tag'), this.tagInput)),
    h('p', {class: 'hint', id: 'sweep-tag-hint'}, 'Every run of the sweep gets this tag; empty: sweep-<name>-<time>.'),
    this.countEl, this.problemEl, this.namesEl);
    this.update();
    return this.details;
  }

  addRow(focus) {
    const n = ++rowIds;
    const row = {};
    row.key = h('input', {id: `sweep-key-${n}`, type: 'text', list: 'sweep-keys', autocomplete: 'off', spellcheck: 'false',
      placeholder: 'optim.lr', 'aria-describedby': 'sweep-problem', oninput: () => this.update()});
    row.values = h('input', {id: `sweep-values-${n}`, type: 'text', autocomplete: 'off', spellcheck: 'false',
      placeholder: '1e-4, 3e-4, 1e-3', 'aria-describedby': 'sweep-hint sweep-problem', oninput: () => this.update()});
    const remove = h('button', {type: 'button', class: 'btn btn-small btn-quiet sweep-remove', 'aria-label': 'Remove this setting',
      onclick: () => this.removeRow(row)}, 'Remove');
    row.el = h('div', {class: 'sweep-row'},
      h('div', {class: 'field'}, h('label', {for: row.key.id}, 'Setting'), row.key),
      h('div', {class: 'field'}, h('label', {for: row.values.id}, 'Values'), row.values), remove);
    this.rows.push(row);
    this.rowsEl.append(row.el);
    if (focus) row.key.focus();
    this.update();
    return row;
  }

  removeRow(row) {
    const i = this.rows.indexOf(row);
    this.rows.splice(i, 1);
    row.el.remove();
    (this.rows[Math.min(i, this.rows.length - 1)]?.key || this.details.querySelector('#sweep-add')).focus();
    this.update();
  }

  /** The config being edited changed: offer its keys, and recount (names start with its name). */
  setConfig(config) {
    this.config = config || {};
    const keys = Object.keys(flatten(this.config)).filter((k) => !NOT_SWEPT.has(k));
    replace(this.keyList, keys.map((k) => h('option', {value: k})));
    this.update();
  }

  get active() { return this.state.active; }
  get count() { return this.state.points.length; }
  get problem() { return this.state.problem; }

  base() { return String(this.config.name || 'run'); }

  /** Parse the rows and options into the runs' settings; the state says what is wrong, if anything. */
  compute() {
    const rows = this.rows.map((r, i) => ({i, key: r.key.value.trim(), raw: r.values.value.trim()}))
      .filter((r) => r.key || r.raw);
    if (!rows.length) return {active: false, points: [], problem: null};
    try {
      const axes = rows.map(({i, key, raw}) => {
        if (!key) throw new SweepProblem('A row has values but no setting: name the dotted config key, e.g. optim.lr.', i);
        if (NOT_SWEPT.has(key)) throw new SweepProblem(`${key}: the sweep sets each run's ${key} itself; sweep another setting.`, i);
        if (!raw) throw new SweepProblem(`${key}: give its values, comma-separated.`, i);
        try { return parseAxis(key, raw, this.parseValue); } catch (err) { err.row = i; throw err; }
      });
      const twice = axes.find((a, j) => axes.findIndex((b) => b.key === a.key) !== j);
      if (twice) throw new SweepProblem(`${twice.key} has two rows; give its values in one.`, rows[axes.indexOf(twice)].i);
      const random = this.randomBox.checked ? this.wholeNumber(this.runsInput, 'Runs', 1) : null;
      const seed = this.wholeNumber(this.seedInput, 'Seed', 0);
      return {active: true, axes, points: sweepPoints(axes, random, seed), problem: null};
    } catch (err) {
      if (!(err instanceof SweepProblem)) throw err;
      return {active: true, points: [], problem: err};
    }
  }

  wholeNumber(input, label, min) {
    const text = input.value.trim();
    if (!/^\d+$/.test(text) || Number(text) < min) throw new SweepProblem(`${label} must be a whole number, ${min} or more.`);
    return Number(text);
  }

  update() {
    if (!this.countEl) return;
    this.state = this.compute();
    const {active, points, problem} = this.state;
    this.runsInput.disabled = this.seedInput.disabled = !this.randomBox.checked;
    for (const [i, r] of this.rows.entries()) {
      if (problem && problem.row === i) r.values.setAttribute('aria-invalid', 'true');
      else r.values.removeAttribute('aria-invalid');
    }
    this.problemEl.textContent = problem ? problem.message : '';
    const keys = this.state.axes?.map((a) => a.key) || [];
    const n = points.length;
    this.countEl.textContent = !active || problem ? ''
      : `${n} run${n === 1 ? '' : 's'}${this.randomBox.checked ? ' drawn at random' : ''}: ${keys.join(' × ')}`;
    this.summaryCount.textContent = active && !problem ? ` (${n} run${n === 1 ? '' : 's'})` : '';
    this.tagInput.placeholder = `sweep-${this.base()}-<time>`;
    const names = this.names();
    replace(this.namesEl, names.map((name) => h('li', {}, name)));
    this.namesEl.hidden = !names.length;
    this.onChange?.();
  }

  names() {
    const {points} = this.state;
    const width = String(points.length).length;
    return points.map((p, i) => runName(this.base(), i + 1, width, p));
  }

  /** What launching creates: each run's name, config and settings, the shared tag and the table link. */
  plan() {
    const {points, axes} = this.state;
    const names = this.names();
    const tag = this.tagInput.value.trim() || defaultTag(this.base());
    const runs = points.map((point, i) => {
      const config = deepCopy(this.config);
      for (const p of point) setPath(config, p.key, p.value);
      return {name: names[i], config, point};
    });
    const metric = this.config.data?.val ? this.config.checkpoint?.best_metric : null;
    return {runs, tag, link: tableLink(tag, axes.map((a) => a.key), metric || null)};
  }

  /** Focus the row a problem is about (or the sweep's options). */
  focusProblem() {
    this.details.open = true;
    const row = this.rows[this.state.problem?.row];
    (row ? (row.key.value.trim() ? row.values : row.key) : this.randomBox.checked ? this.runsInput : this.rows[0]?.values)?.focus();
  }

  focusSetting(key) {
    this.details.open = true;
    this.rows.find((r) => r.key.value.trim() === key)?.values.focus();
  }
}

// ---- launching ----

/** The server refuses one of the sweep's configs: nothing was launched. */
export class SweepRefused extends Error {
  constructor(message, key) { super(message); this.key = key; }
}

/** The server stopped answering (or refused a run) after `created` of the runs were made. */
export class SweepPartlyLaunched extends Error {
  constructor(message, created) { super(message); this.created = created; }
}

const settingsText = (point) => point.map((p) => `${p.key}=${p.label}`).join(', ');

/** The refusal in words: the swept setting (and value) it is about, else the run's settings. */
function refusal(run, errors) {
  const first = errors[0] || {field: '', message: 'the server refused it'};
  const field = first.field || '';
  const culprit = run.point.find((p) => field === p.key || field.startsWith(`${p.key}.`) || p.key.startsWith(`${field}.`));
  const what = culprit ? `${culprit.key}=${culprit.label}` : `the run with ${settingsText(run.point)}`;
  const said = errors.map((e) => (e.field ? `${e.field}: ${e.message}` : e.message)).join('; ');
  return new SweepRefused(`The server refuses ${what} (run “${run.name}”): ${said}. Nothing was launched.`, culprit?.key);
}

/**
 * Check every run's config with the server, then create them in order. `placement` is the form's launch body
 * (gpus, nproc, executor, slurm); `progress(text)` reports each step. Returns the created runs [{id, name}].
 * Throws SweepRefused (nothing created), SweepPartlyLaunched (some created) or the ApiError of the first run.
 */
export async function launchSweep(plan, placement, {signal, progress}) {
  const {slurm, ...check} = placement; // the config check takes the machine's launch fields, not SLURM's
  for (const [i, run] of plan.runs.entries()) {
    progress(`Checking run ${i + 1} of ${plan.runs.length}…`);
    let answer;
    try {
      answer = await api('/api/configs/validate', {method: 'POST', signal, body: {config: run.config, ...check}});
    } catch (err) {
      if (err instanceof ApiError && err.fields) throw refusal(run, err.fields);
      throw err;
    }
    if (answer?.valid === false) throw refusal(run, answer.errors || []);
  }
  const created = [];
  for (const [i, run] of plan.runs.entries()) {
    progress(`Creating run ${i + 1} of ${plan.runs.length}…`);
    try {
      const tags = [...new Set([...(run.config.tags || []), plan.tag])];
      const made = await api('/api/runs', {method: 'POST', signal, body: {name: run.name, config: run.config, tags, ...placement}});
      created.push({id: made.id, name: made.name});
    } catch (err) {
      if (isAbort(err) || !created.length) throw err;
      throw new SweepPartlyLaunched(`${created.length} of ${plan.runs.length} runs were created before this failed: `
        + `${err.message}. Launching again creates all ${plan.runs.length}: delete these first if you do.`, created);
    }
  }
  return created;
}

/** The created runs as links, for the message of a sweep that stopped part-way. */
export function createdList(created) {
  return h('ul', {class: 'sweep-created'}, created.map((r) => h('li', {}, h('a', {href: `#/runs/${enc(r.id)}`}, r.name), ` (${r.id})`)));
}
