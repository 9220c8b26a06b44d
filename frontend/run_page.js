// #/runs/<id>: one run's header and actions, live charts, similarity matrix, logs, checkpoints and config.
// One SSE stream carries everything live: the Run record (`run` events, on every status or progress change,
// including launcher-side ones such as queued -> running) and the trainer's events (metrics, evals, matrices).

import {h, replace, debounce, isAbort, fmtBytes, fmtDateTime, fmtDuration,
  statusBadge, attachedBadge, metricList, ACTIVE_STATUSES, STOPPABLE, DELETABLE} from './util.js';
import {api, enc, LiveStream} from './api.js';
import {banner} from './banner.js';
import {confirmDialog, fieldsDialog, numberDialog, positiveNumber, wholeNumberAtLeast} from './dialog.js';
import {ChartBoard} from './charts.js';
import {SystemCharts} from './system_charts.js';
import {AttemptsList} from './attempts.js';
import {RunNotes} from './run_notes.js';
import {SimilarityMatrix} from './matrix.js';
import {RateMeter, progressCell, durationOf} from './progress.js';
import {loadPlotly} from './plotly_loader.js';
import {readView, boardParams, writeView} from './view_url.js';
import {sectionNav} from './section_nav.js';

// Resume a run that ended early (and has a checkpoint: the Run record's `can_resume`); stop and delete: util.js.
const RESUMABLE = new Set(['stopped', 'failed']);
const FAILED = new Set(['failed', 'lost']);
// A run that ended (finished too) may go on from any complete step of its Checkpoints card ("Resume from here").
const ENDED = new Set(['stopped', 'failed', 'finished']);

/** The `cliplab train` command that resumes an attached run where it ran (from `latest`, or a step directory). */
function resumeCommand(run, stepDir = null) {
  const from = stepDir ? `${run.run_dir}/checkpoints/${stepDir}` : 'latest';
  return `cliplab train --resume ${from} --run-dir ${run.run_dir} --server ${location.origin}`;
}

/** An attached run resumes where it ran, not from here: the command that does it. */
function resumeByHand(run) {
  return `It was started outside this dashboard: resume it where it ran with ${resumeCommand(run)}`;
}

export function mount(root, {params, query, scope}) {
  new RunPage(root, params[0], scope, query).start();
}

class RunPage {
  constructor(root, id, scope, query) {
    this.root = root;
    this.id = id;
    this.scope = scope;
    this.urlView = readView(query || new URLSearchParams()); // smoothing, x-axis, zoom, matrix step from the link
    this.run = null;
    this.meter = new RateMeter();
    this.stream = null;
    this.onError = (err) => { if (!isAbort(err)) banner.error(err.message); };
  }

  async start() {
    const {root, scope} = this;
    replace(root, h('p', {class: 'muted'}, 'Loading run…'));
    // Screen readers wait for the whole page rather than announcing each section as it fills in.
    root.setAttribute('aria-busy', 'true');
    scope.onDispose(() => root.removeAttribute('aria-busy'));
    try {
      await this.load();
    } finally {
      if (scope.alive) root.removeAttribute('aria-busy'); // else #app is already the next page's, maybe busy
    }
  }

  async load() {
    const {root, scope} = this;
    loadPlotly().catch(() => {}); // start parsing it now; a failure is reported by the charts
    try {
      this.run = await api(`/api/runs/${enc(this.id)}`, {signal: scope.signal});
    } catch (err) {
      if (isAbort(err)) return;
      const text = err.status === 404
        ? `There is no run with id “${this.id}”; it may have been deleted.`
        : `Could not load run ${this.id}: ${err.message}`;
      replace(root, h('div', {class: 'error-box', role: 'alert'}, text, ' ', h('a', {href: '#/runs'}, 'Back to the runs list.')));
      return;
    }
    this.highestStep = this.run.step ?? -1;
    this.build();
    this.renderRun();
    this.openStream(this.run.last_seq);
    scope.interval(() => this.tick(), 1000);
    await Promise.all([this.loadData(), this.loadLogs(), this.loadCheckpoints(), this.loadConfig()]);
  }

  /** Charts and matrices; live events that arrive meanwhile wait in `pending` and are replayed after. */
  async loadData() {
    this.pending = [];
    // One /metrics answer for both chart boards (training and System), not one request each.
    const metrics = await api(`/api/runs/${enc(this.id)}/metrics`, {signal: this.scope.signal})
      .catch((err) => { this.onError(err); return null; });
    if (!this.scope.alive) return;
    await Promise.all([
      this.board.load(metrics && [metrics]).then(() => this.board.applyZooms(this.urlView.zooms)).catch(this.onError),
      this.matrix.load().catch(this.onError), this.system.load(metrics).catch(this.onError)]);
    const queued = this.pending || [];
    this.pending = null;
    for (const [kind, ev] of queued) this.dispatch(kind, ev);
  }

  dispatch(kind, ev) {
    if (this.pending) { this.pending.push([kind, ev]); return; }
    if (kind === 'matrix') this.matrix.addEvent(ev);
    else if (kind === 'system') this.system.ingest(ev);
    else this.board.ingest(this.id, ev);
  }

  build() {
    this.head = h('div', {class: 'run-head'});
    this.stateBox = h('div', {class: 'state-box', 'aria-live': 'polite'});
    this.chartsEl = h('div');
    this.logsPre = h('pre', {class: 'logs', tabindex: 0, 'aria-label': 'Log tail'}, 'Loading…');
    this.checkpointsEl = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
    this.configPre = h('pre', {class: 'config-yaml'}, 'Loading…');
    const matrixHost = h('div');
    const systemHost = h('div');
    const attemptsHost = h('div');
    const notesHost = h('div');
    const byId = (id) => () => document.getElementById(id);
    replace(this.root,
      this.head, this.stateBox,
      sectionNav('Sections of this run', [['Notes', byId('notes')], ['Metrics', byId('charts')],
        ['Similarity matrix', byId('matrix')], ['Logs', byId('logs')], ['Checkpoints', byId('checkpoints')],
        ['Config', byId('config')]]),
      notesHost,
      h('section', {class: 'card', id: 'charts'}, h('header', {class: 'card-head'}, h('h2', {}, 'Metrics'),
        // Every stored point of every series (the charts show buckets); a plain link: the login cookie goes with it.
        h('a', {class: 'btn btn-small', href: `/api/runs/${enc(this.id)}/metrics.csv`, download: true}, 'Download CSV')),
        this.chartsEl),
      matrixHost,
      systemHost,
      attemptsHost,
      h('div', {class: 'two-col'},
        h('section', {class: 'card', id: 'logs'}, h('header', {class: 'card-head'}, h('h2', {}, 'Logs'),
          h('button', {type: 'button', class: 'btn btn-small', onclick: () => this.loadLogs()}, 'Refresh')), this.logsPre),
        h('section', {class: 'card', id: 'checkpoints'}, h('header', {class: 'card-head'}, h('h2', {}, 'Checkpoints')),
          this.checkpointsEl)),
      h('section', {class: 'card', id: 'config'}, h('details', {},
        h('summary', {}, h('h2', {class: 'inline'}, 'Config')), this.configPre)));
    const saveView = () => writeView([...boardParams(this.board), ...this.matrix.viewParams()]);
    // `start`, the zero of the elapsed axis, follows the run record (a queued run gets it when it starts).
    this.chartRun = {id: this.id, label: this.id, color: '#0072B2', start: this.run.started_at};
    this.board = new ChartBoard(this.chartsEl, {runs: [this.chartRun],
      scope: this.scope, onError: this.onError, view: this.urlView.view, onViewChange: saveView, sections: true});
    this.matrix = new SimilarityMatrix(matrixHost, {runId: this.id, signal: this.scope.signal, onError: this.onError,
      ...this.urlView.matrix, onViewChange: saveView});
    this.attempts = new AttemptsList(attemptsHost);
    this.notes = new RunNotes(notesHost, {runId: this.id, onSaved: (run) => this.onRunUpdate(run)});
    this.system = new SystemCharts(systemHost, {run: this.chartRun, scope: this.scope, onError: this.onError});
    this.scope.onDispose(() => this.matrix.dispose());
    this.reloadLogsSoon = debounce(() => this.loadLogs(), 800);
    this.reloadCheckpointsSoon = debounce(() => this.loadCheckpoints(), 500);
    this.refreshRunSoon = debounce(() => this.refreshRun(), 300);
    this.scope.onDispose(() => { this.reloadLogsSoon.cancel(); this.reloadCheckpointsSoon.cancel(); this.refreshRunSoon.cancel(); });
  }

  // ---- the Run record ----

  onRunUpdate(run) {
    if (!run || run.id !== this.id) return;
    const was = this.run?.status;
    this.run = run;
    if (this.chartRun) this.chartRun.start = run.started_at;
    this.meter.add(run.step);
    this.renderRun();
    if (was !== run.status) {
      this.reloadLogsSoon();
      this.reloadCheckpointsSoon();
    }
  }

  async refreshRun() {
    try {
      this.onRunUpdate(await api(`/api/runs/${enc(this.id)}`, {signal: this.scope.signal}));
    } catch (err) { this.onError(err); }
  }

  tick() {
    if (this.run && this.run.status === 'running') this.renderProgress();
    // Stdout lines are not events: poll the log tail while the process is alive.
    if (this.run && ACTIVE_STATUSES.has(this.run.status) && Date.now() - (this.lastLogLoad || 0) > 5000) this.loadLogs();
  }

  /** The header; its buttons are rebuilt only when the status changes, so focus survives progress updates. */
  renderRun() {
    const run = this.run;
    document.title = `${run.name || run.id} · cliplab`;
    if (!this.titleEl) {
      this.titleEl = h('div', {class: 'run-title'});
      this.actionsEl = h('div', {class: 'run-actions'});
      this.metaEl = h('dl', {class: 'run-meta'});
      this.metricsEl = h('div', {class: 'run-metrics'});
      this.progressEl = h('div', {class: 'run-progress'});
      replace(this.head, this.titleEl, this.actionsEl, this.metaEl, this.metricsEl, this.progressEl);
    }
    replace(this.titleEl, h('h1', {}, run.name || run.id), statusBadge(run.status), attachedBadge(run),
      h('span', {class: 'muted mono'}, run.id), (run.tags || []).map((t) => h('span', {class: 'tag'}, t)));
    const actionsKey = `${run.status}|${run.can_resume}`;
    if (this.actionsStatus !== actionsKey) {
      const focusedId = this.actionsEl.contains(document.activeElement) ? document.activeElement.id : null;
      replace(this.actionsEl, this.actions());
      this.actionsStatus = actionsKey;
      if (focusedId) document.getElementById(focusedId)?.focus();
    }
    const meta = [
      ['Model', run.model || run.config?.model?.preset],
      ['Dataset', run.dataset || run.config?.data?.train],
      ['Devices', run.gpus ? `${run.gpus} GPU${run.gpus > 1 ? 's' : ''}${run.nproc > 1 ? ` · torchrun ×${run.nproc}` : ''}`
        : (run.nproc > 1 ? `CPU · torchrun ×${run.nproc}` : 'CPU')],
      ['Where', whereText(run)],
      ['Host', run.attached_host],
      ['Run dir', run.attached ? run.run_dir : null],
      ['Created', fmtDateTime(run.created_at)],
      ['Started', fmtDateTime(run.started_at)],
    ];
    replace(this.metaEl, meta.filter(([, v]) => v).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]),
      h('dt', {}, 'Duration'), h('dd', {class: 'duration'}, fmtDuration(durationOf(run)) || '–'));
    // Each label in one box with its values: a long Latest list wraps inside its box, and Best starts a line.
    replace(this.metricsEl,
      h('span', {class: 'metric-group'}, h('span', {class: 'label'}, 'Latest'), metricList(run.latest, 6)),
      h('span', {class: 'metric-group'}, h('span', {class: 'label'}, 'Best'), metricList(run.best, 4)));
    this.renderProgress();
    this.attempts.update(run);
    this.notes.update(run);
    const stateKey = `${run.status}|${run.reason}|${run.can_resume}|${run.resume_from}`;
    if (this.stateStatus !== stateKey) {
      this.stateStatus = stateKey;
      this.renderState();
    }
  }

  renderProgress() {
    if (!this.progressEl) return;
    replace(this.progressEl, progressCell(this.run, this.meter));
    const dur = this.head.querySelector('.duration');
    if (dur) dur.textContent = fmtDuration(durationOf(this.run)) || '–';
  }

  actions() {
    const run = this.run;
    const out = [];
    if (STOPPABLE.has(run.status)) {
      out.push(h('button', {type: 'button', class: 'btn btn-danger', id: 'stop-run', onclick: () => this.stop()}, 'Stop'));
    }
    if (RESUMABLE.has(run.status)) out.push(this.resumeButton());
    if (run.status === 'finished' && run.can_resume) {  // a finished run goes on with more steps (API: resume)
      out.push(h('button', {type: 'button', class: 'btn', id: 'continue-run', onclick: () => this.trainLonger()},
        'Train longer…'));
    }
    // Cloning changes nothing (the form starts nothing until submitted): a plain link, no confirmation.
    out.push(h('a', {class: 'btn', id: 'clone-run', href: `#/new?clone=${enc(run.id)}`,
      title: 'Open the new-run form filled with this run’s config and current tags'}, 'Clone'));
    out.push(h('a', {class: 'btn', href: `#/compare?ids=${enc(run.id)}`}, 'Compare…'));
    if (DELETABLE.has(run.status)) {
      out.push(h('button', {type: 'button', class: 'btn btn-quiet', id: 'delete-run', onclick: () => this.remove()}, 'Delete'));
    }
    return out;
  }

  /**
   * Resume, disabled with the reason when the server says there is no checkpoint (`can_resume`); servers
   * without the field get the status rule alone. The tooltip sits on a wrapper: disabled buttons get no hover.
   */
  resumeButton() {
    const btn = h('button', {type: 'button', class: 'btn', id: 'resume-run', onclick: () => this.resume()}, 'Resume');
    if (this.run.can_resume !== false) return btn;
    const why = this.run.attached ? resumeByHand(this.run)
      : 'No checkpoint to resume from: the run ended before saving one. Clone it to start again.';
    btn.disabled = true;
    btn.setAttribute('aria-describedby', 'resume-why');
    return h('span', {class: 'disabled-action', title: why}, btn, h('span', {id: 'resume-why', class: 'sr-only'}, why));
  }

  async act(label, fn) {
    try {
      const run = await fn();
      if (run && run.id === this.id) this.onRunUpdate(run);
      return run;
    } catch (err) {
      if (!isAbort(err)) banner.error(`${label} failed: ${err.message}`);
      return null;
    }
  }

  async stop() {
    const ok = await confirmDialog({title: `Stop “${this.run.name}”?`, danger: true, ok: 'Stop run',
      text: this.run.attached
        ? 'The attached trainer sees the request at its next poll (every few seconds), saves a checkpoint and exits.'
        : 'The trainer saves a checkpoint and exits; Resume continues from it later.'});
    if (ok) await this.act('Stopping the run', () => api(`/api/runs/${enc(this.id)}/stop`, {method: 'POST'}));
  }

  async resume() {
    const ok = await confirmDialog({title: `Resume “${this.run.name}”?`, ok: 'Resume',
      text: 'The run is queued again and continues from its latest checkpoint.'});
    if (ok) await this.act('Resuming the run', () => api(`/api/runs/${enc(this.id)}/resume`, {method: 'POST'}));
  }

  /**
   * "Resume from here" on a complete step of the Checkpoints card: Resume's confirmation (a finished run: Train
   * longer's step count, from that step) naming what the rewind abandons; posts the step as `checkpoint`.
   */
  async resumeFrom(ckpt) {
    const run = this.run;
    const later = (this.checkpoints || []).filter((c) => c.step != null && c.step > ckpt.step && /^step_/.test(c.name));
    const text = `The run is queued again and continues from ${ckpt.name} (step ${ckpt.step}). `
      + (later.length ? `Its newer checkpoints (${later.map((c) => c.name).join(', ')}) are abandoned: they are `
        + 'removed when the resumed run saves its first checkpoint, so download one first if you want to keep it. ' : '')
      + `The charts drop the points logged after step ${ckpt.step}.`;
    const title = `Resume “${run.name}” from step ${ckpt.step}?`;
    const steps = run.config?.train?.steps ?? run.step;
    const lr = run.config?.optim?.lr;
    const fields = [];
    if (run.status === 'finished') { // it has no steps left: how far to train from that step
      fields.push({name: 'steps', id: 'dialog-number', label: 'Train until step', value: steps > ckpt.step ? steps : 2 * steps,
        attrs: {type: 'number', min: ckpt.step + 1, step: 1, inputmode: 'numeric'}, parse: wholeNumberAtLeast(ckpt.step + 1)});
    }
    // A rewind past a loss spike usually goes on with a lower learning rate.
    fields.push({name: 'lr', id: 'dialog-lr', label: 'Learning rate (optim.lr)', value: lr ?? '',
      attrs: {type: 'text', inputmode: 'decimal', spellcheck: 'false', autocomplete: 'off'}, parse: positiveNumber});
    const values = await fieldsDialog({title, ok: 'Resume', text, fields});
    if (!values) return;
    const overrides = {};
    if (values.steps !== undefined && values.steps !== steps) overrides['train.steps'] = values.steps;
    if (values.lr !== lr) overrides['optim.lr'] = values.lr;
    const body = {checkpoint: ckpt.name, ...(Object.keys(overrides).length ? {overrides} : {})};
    await this.act('Resuming the run', () => api(`/api/runs/${enc(this.id)}/resume`, {method: 'POST', body}));
  }

  async trainLonger() {
    const done = this.run.config?.train?.steps ?? this.run.step;
    const steps = await numberDialog({title: `Train “${this.run.name}” longer?`, ok: 'Resume',
      text: `It finished its ${done} steps. It resumes from its last checkpoint with the same settings, `
        + 'its learning-rate schedule recomputed for the new length.',
      label: 'Train until step', value: 2 * done, min: done + 1});
    if (steps == null) return;
    await this.act('Resuming the run', () => api(`/api/runs/${enc(this.id)}/resume`,
      {method: 'POST', body: {overrides: {'train.steps': steps}}}));
  }

  async remove() {
    const ok = await confirmDialog({title: `Delete “${this.run.name}”?`, danger: true, ok: 'Delete',
      text: this.run.attached
        ? 'This removes the run record and its metrics from the dashboard; the run directory where it ran stays.'
        : 'This removes the run record, its metrics, logs and checkpoints. It cannot be undone.'});
    if (!ok) return;
    try {
      await api(`/api/runs/${enc(this.id)}`, {method: 'DELETE'});
      location.hash = '#/runs';
    } catch (err) { banner.error(`Deleting the run failed: ${err.message}`); }
  }

  renderState() {
    const run = this.run;
    let box = null;
    if (run.status === 'queued' && run.executor === 'slurm') {
      box = h('div', {class: 'info-box'}, h('strong', {}, 'Queued. '), run.slurm_job_id
        ? `SLURM job ${run.slurm_job_id} is waiting: ${run.reason || 'pending'}.` : 'Being submitted to SLURM.');
    } else if (run.status === 'queued') {
      box = h('div', {class: 'info-box'}, h('strong', {}, 'Queued. '),
        `Waiting for ${run.gpus ? `${run.gpus} free GPU${run.gpus > 1 ? 's' : ''}` : 'a free CPU slot'}; `,
        'it starts when a running job ends.', run.resume_from ? ` It resumes from ${run.resume_from}.` : '');
    } else if (run.status === 'starting') {
      box = h('div', {class: 'info-box'}, h('strong', {}, 'Starting. '), run.attached
        ? `The attached trainer${run.attached_host ? ` on ${run.attached_host}` : ''} is loading the model and data.`
        : 'The trainer process is loading the model and data.');
    } else if (run.status === 'stopping') {
      box = h('div', {class: 'info-box'}, h('strong', {}, 'Stopping. '), run.attached
        ? 'Waiting for the attached trainer to see the request at its next poll, save a checkpoint and exit.'
        : 'Waiting for the trainer to save a checkpoint and exit.');
    } else if (FAILED.has(run.status)) {
      this.failureLines = this.failureLines || h('pre', {class: 'logs logs-short'}, 'Loading the last log lines…');
      box = h('div', {class: 'error-box', role: 'alert'},
        h('strong', {}, run.status === 'lost' ? 'Lost: ' : 'Failed: '),
        run.reason || (run.exit_code != null ? `the trainer exited with status ${run.exit_code}` : 'no reason recorded'),
        h('p', {class: 'muted'}, 'Last log lines:'), this.failureLines);
    } else if (run.status === 'stopped') {
      box = h('div', {class: 'info-box'}, h('strong', {}, 'Stopped'), ` at step ${run.step ?? 0}`,
        run.reason ? ` (${run.reason})` : '',
        run.attached ? `. ${resumeByHand(run)}`
          : run.can_resume === false ? '. It saved no checkpoint; Clone starts it again from scratch.'
            : '. Resume continues from the latest checkpoint.');
    }
    replace(this.stateBox, box);
  }

  // ---- the run's event stream ----

  /**
   * The run's SSE stream: a `run` record first and on every change, then its events after `afterSeq` (the
   * last seq the page's REST reads had seen, so nothing falls between them), resumable after drops.
   */
  openStream(afterSeq) {
    const url = `/api/runs/${enc(this.id)}/stream${afterSeq != null ? `?after=${afterSeq}` : ''}`;
    this.stream = new LiveStream(url, {
      run: (run) => this.onRunUpdate(run),
      deleted: () => {
        banner.show(`deleted:${this.id}`, `Run ${this.id} was deleted.`, 'warn', {lasts: 'next'});
        location.hash = '#/runs';
      },
      metric: (ev) => { this.dispatch('metric', ev); this.onStep(ev.step, ev.total_steps); },
      eval: (ev) => this.dispatch('eval', ev),
      system: (ev) => this.dispatch('system', ev),
      matrix: (ev) => this.dispatch('matrix', ev),
      log: () => this.reloadLogsSoon(),
      checkpoint: () => this.reloadCheckpointsSoon(),
      heartbeat: (ev) => this.onStep(ev.step, ev.total_steps),
      status: (ev) => {
        this.refreshRunSoon();
        // A resume after a crash starts again from its checkpoint: the steps after it will be logged anew.
        if (ev.status === 'running' && ev.step != null && ev.step < this.highestStep) this.rewindCharts(ev.step);
      },
    }, {label: 'Live updates for this run', resumable: true});
    this.scope.onDispose(() => this.stream.close());
  }

  /** Refetch the charts (the server dropped the replaced points); live points wait meanwhile, as at load. */
  async rewindCharts(step) {
    this.highestStep = step;
    this.pending = this.pending || [];
    await Promise.all([this.board.reload().catch(this.onError), this.system.reload().catch(this.onError),
      this.matrix.reload().catch(this.onError)]);
    const queued = this.pending;
    this.pending = null;
    for (const [kind, ev] of queued) this.dispatch(kind, ev);
  }

  onStep(step, total) {
    if (step == null) return;
    this.highestStep = Math.max(this.highestStep ?? -1, step);
    this.meter.add(step);
    if (step > (this.run.step ?? -1)) this.run.step = step;
    if (total) this.run.total_steps = total;
    this.renderProgress();
  }

  // ---- logs, checkpoints, config ----

  async loadLogs() {
    this.lastLogLoad = Date.now();
    try {
      const body = await api(`/api/runs/${enc(this.id)}/logs?tail=200`, {signal: this.scope.signal});
      // stdout.log normally holds everything; the `log` events stand in when it is empty or gone.
      let lines = body?.lines || [];
      if (!lines.length && body?.events?.length) lines = body.events.map((e) => `[${e.level || 'info'}] ${e.message}`);
      const pre = this.logsPre;
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      pre.textContent = lines.length ? lines.join('\n') : '(no log lines yet)';
      if (atBottom) pre.scrollTop = pre.scrollHeight;
      if (this.failureLines) this.failureLines.textContent = lines.slice(-15).join('\n') || '(no log lines)';
    } catch (err) {
      if (!isAbort(err)) this.logsPre.textContent = `Could not load the logs: ${err.message}`;
    }
  }

  async loadCheckpoints() {
    try {
      const list = await api(`/api/runs/${enc(this.id)}/checkpoints`, {signal: this.scope.signal});
      this.checkpoints = list || [];
      if (!list?.length) {
        replace(this.checkpointsEl, h('p', {class: 'empty muted'},
          'No checkpoints yet (saved every checkpoint.every steps and at the end).'));
        return;
      }
      replace(this.checkpointsEl, h('div', {class: 'table-scroll'}, h('table', {class: 'table compact'},
        h('thead', {}, h('tr', {}, ['Name', 'Step', 'Kind', 'Size', ''].map((t) => h('th', {scope: 'col'}, t)))),
        h('tbody', {}, list.map((c) => h('tr', {},
          h('td', {class: 'mono'}, c.name), h('td', {}, c.step ?? ''), h('td', {}, c.kind ? h('span', {class: 'tag'}, c.kind) : ''),
          h('td', {}, fmtBytes(c.size_bytes)),
          h('td', {},
            h('a', {href: `/api/runs/${enc(this.id)}/checkpoints/${enc(c.name)}/download`, download: true}, 'Download'),
            c.resumable && ENDED.has(this.run.status) ? [' ', this.resumeHere(c)] : null)))))));
    } catch (err) {
      if (!isAbort(err)) replace(this.checkpointsEl, h('p', {class: 'error-box'}, `Could not list checkpoints: ${err.message}`));
    }
  }

  /** A complete step of a run that ended: "Resume from here" (an attached run: the command that does it). */
  resumeHere(ckpt) {
    const run = this.run;
    if (run.attached) {
      return h('details', {}, h('summary', {}, 'Resume from here', h('span', {class: 'sr-only'}, ` ${ckpt.name}`)),
        h('p', {class: 'muted'}, 'Where it ran:'), h('code', {class: 'mono'}, resumeCommand(run, ckpt.name)));
    }
    return h('button', {type: 'button', class: 'btn btn-small', onclick: () => this.resumeFrom(ckpt)},
      'Resume from here', h('span', {class: 'sr-only'}, ` ${ckpt.name}`));
  }

  async loadConfig() {
    try {
      const body = await api(`/api/runs/${enc(this.id)}/config`, {signal: this.scope.signal});
      this.configPre.textContent = body?.yaml || JSON.stringify(body?.config, null, 2);
    } catch (err) {
      if (!isAbort(err)) this.configPre.textContent = `Could not load the config: ${err.message}`;
    }
  }
}

/** Where a run trains: this machine, or its SLURM job (id, partition, nodes). */
export function whereText(run) {
  // An attached run trains wherever its trainer was started (the Host line names it), not on the server's machine.
  if (run.attached) return 'Outside this dashboard (attached)';
  if (run.executor !== 'slurm') return run.executor && run.executor !== 'local' ? run.executor : 'This machine';
  const partition = run.slurm_partition || run.slurm?.partition;
  const parts = [run.slurm_job_id ? `SLURM job ${run.slurm_job_id}` : 'SLURM', partition ? `partition ${partition}` : '',
    run.slurm_nodelist ? `nodes ${run.slurm_nodelist}` : `${run.slurm?.nodes ?? 1} node${(run.slurm?.nodes ?? 1) > 1 ? 's' : ''}`];
  return parts.filter(Boolean).join(' · ');
}
