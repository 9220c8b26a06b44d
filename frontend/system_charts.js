// The run page's System group: CPU, memory and GPU use from the trainer's `system` events (sys/... series),
// drawn by the same ChartBoard as the training metrics. Hidden for runs that never reported any.

import {h} from './util.js';
import {api, enc} from './api.js';
import {ChartBoard, isSystemMetric} from './charts.js';

const gpu = (what) => (n) => new RegExp(`^sys/gpu\\d+/${what}$`).test(n);

export const SYSTEM_SPECS = [
  {key: 'sys-cpu', title: 'CPU (%, 100 = one core)', names: ['sys/cpu_percent', 'sys/host_cpu_percent']},
  {key: 'sys-memory', title: 'Memory (GiB)', names: ['sys/rss_gib', 'sys/workers_rss_gib',
    'sys/host_memory_used_gib', 'sys/host_memory_available_gib']},
  {key: 'sys-gpu-util', title: 'GPU utilisation (%)', match: gpu('util')},
  {key: 'sys-gpu-memory', title: 'GPU memory used (GiB)', match: gpu('memory_used_gib')},
  {key: 'sys-gpu-power', title: 'GPU power (W)', match: gpu('power_w')},
];

export class SystemCharts {
  /** `run`: the run page's chart entry {id, label, color, start}, shared with its metric charts. */
  constructor(host, {run, scope, onError}) {
    this.runId = run.id;
    this.scope = scope;
    const body = h('div');
    this.section = h('section', {class: 'card', id: 'system', hidden: true},
      h('header', {class: 'card-head'}, h('h2', {}, 'System'),
        h('span', {class: 'muted'}, 'trainer process and machine, sampled every train.system_every_s seconds')),
      body);
    host.append(this.section);
    this.board = new ChartBoard(body, {runs: [run], scope, onError,
      accept: isSystemMetric, specs: SYSTEM_SPECS, controlsPrefix: 'system-'});
  }

  /** `metrics`: the run's /metrics answer when the page already has it. */
  async load(metrics = null) {
    const body = metrics || await api(`/api/runs/${enc(this.runId)}/metrics`, {signal: this.scope.signal});
    if (!(body?.names || []).some(isSystemMetric)) return; // none yet: the first live sample shows the group
    this.section.hidden = false; // before drawing: plots need a width
    await this.board.load([body]);
  }

  reload() { return this.board.reload(); }

  /** A live `system` event. */
  ingest(event) {
    this.section.hidden = false;
    this.board.ingest(this.runId, event);
  }
}
