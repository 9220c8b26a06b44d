// The new-run form's "Sweep over settings": rows of a dotted config key and its values, each combination (or
// each of N random draws) one run. The server expands the sweep (POST /api/sweeps, contract/sweep.py: the same
// code `cliplab sweep` uses, so a seed draws the same runs in both): a debounced dry run gives the live count and
// the runs' names; "Launch N runs" has the server check every config, then create them all (or none), and the
// page lands on the runs table of their tag with a column per swept setting.

import {h, replace, flatten, debounce, isAbort} from './util.js';
import {api, enc, ApiError} from './api.js';

const NOT_OFFERED = new Set(['name', 'tags']); // the sweep names and tags its runs itself (the server refuses them)
const PREVIEW_DELAY_MS = 200;

/** A problem with what the user typed; `row` is the index of the row it is about (null: the sweep as a whole). */
export class SweepProblem extends Error {
  constructor(message, row = null) { super(message); this.row = row; }
}

/** The row a server problem's field is about: `axes.<i>.values` is the i-th row sent. */
function rowOfField(field, rowOf) {
  const m = /^axes\.(\d+)/.exec(field || '');
  return m ? rowOf[Number(m[1])] ?? null : null;
}

/** The server's refusal of a sweep it cannot list (a bad value, a range without Random, over the cap). */
function problemOf(problems, rowOf) {
  const first = problems[0] || {field: '', message: 'the server cannot list this sweep'};
  const text = problems.map((p) => p.message).join('; ');
  return new SweepProblem(`${text.charAt(0).toUpperCase()}${text.slice(1)}.`, rowOfField(first.field, rowOf));
}

// ---- the widget ----

let rowIds = 0;

export class SweepFields {
  /** `onChange()`: the sweep's count changed (the server reads the values, as `cliplab sweep` sends them). */
  constructor({onChange}) {
    this.onChange = onChange;
    this.rows = [];
    this.config = {};
    this.state = {active: false, names: [], keys: [], problem: null};
    this.previewSeq = 0;
    this.previewSoon = debounce(() => this.preview(), PREVIEW_DELAY_MS);
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
    const keys = Object.keys(flatten(this.config)).filter((k) => !NOT_OFFERED.has(k));
    replace(this.keyList, keys.map((k) => h('option', {value: k})));
    this.update();
  }

  get active() { return this.state.active; }
  get count() { return this.state.names.length; }
  get problem() { return this.state.problem; }
  get counting() { return !!this.state.counting; }

  base() { return String(this.config.name || 'run'); }

  /**
   * The rows and options as a POST /api/sweeps body ({body, rowOf}: rowOf[i] is the row of the i-th axis sent),
   * or what keeps them from being one (no rows: not active; Runs or Seed not a whole number: a problem).
   */
  request() {
    const rows = this.rows.map((r, i) => ({i, key: r.key.value.trim(), values: r.values.value.trim()}))
      .filter((r) => r.key || r.values);
    if (!rows.length) return {active: false};
    try {
      const random = this.randomBox.checked ? this.wholeNumber(this.runsInput, 'Runs', 1) : null;
      const seed = this.wholeNumber(this.seedInput, 'Seed', 0);
      const tag = this.tagInput.value.trim();
      const body = {config: this.config, axes: rows.map(({key, values}) => ({key, values})), random, seed,
        ...(tag ? {tags: [tag]} : {})};
      return {active: true, body, rowOf: rows.map((r) => r.i)};
    } catch (err) {
      if (!(err instanceof SweepProblem)) throw err;
      return {active: true, problem: err};
    }
  }

  wholeNumber(input, label, min) {
    const text = input.value.trim();
    if (!/^\d+$/.test(text) || Number(text) < min) throw new SweepProblem(`${label} must be a whole number, ${min} or more.`);
    return Number(text);
  }

  /** Something changed: show what is known at once, and ask the server for the runs a moment later. */
  update() {
    if (!this.countEl) return;
    this.runsInput.disabled = this.seedInput.disabled = !this.randomBox.checked;
    this.tagInput.placeholder = `sweep-${this.base()}-<time>`;
    const asked = this.request();
    this.asked = asked;
    if (!asked.active || asked.problem) {
      this.previewSeq += 1; // an answer still on its way is for rows that changed since
      this.previewSoon.cancel();
      this.show({active: asked.active, names: [], keys: [], problem: asked.problem || null});
      return;
    }
    // A sweep at once (Launch must not start a single run meanwhile); its runs when the server has counted them.
    if (!this.state.active || this.state.problem) this.show({active: true, names: [], keys: [], problem: null, counting: true});
    this.previewSoon();
  }

  /** The server's dry run of the sweep: its runs' names, or why it cannot list them. */
  async preview() {
    const seq = ++this.previewSeq;
    const {body, rowOf} = this.asked;
    let answer;
    try {
      answer = await api('/api/sweeps', {method: 'POST', body: {...body, dry_run: true}});
    } catch (err) {
      if (seq !== this.previewSeq || isAbort(err)) return;
      const problem = err instanceof ApiError && err.fields ? problemOf(err.fields, rowOf)
        : new SweepProblem(`Could not count the sweep's runs: ${err.message}`);
      this.show({active: true, names: [], keys: [], problem});
      return;
    }
    if (seq !== this.previewSeq) return;
    // No runs: the sweep cannot be listed. Runs the server would refuse are listed; Launch names the refusal.
    const problem = answer.runs.length ? null : problemOf(answer.problems, rowOf);
    this.show({active: true, names: answer.runs.map((r) => r.name), keys: answer.keys, problem, random: body.random != null});
  }

  show(state) {
    this.state = state;
    const {active, names, keys, problem} = state;
    for (const [i, r] of this.rows.entries()) {
      if (problem && problem.row === i) r.values.setAttribute('aria-invalid', 'true');
      else r.values.removeAttribute('aria-invalid');
    }
    this.problemEl.textContent = problem ? problem.message : '';
    const n = names.length;
    this.countEl.textContent = !active || problem ? '' : state.counting ? 'Counting the runs…'
      : `${n} run${n === 1 ? '' : 's'}${state.random ? ' drawn at random' : ''}: ${keys.join(' × ')}`;
    this.summaryCount.textContent = active && !problem && !state.counting ? ` (${n} run${n === 1 ? '' : 's'})` : '';
    replace(this.namesEl, names.map((name) => h('li', {}, name)));
    this.namesEl.hidden = !names.length;
    this.onChange?.();
  }

  /** What launching sends: the sweep's POST /api/sweeps body; `launchSweep` fills in `link`, the runs table. */
  plan() {
    const asked = this.request();
    return {body: asked.body, rowOf: asked.rowOf, link: null};
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

/** The server refuses the sweep (a value, a config, the cap): nothing was launched. `key`: the setting it is about. */
export class SweepRefused extends Error {
  constructor(message, key) { super(message); this.key = key; }
}

/** The refusal in words, with the swept setting it is about (to focus its row). */
function refusal(problems, plan) {
  const keys = plan.body.axes.map((a) => a.key);
  const field = problems[0]?.field || '';
  const axis = /^axes\.(\d+)/.exec(field);
  const key = axis ? keys[Number(axis[1])]
    : keys.find((k) => field === k || field.startsWith(`${k}.`) || k.startsWith(`${field}.`));
  const said = problems.map((p) => p.message).join('; ') || 'it gave no reason';
  return new SweepRefused(`The server refuses the sweep: ${said}. Nothing was launched.`, key);
}

/**
 * Have the server check every run of the sweep, then create them all under the tag it checked them with.
 * `placement` is the form's launch body (gpus, nproc, executor, slurm); `progress(text)` reports each step.
 * Returns the created runs [{id, name}] and sets `plan.link`. Throws SweepRefused (nothing created) or the
 * ApiError of the request that failed.
 */
export async function launchSweep(plan, placement, {signal, progress}) {
  const body = {...plan.body, ...placement};
  progress('Checking the runs of the sweep…');
  const check = await api('/api/sweeps', {method: 'POST', signal, body: {...body, dry_run: true}});
  if (!check.valid) throw refusal(check.problems, plan);
  progress(`Creating ${check.runs.length} runs…`);
  let made;
  try {
    made = await api('/api/sweeps', {method: 'POST', signal, body: {...body, tags: [check.tag], dry_run: false}});
  } catch (err) {
    if (err instanceof ApiError && err.fields) throw refusal(err.fields, plan);
    throw err;
  }
  plan.link = made.link.slice(made.link.indexOf('#'));
  return made.created.map((r) => ({id: r.id, name: r.name}));
}
