// The new-run form's "where" choice: on this machine (local) or as a SLURM batch job, with the SLURM
// resources (partition, nodes, GPUs and CPUs per node, time limit, QOS). What the server offers comes from
// GET /api/system (`executors`): the enabled executors, the allowed partitions and sinfo's node counts.

import {h} from './util.js';

const LABELS = {local: 'This machine', slurm: 'SLURM cluster'};
const SLURM_FIELDS = [
  {key: 'slurm.nodes', label: 'Nodes', min: 1, value: 1},
  {key: 'slurm.gpus_per_node', label: 'GPUs per node', min: 0, value: 0},
  {key: 'slurm.cpus_per_task', label: 'CPUs per node', min: 1},
];

export class WhereFields {
  /** `info`: the `executors` of /api/system (absent on older servers: local only); `source`: a run to clone. */
  constructor(info, source, onChange) {
    this.enabled = Array.isArray(info?.enabled) && info.enabled.length ? info.enabled : ['local'];
    this.slurmInfo = info?.details?.slurm || null;
    this.executor = source?.executor && this.enabled.includes(source.executor) ? source.executor
      : (info?.default || this.enabled[0]);
    this.request = {...(source?.executor === 'slurm' ? source.slurm : {})};
    this.onChange = onChange;
    this.inputs = new Map();
    this.errorEls = new Map();
  }

  get isSlurm() { return this.executor === 'slurm'; }

  owns(field) { return field === 'executor' || field === 'slurm' || field.startsWith('slurm.'); }

  rows() {
    const out = [];
    if (this.enabled.length > 1) {
      const select = h('select', {id: 'field-executor', onchange: () => { this.executor = select.value; this.update(); }},
        this.enabled.map((name) => h('option', {value: name}, LABELS[name] || name)));
      select.value = this.executor;
      out.push(this.row('executor', 'Where', select, 'Where the trainer runs.'));
    }
    if (!this.enabled.includes('slurm')) return out;
    this.slurmRows = [this.partitionRow(), ...SLURM_FIELDS.map((f) => this.numberRow(f)),
      this.textRow('slurm.time_limit', 'Time limit', this.slurmInfo?.time_limit, 'minutes, HH:MM:SS or D-HH:MM:SS; empty: the partition\'s limit'),
      this.textRow('slurm.qos', 'QOS', '', 'Optional quality of service.')];
    out.push(...this.slurmRows);
    this.update(false);
    return out;
  }

  row(key, label, input, hint) {
    const id = input.id;
    const err = h('p', {class: 'field-error', id: `${id}-error`});
    input.setAttribute('aria-describedby', `${id}-hint ${id}-error`);
    this.inputs.set(key, input);
    this.errorEls.set(key, err);
    return h('div', {class: 'field'}, h('label', {for: id}, label), input, h('p', {class: 'hint', id: `${id}-hint`}, hint), err);
  }

  partitionRow() {
    const sinfo = new Map((this.slurmInfo?.partitions || []).map((p) => [p.name, p]));
    const allowed = this.slurmInfo?.allowed_partitions || [];
    const describe = (name) => {
      const p = sinfo.get(name);
      return p ? `${name} (${p.idle} idle / ${p.total} nodes)` : name;
    };
    const options = allowed.length ? allowed.map((name) => h('option', {value: name}, describe(name)))
      : [h('option', {value: ''}, 'the cluster\'s default')];
    const select = h('select', {id: 'field-slurm-partition', onchange: () => this.update()}, options);
    select.value = this.request.partition || this.slurmInfo?.default_partition || (allowed[0] ?? '');
    return this.row('slurm.partition', 'Partition', select, 'Idle nodes as sinfo reports them.');
  }

  numberRow(field) {
    const name = field.key.split('.')[1];
    const max = name === 'nodes' ? this.slurmInfo?.max_nodes : name === 'gpus_per_node' ? this.slurmInfo?.max_gpus_per_node : undefined;
    const value = this.request[name] ?? field.value ?? this.slurmInfo?.cpus_per_task ?? 1;
    const input = h('input', {id: `field-slurm-${name.replace(/_/g, '-')}`, type: 'number', min: field.min, max, step: 1,
      inputmode: 'numeric', value: String(value), oninput: () => this.update()});
    const hint = max != null ? `At most ${max}.` : 'One task per node; data-loader workers share these.';
    return this.row(field.key, field.label, input, hint);
  }

  textRow(key, label, value, hint) {
    const name = key.split('.')[1];
    const input = h('input', {id: `field-slurm-${name.replace(/_/g, '-')}`, type: 'text', autocomplete: 'off',
      value: this.request[name] ?? value ?? '', oninput: () => this.update()});
    return this.row(key, label, input, hint);
  }

  update(notify = true) {
    for (const row of this.slurmRows || []) row.hidden = !this.isSlurm;
    if (notify) {
      this.showErrors([]); // an edit answers the server's last word on these fields
      this.onChange?.();
    }
  }

  /** The part of the run-creation body this widget owns. */
  body() {
    if (!this.isSlurm) return this.enabled.length > 1 || this.executor !== 'local' ? {executor: this.executor} : {};
    const num = (key) => {
      const text = this.inputs.get(key).value.trim();
      return /^\d+$/.test(text) ? Number(text) : text;
    };
    const text = (key) => this.inputs.get(key).value.trim() || null;
    return {executor: 'slurm', slurm: {
      partition: text('slurm.partition'), nodes: num('slurm.nodes'), gpus_per_node: num('slurm.gpus_per_node'),
      cpus_per_task: num('slurm.cpus_per_task'), time_limit: text('slurm.time_limit'), qos: text('slurm.qos'),
    }};
  }

  errorCount() { return [...this.errorEls.values()].filter((el) => el.textContent).length; }

  /** Show the API's messages for the fields this widget owns (and clear the others'). */
  showErrors(errors) {
    for (const [key, el] of this.errorEls) {
      const msgs = errors.filter((e) => e.field === key || (key === 'executor' && e.field === 'slurm')).map((e) => e.message);
      el.textContent = msgs.join(' ');
      const input = this.inputs.get(key);
      if (msgs.length) input.setAttribute('aria-invalid', 'true'); else input.removeAttribute('aria-invalid');
    }
  }
}
