// #/new and #/new?clone=<id>: the form for a run. One config object is the truth; the form fields and the
// YAML editor are two views of it, kept in sync both ways. Every change is validated by the API
// (POST /api/configs/validate) and its field messages are shown next to the fields they name.

import {h, replace, debounce, isAbort, getPath, setPath, deepCopy, fmtNum} from './util.js';
import {api, enc, ApiError} from './api.js';
import jsyaml from './vendor/js-yaml.js';
import {YamlErrorMarks} from './yaml_errors.js';
import {WhereFields} from './where_fields.js';
import {SweepFields, launchSweep, SweepRefused} from './sweep_form.js';

const PRECISIONS = [
  ['auto', 'auto (bf16 on CUDA, fp32 on CPU)'], ['fp32', 'fp32'], ['bf16', 'bf16'], ['fp16', 'fp16 (with loss scaling)'],
];

// The form's fields: `key` is the dotted config path; `also` are further paths whose errors belong here.
const FIELDS = [
  {key: 'name', label: 'Run name', type: 'text'},
  {key: 'model.preset', label: 'Model preset', type: 'preset'},
  {key: 'model.pretrained', label: 'Pretrained checkpoint', type: 'text', nullable: true,
    hint: 'Optional. Path to an OpenAI .pt, open_clip file or cliplab checkpoint; empty trains from scratch.'},
  {key: 'data.train', label: 'Dataset', type: 'dataset', also: ['data.val']},
  {key: 'train.batch_size', label: 'Batch size (per device)', type: 'int', min: 1},
  {key: 'optim.lr', label: 'Learning rate', type: 'float'},
  {key: 'train.steps', label: 'Steps', type: 'int', min: 1},
  {key: 'optim.warmup_steps', label: 'Warmup steps', type: 'int', min: 0},
  {key: 'train.precision', label: 'Precision', type: 'precision'},
  {key: 'eval.every', label: 'Evaluate every N steps', type: 'int', min: 1},
  {key: 'tags', label: 'Tags', type: 'tags', hint: 'Comma-separated.'},
];

const idFor = (key) => `field-${key.replace(/[^a-z0-9]+/gi, '-')}`;

export function mount(root, {query, scope}) {
  new NewRunForm(root, scope, query.get('clone')).start();
}

/** Turn what the user typed into the config value; unparseable text is passed through so the API names it. */
export function parseFieldValue(field, raw) {
  const text = String(raw ?? '').trim();
  if (field.type === 'int') return /^[+-]?\d+$/.test(text) ? Number(text) : text;
  if (field.type === 'float') return text !== '' && Number.isFinite(Number(text)) ? Number(text) : text;
  if (field.type === 'tags') return text ? text.split(',').map((t) => t.trim()).filter(Boolean) : [];
  if (field.nullable && text === '') return null;
  return text;
}

function formatFieldValue(field, value) {
  if (value == null) return '';
  if (field.type === 'tags') return Array.isArray(value) ? value.join(', ') : String(value);
  return String(value);
}

class NewRunForm {
  constructor(root, scope, cloneId) {
    this.root = root;
    this.scope = scope;
    this.cloneId = cloneId;
    this.config = {};
    this.gpus = 0;
    this.nproc = 1;
    this.datasets = [];
    this.presets = [];
    this.gpuCount = null;
    this.validateSeq = 0;
    this.yamlError = null;
    this.submitting = false;
    this.inputs = new Map(); // key -> input element
    this.errorEls = new Map(); // key -> <p> for that field's messages
    this.validateSoon = debounce(() => this.validate(), 250);
    this.yamlChangedSoon = debounce(() => this.onYamlInput(), 350);
    scope.onDispose(() => { this.validateSoon.cancel(); this.yamlChangedSoon.cancel(); });
  }

  async start() {
    replace(this.root, h('p', {class: 'muted'}, 'Loading the form…'));
    const signal = this.scope.signal;
    const soft = (p) => p.catch((err) => { if (isAbort(err)) throw err; return {error: err}; });
    try {
      const [presets, datasets, configs, system, source] = await Promise.all([
        soft(api('/api/presets', {signal})), soft(api('/api/datasets', {signal})), soft(api('/api/configs', {signal})),
        soft(api('/api/system', {signal})),
        this.cloneId ? Promise.all([api(`/api/runs/${enc(this.cloneId)}`, {signal}),
          api(`/api/runs/${enc(this.cloneId)}/config`, {signal})]) : null,
      ]);
      this.loadErrors = [presets, datasets, configs].filter((x) => x?.error).map((x) => x.error.message);
      this.presets = Array.isArray(presets) ? presets : [];
      this.datasets = Array.isArray(datasets) ? datasets : [];
      this.gpuCount = Array.isArray(system?.gpus) ? system.gpus.length : null;
      this.where = new WhereFields(system?.executors, source?.[0], () => this.onWhereChange());
      if (source) {
        const [run, cfg] = source;
        this.source = run;
        this.config = deepCopy(cfg.config) || {};
        this.config.name = `${run.name || run.id}-clone`;
        // Tags are edited after a run starts (PATCH): the clone takes the ones the run has now, not its first ones.
        if (Array.isArray(run.tags)) this.config.tags = [...run.tags];
        this.gpus = run.gpus ?? 0;
        this.nproc = run.nproc ?? Math.max(1, this.gpus);
      } else {
        const list = Array.isArray(configs) ? configs : [];
        // The CPU demo; without it `{}` is the CPU demo too (every field has a default).
        const demo = list.find((c) => c.default) || list.find((c) => /^cpu[-_]demo$/.test(c.name));
        this.config = deepCopy(demo?.config) || {};
      }
    } catch (err) {
      if (isAbort(err)) return;
      const what = this.cloneId ? `the run ${this.cloneId} to clone` : 'the form';
      replace(this.root, h('div', {class: 'error-box', role: 'alert'}, `Could not load ${what}: ${err.message}`));
      return;
    }
    // Show every knob: ask the API for the fully resolved config (defaults filled in).
    const first = await this.validate({quiet: true});
    if (first?.resolved) this.config = deepMerge(first.resolved, this.config);
    this.build();
    this.syncFormFromConfig();
    this.syncYamlFromConfig();
    this.sweep.setConfig(this.config);
    this.onWhereChange();
    this.showDatasetPreview();
    this.validate();
    this.inputs.get('name')?.focus();
  }

  build() {
    const title = this.source ? `Clone “${this.source.name || this.source.id}”` : 'New run';
    this.statusEl = h('p', {class: 'validation-status', 'aria-live': 'polite'});
    this.otherErrors = h('ul', {class: 'field-errors-list'});
    this.yamlArea = h('textarea', {id: 'config-yaml', rows: 26, spellcheck: 'false', autocomplete: 'off',
      'aria-describedby': 'yaml-error', oninput: () => this.yamlChangedSoon()});
    this.yamlErrorEl = h('p', {id: 'yaml-error', class: 'field-error', role: 'alert'});
    this.yamlMarks = new YamlErrorMarks(this.yamlArea);
    this.advanced = h('details', {class: 'advanced'},
      h('summary', {}, 'Advanced: the full config as YAML'),
      h('p', {class: 'muted'}, 'Edits here and in the form above stay in sync.'),
      h('label', {for: 'config-yaml', class: 'sr-only'}, 'Config YAML'), this.yamlMarks.el, this.yamlErrorEl);
    this.preview = h('div', {class: 'dataset-preview', 'aria-live': 'polite'});
    this.submitBtn = h('button', {type: 'submit', class: 'btn btn-primary', id: 'start-run'}, 'Start run');
    this.submitError = h('div', {'aria-live': 'assertive'});
    this.sweepProgress = h('p', {class: 'sweep-progress muted', 'aria-live': 'polite'});
    this.sweep = new SweepFields({onChange: () => this.updateSubmitLabel()});

    const form = h('form', {class: 'run-form', novalidate: true, onsubmit: (e) => { e.preventDefault(); this.submit(); }},
      h('div', {class: 'form-grid'},
        FIELDS.map((f) => this.fieldRow(f)),
        this.where.rows(),
        this.localRows = this.launchRows()),
      this.preview,
      this.sweep.element(),
      this.advanced,
      h('div', {class: 'other-errors'}, this.otherErrors),
      this.submitError,
      h('div', {class: 'form-actions'}, this.submitBtn, this.statusEl, h('a', {href: '#/runs', class: 'btn btn-quiet'}, 'Cancel')),
      this.sweepProgress);
    replace(this.root,
      h('div', {class: 'page-head'}, h('h1', {}, title),
        this.source ? h('p', {class: 'muted'}, 'From ', h('a', {href: `#/runs/${enc(this.source.id)}`}, this.source.id),
          '. Change what you like; the original run is untouched.') : null),
      this.loadErrors?.length ? h('div', {class: 'error-box', role: 'alert'},
        'Some choices could not be loaded: ', this.loadErrors.join('; ')) : null,
      h('section', {class: 'card'}, form));
  }

  fieldRow(field) {
    const id = idFor(field.key);
    const err = h('p', {class: 'field-error', id: `${id}-error`});
    let input;
    const onInput = () => this.onFieldInput(field, input.value);
    if (field.type === 'preset') {
      input = h('select', {id, onchange: onInput}, this.presetOptions());
    } else if (field.type === 'dataset') {
      input = h('select', {id, onchange: () => this.onDatasetChange()});
    } else if (field.type === 'precision') {
      input = h('select', {id, onchange: onInput}, PRECISIONS.map(([v, label]) => h('option', {value: v}, label)));
    } else if (field.type === 'int') {
      input = h('input', {id, type: 'number', step: 1, min: field.min, inputmode: 'numeric', oninput: onInput});
    } else if (field.type === 'float') {
      input = h('input', {id, type: 'text', inputmode: 'decimal', autocomplete: 'off', oninput: onInput});
    } else {
      input = h('input', {id, type: 'text', autocomplete: 'off', oninput: onInput});
    }
    input.setAttribute('aria-describedby', `${id}-error${field.hint ? ` ${id}-hint` : ''}`);
    input.dataset.key = field.key;
    this.inputs.set(field.key, input);
    this.errorEls.set(field.key, err);
    for (const k of field.also || []) this.errorEls.set(k, err);
    let hint = field.hint ? h('p', {class: 'hint', id: `${id}-hint`}, field.hint) : null;
    if (field.key === 'train.steps') hint = this.epochHint = h('p', {class: 'hint', id: `${id}-hint`});
    if (field.key === 'train.steps') input.setAttribute('aria-describedby', `${id}-error ${id}-hint`);
    return h('div', {class: `field field-${field.type}`}, h('label', {for: id}, field.label), input, hint, err);
  }

  launchRows() {
    const max = this.gpuCount ?? undefined;
    this.gpuInput = h('input', {id: 'field-gpus', type: 'number', min: 0, max, step: 1, inputmode: 'numeric',
      value: String(this.gpus), 'aria-describedby': 'field-gpus-hint field-gpus-error', oninput: () => { this.onLaunchInput(); this.validateSoon(); }});
    this.nprocInput = h('input', {id: 'field-nproc', type: 'number', min: 1, step: 1, inputmode: 'numeric',
      value: String(this.nproc), 'aria-describedby': 'field-nproc-hint field-nproc-error', oninput: () => { this.onLaunchInput(); this.validateSoon(); }});
    const gpuError = h('p', {class: 'field-error', id: 'field-gpus-error'});
    const nprocError = h('p', {class: 'field-error', id: 'field-nproc-error'});
    this.errorEls.set('gpus', gpuError);
    this.errorEls.set('nproc', nprocError);
    this.inputs.set('gpus', this.gpuInput);
    this.inputs.set('nproc', this.nprocInput);
    const gpuHint = this.gpuCount === 0 ? '0 = CPU. This server has no GPUs.'
      : this.gpuCount ? `0 = CPU. This server has ${this.gpuCount} GPU${this.gpuCount > 1 ? 's' : ''}.` : '0 = CPU.';
    this.nprocHint = h('p', {class: 'hint', id: 'field-nproc-hint'});
    return [
      h('div', {class: 'field'}, h('label', {for: 'field-gpus'}, 'GPUs'), this.gpuInput,
        h('p', {class: 'hint', id: 'field-gpus-hint'}, gpuHint), gpuError),
      h('div', {class: 'field'}, h('label', {for: 'field-nproc'}, 'Processes'), this.nprocInput, this.nprocHint, nprocError),
    ];
  }

  presetOptions() {
    const current = getPath(this.config, 'model.preset');
    const opts = this.presets.map((p) => h('option', {value: p.name}, p.description ? `${p.name} — ${p.description}` : p.name));
    if (current && !this.presets.some((p) => p.name === current)) opts.unshift(h('option', {value: current}, current));
    return opts;
  }

  // ---- datasets ----

  datasetValue(ds) { return ds.name === 'demo' ? 'demo' : (ds.train || ds.path); }

  fillDatasetSelect() {
    const sel = this.inputs.get('data.train');
    const current = getPath(this.config, 'data.train');
    const opts = this.datasets.map((ds) => {
      const c = ds.counts || {};
      const counts = [c.train != null ? `${c.train} train` : '', c.val != null ? `${c.val} val` : '',
        ds.classes?.length ? `${ds.classes.length} classes` : ''].filter(Boolean).join(', ');
      return h('option', {value: this.datasetValue(ds)}, counts ? `${ds.name} (${counts})` : ds.name);
    });
    if (!this.datasets.some((ds) => ds.name === 'demo')) {
      opts.push(h('option', {value: 'demo'}, 'demo (built in; generated on first use)'));
    }
    if (current && !opts.some((o) => o.value === current)) opts.push(h('option', {value: current}, `custom: ${current}`));
    sel.replaceChildren(...opts);
    sel.value = current ?? 'demo';
  }

  selectedDataset() {
    const value = getPath(this.config, 'data.train');
    return this.datasets.find((ds) => this.datasetValue(ds) === value || ds.train === value) || null;
  }

  onDatasetChange() {
    const value = this.inputs.get('data.train').value;
    const ds = this.datasets.find((d) => this.datasetValue(d) === value);
    setPath(this.config, 'data.train', value);
    if (ds) setPath(this.config, 'data.val', ds.name === 'demo' ? 'demo' : (ds.val ?? null));
    this.afterFormChange();
    this.showDatasetPreview();
  }

  async showDatasetPreview() {
    const ds = this.selectedDataset();
    if (!ds) {
      const value = getPath(this.config, 'data.train');
      replace(this.preview, h('p', {class: 'muted'}, value === 'demo'
        ? 'The demo dataset (rendered shapes with captions) is generated when the first run starts.'
        : 'No preview for a dataset outside the prepared list.'));
      return;
    }
    replace(this.preview, h('p', {class: 'muted'}, `Loading a preview of ${ds.name}…`));
    try {
      const items = await api(`/api/datasets/${enc(ds.name)}/preview?n=6`, {signal: this.scope.signal});
      if (this.selectedDataset() !== ds) return;
      replace(this.preview,
        h('h2', {class: 'small-heading'}, `A few pairs from ${ds.name}`),
        h('div', {class: 'preview-grid'}, (items || []).map((it) => h('figure', {},
          h('img', {src: it.image_url, alt: it.caption, loading: 'lazy', width: 96, height: 96}),
          h('figcaption', {}, it.caption)))));
    } catch (err) {
      if (!isAbort(err)) replace(this.preview, h('p', {class: 'error-box'}, `No preview: ${err.message}`));
    }
  }

  // ---- sync ----

  onFieldInput(field, raw) {
    setPath(this.config, field.key, parseFieldValue(field, raw));
    this.afterFormChange();
  }

  afterFormChange() {
    this.setYamlError(null);
    this.syncYamlFromConfig();
    this.sweep.setConfig(this.config);
    this.updateEpochHint();
    this.validateSoon();
  }

  /**
   * GPUs and processes: one GPU runs one process; N GPUs run under torchrun with one process per GPU (the
   * server insists), so Processes follows GPUs and is free only for CPU runs (torchrun on CPU with gloo).
   */
  onLaunchInput() {
    const asInt = (el) => (/^\d+$/.test(el.value.trim()) ? Number(el.value.trim()) : el.value.trim());
    this.gpus = asInt(this.gpuInput);
    const gpuRun = typeof this.gpus === 'number' && this.gpus > 0;
    if (gpuRun) this.nprocInput.value = String(this.gpus);
    this.nprocInput.disabled = gpuRun;
    this.nproc = asInt(this.nprocInput);
    const n = Number(this.nproc);
    this.nprocHint.textContent = gpuRun
      ? (this.gpus > 1 ? `torchrun with ${this.gpus} processes, one per GPU.` : 'One process on one GPU.')
      : (n > 1 ? `torchrun with ${n} CPU processes (gloo).` : 'One process.');
    this.showLaunchProblems();
    this.updateEpochHint();
  }

  /** Local or SLURM: the GPU and process fields are for this machine only; SLURM has its own. */
  onWhereChange() {
    for (const row of this.localRows || []) row.hidden = this.where.isSlurm;
    this.onLaunchInput();
  }

  launchProblems() {
    const out = [];
    if (this.where?.isSlurm) return out;
    if (typeof this.gpus !== 'number') out.push({field: 'gpus', message: 'must be a whole number (0 = CPU)'});
    else if (this.gpuCount != null && this.gpus > this.gpuCount) {
      const n = this.gpuCount;
      out.push({field: 'gpus', message: `this server has ${n} GPU${n === 1 ? '' : 's'}; ask for at most ${n}`});
    }
    if (typeof this.nproc !== 'number' || this.nproc < 1) out.push({field: 'nproc', message: 'must be a whole number, 1 or more'});
    return out;
  }

  showLaunchProblems(extra = []) {
    const problems = [...this.launchProblems(), ...extra];
    for (const key of ['gpus', 'nproc']) {
      const msgs = problems.filter((p) => p.field === key).map((p) => p.message);
      this.errorEls.get(key).textContent = msgs.join(' ');
      if (msgs.length) this.inputs.get(key).setAttribute('aria-invalid', 'true');
      else this.inputs.get(key).removeAttribute('aria-invalid');
    }
    return problems;
  }

  syncFormFromConfig() {
    this.fillDatasetSelect();
    const presetSel = this.inputs.get('model.preset');
    presetSel.replaceChildren(...this.presetOptions());
    for (const field of FIELDS) {
      const input = this.inputs.get(field.key);
      if (field.type === 'dataset') continue; // fillDatasetSelect owns it
      if (!input || input === document.activeElement) continue; // never fight the user's cursor
      input.value = formatFieldValue(field, getPath(this.config, field.key));
    }
    this.gpuInput.value = String(this.gpus);
    this.nprocInput.value = String(this.nproc);
    this.onLaunchInput();
  }

  syncYamlFromConfig() {
    this.yamlArea.value = jsyaml.dump(this.config, {lineWidth: -1, noRefs: true, flowLevel: 2});
  }

  onYamlInput() {
    let parsed;
    try {
      parsed = jsyaml.load(this.yamlArea.value);
    } catch (err) {
      const line = err.mark ? ` (line ${err.mark.line + 1}, column ${err.mark.column + 1})` : '';
      this.setYamlError(`The YAML does not parse${line}: ${err.reason || err.message}`);
      this.yamlMarks.show([{line: err.mark ? err.mark.line + 1 : 1, message: `does not parse: ${err.reason || err.message}`}]);
      return;
    }
    if (parsed == null) parsed = {};
    if (typeof parsed !== 'object' || Array.isArray(parsed)) {
      this.setYamlError('The YAML must be a mapping of sections (model:, data:, optim:, …).');
      return;
    }
    this.setYamlError(null);
    this.config = parsed;
    this.sweep.setConfig(this.config);
    this.syncFormFromConfig();
    this.showDatasetPreview();
    this.validate();
  }

  /**
   * While the YAML does not parse there is no config to check or start: say so in the status line and
   * disable Start, and drop the answer of any validation still in flight (it checked the last good config).
   */
  setYamlError(message) {
    const had = this.yamlError;
    this.yamlError = message;
    this.yamlErrorEl.textContent = message || '';
    this.submitBtn.disabled = !!message || this.submitting;
    if (message) {
      this.validateSeq += 1;
      this.statusEl.textContent = message.startsWith('The YAML does not parse')
        ? 'The YAML does not parse: fix it to start the run.' : 'The YAML is not a config: fix it to start the run.';
      this.statusEl.className = 'validation-status bad';
    } else if (had) {
      this.statusEl.textContent = 'Checking…';
      this.statusEl.className = 'validation-status';
    }
  }

  updateEpochHint() {
    if (!this.epochHint) return;
    const ds = this.selectedDataset();
    const n = ds?.counts?.train;
    const steps = Number(getPath(this.config, 'train.steps'));
    const batch = Number(getPath(this.config, 'train.batch_size')) * Math.max(1, Number(this.nproc) || 1);
    this.epochHint.textContent = n && steps && batch ? `≈ ${fmtNum((steps * batch) / n, 3)} epochs of ${ds.name} (${n} pairs).` : '';
  }

  // ---- validation ----

  async validate({quiet = false} = {}) {
    const seq = ++this.validateSeq;
    let body;
    try {
      // With this machine's launch fields, the check covers what creating the run checks (CPU cores, workers).
      const launch = this.where && !this.where.isSlurm && typeof this.gpus === 'number' && typeof this.nproc === 'number'
        ? {gpus: this.gpus, nproc: this.nproc, ...this.where.body()} : {};
      body = await api('/api/configs/validate', {method: 'POST', body: {config: this.config, ...launch}, signal: this.scope.signal});
    } catch (err) {
      if (isAbort(err)) return null;
      if (err instanceof ApiError && err.fields) body = {valid: false, errors: err.fields};
      else {
        if (!quiet && seq === this.validateSeq) this.statusEl.textContent = `Could not validate: ${err.message}`;
        return null;
      }
    }
    if (quiet) return body;
    if (seq !== this.validateSeq || this.yamlError) return null; // a newer edit is being validated
    this.showErrors(body?.errors || []);
    return body;
  }

  showErrors(errors) {
    const launchKeys = new Set(['gpus', 'nproc']);
    for (const [key, el] of this.errorEls) if (!launchKeys.has(key)) el.textContent = '';
    for (const [key, input] of this.inputs) if (!launchKeys.has(key)) input.removeAttribute('aria-invalid');
    const launch = this.showLaunchProblems(errors.filter((e) => launchKeys.has(e.field)));
    // Only run creation checks the "where" fields; a config check leaves their messages until they are edited.
    const whereErrors = errors.filter((e) => this.where.owns(e.field));
    if (whereErrors.length) this.where.showErrors(whereErrors);
    const whereCount = this.where.errorCount();
    errors = errors.filter((e) => !this.where.owns(e.field));
    const others = [];
    for (const e of errors.filter((x) => !launchKeys.has(x.field))) {
      const el = this.errorEls.get(e.field);
      if (el) {
        el.textContent = el.textContent ? `${el.textContent} ${e.message}` : e.message;
        const field = FIELDS.find((f) => f.key === e.field || (f.also || []).includes(e.field));
        this.inputs.get(field?.key)?.setAttribute('aria-invalid', 'true');
      } else {
        others.push(e);
      }
    }
    this.yamlMarks.show(errors.filter((x) => !launchKeys.has(x.field)));
    replace(this.otherErrors, others.map((e) => h('li', {class: 'field-error'}, h('code', {}, e.field), ': ', e.message)));
    if (others.length) this.advanced.open = true;
    const n = errors.filter((x) => !launchKeys.has(x.field)).length + launch.length + whereCount;
    this.statusEl.textContent = n ? `${n} problem${n > 1 ? 's' : ''} in the config.` : 'Config is valid.';
    this.statusEl.className = `validation-status ${n ? 'bad' : 'good'}`;
  }

  // ---- submit ----

  async submit() {
    this.yamlChangedSoon.cancel();
    if (this.yamlArea.value !== jsyaml.dump(this.config, {lineWidth: -1, noRefs: true, flowLevel: 2})) this.onYamlInput();
    if (this.yamlError) { this.advanced.open = true; this.yamlArea.focus(); return; }
    this.onLaunchInput();
    const launch = this.launchProblems();
    if (launch.length) { this.inputs.get(launch[0].field).focus(); return; }
    if (this.sweep.active) { await this.submitSweep(); return; }
    this.submitting = true;
    this.submitBtn.disabled = true;
    replace(this.submitError);
    try {
      const check = await this.validate();
      if (check && check.valid === false) {
        this.focusFirstError();
        return;
      }
      const where = this.where.body();
      const run = await api('/api/runs', {method: 'POST', signal: this.scope.signal, body: {
        name: this.config.name, config: this.config, tags: this.config.tags || [],
        ...(where.executor === 'slurm' ? {} : {gpus: this.gpus, nproc: this.nproc}), ...where,
      }});
      location.hash = `#/runs/${enc(run.id)}`;
    } catch (err) {
      if (isAbort(err)) return;
      if (err.fields) { this.showErrors(err.fields); this.focusFirstError(); }
      replace(this.submitError, h('div', {class: 'error-box', role: 'alert'}, `The run was not started: ${err.message}`));
    } finally {
      this.submitting = false;
      if (this.scope.alive) this.submitBtn.disabled = !!this.yamlError;
    }
  }

  /** "Launch 6 runs" while the sweep has runs; the single run's "Start run" otherwise. */
  updateSubmitLabel() {
    const {active, problem, count, counting} = this.sweep;
    this.submitBtn.textContent = !active ? 'Start run' : problem || counting ? 'Launch sweep'
      : `Launch ${count} run${count === 1 ? '' : 's'}`;
  }

  /** Every run of the sweep checked by the server, then created in order; then the runs table of its tag. */
  async submitSweep() {
    this.sweep.setConfig(this.config);
    if (this.sweep.problem) { this.sweep.focusProblem(); return; }
    this.submitting = true;
    this.submitBtn.disabled = true;
    replace(this.submitError);
    const where = this.where.body();
    const placement = {...(where.executor === 'slurm' ? {} : {gpus: this.gpus, nproc: this.nproc}), ...where};
    const plan = this.sweep.plan();
    try {
      await launchSweep(plan, placement, {signal: this.scope.signal, progress: (text) => { this.sweepProgress.textContent = text; }});
      location.hash = plan.link;
    } catch (err) {
      if (isAbort(err)) return;
      this.sweepProgress.textContent = '';
      const box = (...content) => replace(this.submitError, h('div', {class: 'error-box', role: 'alert'}, content));
      if (err instanceof SweepRefused) {
        box(err.message);
        if (err.key) this.sweep.focusSetting(err.key);
      } else {
        box(`The sweep was not launched: ${err.message}`);
      }
    } finally {
      this.submitting = false;
      if (this.scope.alive) this.submitBtn.disabled = !!this.yamlError;
    }
  }

  focusFirstError() {
    const bad = [...this.inputs.values(), ...this.where.inputs.values()].find((el) => el.getAttribute('aria-invalid') === 'true');
    if (bad) bad.focus();
    else { this.advanced.open = true; this.yamlArea.focus(); }
  }
}

/** Values of `over` laid over `base`, recursively (plain objects only). */
function deepMerge(base, over) {
  const out = deepCopy(base) || {};
  for (const [k, v] of Object.entries(over || {})) {
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && out[k] && typeof out[k] === 'object'
      ? deepMerge(out[k], v) : v;
  }
  return out;
}
