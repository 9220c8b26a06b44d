// Run progress shared by the runs list and the run page: a bar, step / total and an ETA.

import {h, fmtDuration, toDate, ACTIVE_STATUSES} from './util.js';

/** Steps per second from recent (time, step) samples; null until there are two samples a few seconds apart. */
export class RateMeter {
  constructor(windowS = 120) { this.windowS = windowS; this.samples = []; }
  add(step, t = Date.now() / 1000) {
    if (step == null) return;
    const last = this.samples[this.samples.length - 1];
    if (last && step < last.step) this.samples = []; // resumed from an earlier checkpoint
    if (!last || step !== last.step) this.samples.push({t, step});
    while (this.samples.length > 2 && t - this.samples[0].t > this.windowS) this.samples.shift();
  }
  rate() {
    const a = this.samples[0], b = this.samples[this.samples.length - 1];
    if (!a || b.t - a.t < 3 || b.step <= a.step) return null;
    return (b.step - a.step) / (b.t - a.t);
  }
}

/** "120 / 600" with a bar and an ETA (from the live rate, else from the average since start). */
export function progressCell(run, meter) {
  // Before the trainer reports total_steps (queued, starting) the config says how many steps it will run.
  const total = run.total_steps || run.config?.train?.steps, step = run.step ?? 0;
  if (!total) return h('span', {class: 'muted'}, step ? `step ${step}` : '–');
  const frac = Math.max(0, Math.min(1, step / total));
  let eta = '';
  if (run.status === 'running' && step < total) {
    let rate = meter ? meter.rate() : null;
    // Before the live rate, the average over the time spent training: a resumed run's attempts summed, not the
    // wall time since its first start (which counts the hours it was stopped and made the ETA far too long).
    const spent = durationOf(run);
    if (rate == null && spent != null && step > 0) rate = step / Math.max(1, spent);
    if (rate) eta = `ETA ${fmtDuration((total - step) / rate)}`;
  }
  return h('div', {class: 'progress-cell'},
    h('div', {class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': total, 'aria-valuenow': step},
      h('div', {class: 'progress-bar', style: {width: `${(frac * 100).toFixed(1)}%`}})),
    h('span', {class: 'progress-text'}, `${step} / ${total}`, eta ? h('span', {class: 'muted'}, ` · ${eta}`) : null));
}

/** Seconds spent running: the attempts' times summed (a resume does not count the time between), live while active. */
export function durationOf(run) {
  const active = ACTIVE_STATUSES.has(run.status);
  if (run.attempts?.length) {
    const now = Date.now() / 1000;
    return run.attempts.reduce((sum, a) => sum + Math.max(0, (a.ended_at ?? (active ? now : a.started_at)) - a.started_at), 0);
  }
  const start = toDate(run.started_at);
  if (!start) return null;
  const end = toDate(run.finished_at) || (active ? new Date() : null);
  return end ? (end.getTime() - start.getTime()) / 1000 : null;
}
