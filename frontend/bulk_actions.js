// The runs list's actions on the ticked runs: Delete, Stop, Add tag, Remove tag. Each asks first, naming how many
// runs it touches, then calls the per-run endpoint for each (a few at a time) and reports the runs that failed,
// with the server's reason, leaving the others done.

import {h, replace, canStop, canDelete} from './util.js';
import {api, enc} from './api.js';
import {confirmDialog} from './dialog.js';

const PARALLEL = 4; // requests in flight at once: quick for a sweep, gentle on the server for hundreds
const MAX_TAG_LENGTH = 64; // contract/config.py

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
const nameOf = (run) => run.name || run.id;
/** " 2 other selected runs: still active; left as they are." for the runs an action skips; '' for none. */
const leftAlone = (n, why) => (n ? ` ${plural(n, 'other selected run')}: ${why}; left as ${n === 1 ? 'it is' : 'they are'}.` : '');

/** Call `fn(run)` for every run, PARALLEL at a time; resolves [{run, value} | {run, error}] in input order. */
export async function eachRun(runs, fn) {
  const out = new Array(runs.length);
  let next = 0;
  const worker = async () => {
    while (next < runs.length) {
      const i = next++;
      try { out[i] = {run: runs[i], value: await fn(runs[i])}; } catch (error) { out[i] = {run: runs[i], error}; }
    }
  };
  await Promise.all(Array.from({length: Math.min(PARALLEL, runs.length)}, worker));
  return out;
}

/** "2 of 5 runs could not be stopped" and each failure's reason; null when all succeeded. */
export function failureReport(results, verb) {
  const failed = results.filter((r) => r.error);
  if (!failed.length) return null;
  return {
    summary: `${failed.length} of ${plural(results.length, 'run')} could not be ${verb}`,
    lines: failed.map(({run, error}) => `${nameOf(run)}: ${error.message}`),
  };
}

export class BulkActions {
  /** `onResult(results, kind)` after an action: the page applies the records it got back (or the deletions). */
  constructor({onResult, onClear}) {
    this.onResult = onResult;
    this.runs = [];
    this.busy = false;
    const btn = (id, text, onclick, cls = 'btn btn-small') => h('button', {type: 'button', class: cls, id, onclick}, text);
    this.countEl = h('span', {class: 'bulk-count'});
    this.addBtn = btn('bulk-add-tag', 'Add tag…', () => this.addTag());
    this.removeBtn = btn('bulk-remove-tag', 'Remove tag…', () => this.removeTag());
    this.stopBtn = btn('bulk-stop', 'Stop', () => this.stop(), 'btn btn-small btn-danger');
    this.deleteBtn = btn('bulk-delete', 'Delete', () => this.remove(), 'btn btn-small btn-danger');
    this.clearBtn = btn('bulk-clear', 'Clear selection', () => onClear(), 'btn btn-small btn-quiet');
    this.resultEl = h('div', {class: 'bulk-result', 'aria-live': 'polite'});
    this.bar = h('div', {class: 'bulk-bar', role: 'group', 'aria-label': 'Actions on the selected runs', hidden: true},
      this.countEl, this.addBtn, this.removeBtn, this.stopBtn, this.deleteBtn, this.clearBtn);
    this.el = h('div', {class: 'bulk-actions'}, this.bar, this.resultEl);
  }

  /** The ticked runs (their latest records) and how many of them the filters hide. */
  update(runs, hidden = 0) {
    this.runs = runs;
    this.bar.hidden = !runs.length;
    const stoppable = runs.filter(canStop).length, deletable = runs.filter(canDelete).length;
    this.countEl.textContent = `${runs.length} selected${hidden ? ` (${hidden} not shown by the filters)` : ''}`;
    // Stop and Delete only when some selected run allows it; each says how many runs it would touch.
    this.stopBtn.hidden = !stoppable;
    this.stopBtn.textContent = `Stop (${stoppable})`;
    this.deleteBtn.hidden = !deletable;
    this.deleteBtn.textContent = `Delete (${deletable})`;
    // While an action runs, no second one starts on the same runs.
    for (const b of [this.addBtn, this.stopBtn, this.deleteBtn]) b.disabled = this.busy;
    this.removeBtn.disabled = this.busy || !runs.some((r) => r.tags?.length);
    this.removeBtn.title = runs.some((r) => r.tags?.length) ? '' : 'None of the selected runs has a tag';
  }

  async stop() {
    const runs = this.runs.filter(canStop);
    const ok = await confirmDialog({title: `Stop ${plural(runs.length, 'run')}?`, danger: true,
      ok: `Stop ${plural(runs.length, 'run')}`,
      text: 'Each trainer saves a checkpoint and exits; Resume continues from it later.'
        + leftAlone(this.runs.length - runs.length, 'not live')});
    if (ok) await this.perform('stop', runs, 'stopped', 'Stopping',
      (run) => api(`/api/runs/${enc(run.id)}/stop`, {method: 'POST'}));
  }

  async remove() {
    const runs = this.runs.filter(canDelete);
    const ok = await confirmDialog({title: `Delete ${plural(runs.length, 'run')}?`, danger: true,
      ok: `Delete ${plural(runs.length, 'run')}`,
      text: 'This removes their records, metrics, logs and checkpoints (an attached run’s own directory stays). '
        + 'It cannot be undone.' + leftAlone(this.runs.length - runs.length, 'still active (stop it first)')});
    if (ok) await this.perform('delete', runs, 'deleted', 'Deleting',
      // Gone already (deleted elsewhere meanwhile) is what was asked for, not a failure.
      (run) => api(`/api/runs/${enc(run.id)}`, {method: 'DELETE'}).catch((err) => { if (err.status !== 404) throw err; }));
  }

  async addTag() {
    const input = h('input', {id: 'bulk-tag', maxlength: MAX_TAG_LENGTH, autocomplete: 'off'});
    const error = h('p', {class: 'field-error', id: 'bulk-tag-error', role: 'alert'});
    input.setAttribute('aria-describedby', 'bulk-tag-error');
    const body = h('div', {class: 'field'}, h('label', {for: 'bulk-tag'}, 'Tag'), input, error);
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') { e.preventDefault(); body.closest('dialog').querySelector('button[value=ok]').click(); }
    });
    const n = this.runs.length;
    for (;;) {
      if (!await confirmDialog({title: `Add a tag to ${plural(n, 'run')}`, ok: 'Add tag', body, focus: input,
        text: 'Runs that already have it are left as they are.'})) return;
      const tag = input.value.trim();
      if (tag) {
        const runs = this.runs.filter((r) => !(r.tags || []).includes(tag));
        if (!runs.length) { replace(this.resultEl, h('p', {role: 'status'}, `They all have “${tag}” already.`)); return; }
        await this.perform('tags', runs, `tagged “${tag}”`, 'Tagging',
          (run) => api(`/api/runs/${enc(run.id)}`, {method: 'PATCH', body: {add_tags: [tag]}}));
        return;
      }
      error.textContent = 'type a tag';
    }
  }

  async removeTag() {
    const counts = new Map();
    for (const run of this.runs) for (const t of run.tags || []) counts.set(t, (counts.get(t) || 0) + 1);
    const tags = [...counts.keys()].sort((a, b) => a.localeCompare(b));
    const select = h('select', {id: 'bulk-untag'},
      tags.map((t) => h('option', {value: t}, `${t} (${plural(counts.get(t), 'run')})`)));
    const n = this.runs.length;
    const say = h('p', {'aria-live': 'polite'});
    const describe = () => {
      say.textContent = `Removes “${select.value}” from ${counts.get(select.value)} of the ${plural(n, 'selected run')}.`;
    };
    select.addEventListener('change', describe);
    describe();
    const body = h('div', {class: 'field'}, h('label', {for: 'bulk-untag'}, 'Tag'), select, say);
    if (!await confirmDialog({title: `Remove a tag from the ${plural(n, 'selected run')}`, ok: 'Remove tag', body,
      focus: select})) return;
    const tag = select.value;
    const runs = this.runs.filter((r) => (r.tags || []).includes(tag));
    await this.perform('tags', runs, `untagged “${tag}”`, 'Untagging',
      (run) => api(`/api/runs/${enc(run.id)}`, {method: 'PATCH', body: {remove_tags: [tag]}}));
  }

  /** Run `fn` on each run, then say what happened: all done, or which runs failed and why. */
  async perform(kind, runs, verb, doing, fn) {
    this.busy = true;
    this.update(this.runs);
    replace(this.resultEl, h('p', {class: 'muted bulk-progress', role: 'status'}, `${doing} ${plural(runs.length, 'run')}…`));
    let results = [];
    try {
      results = await eachRun(runs, fn);
    } finally {
      this.busy = false;
      this.update(this.runs);
    }
    this.onResult(results, kind);
    this.report(results, verb);
  }

  report(results, verb) {
    this.showResult(results, verb);
    // The button that started it may be gone (no run left to delete): keep a keyboard user's place.
    const at = document.activeElement;
    if (!at || at === document.body || at.closest('[hidden]')) this.resultEl.querySelector('button')?.focus();
  }

  showResult(results, verb) {
    const failed = failureReport(results, verb);
    const done = results.length - (failed ? results.filter((r) => r.error).length : 0);
    const dismiss = h('button', {type: 'button', class: 'btn btn-small', onclick: () => replace(this.resultEl)}, 'Dismiss');
    if (!failed) {
      replace(this.resultEl, h('p', {class: 'bulk-done', role: 'status'}, `${plural(done, 'run')} ${verb}. `, dismiss));
      return;
    }
    replace(this.resultEl, h('div', {class: 'error-box bulk-failed', role: 'alert'},
      h('strong', {}, `${failed.summary}:`), h('ul', {}, failed.lines.map((line) => h('li', {}, line))),
      done ? h('p', {}, `The other ${plural(done, 'run')} ${done === 1 ? 'was' : 'were'} ${verb}.`) : null, dismiss));
  }
}
