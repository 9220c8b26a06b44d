// Run notes. On the run page, the Notes card: the notes as typed, and an editor for the run's name, tags and notes
// that works in any state (PATCH /api/runs/{id}); live updates refresh it unless it is being edited. In the runs
// list, the notes' first line under each name, and the text the Name filter searches.

import {h, replace, isAbort} from './util.js';
import {api, enc} from './api.js';

const FIELDS = ['name', 'tags', 'notes'];

/** Name (or id) and notes, lower-cased: the Name filter matches either. */
export const searchText = (run) => `${run.name || run.id}\n${run.notes || ''}`.toLowerCase();

/** The notes' first line under the name (all of it on hover); nothing for a run without notes. */
export function notesHint(run) {
  const notes = (run.notes || '').trim();
  if (!notes) return null;
  return h('div', {class: 'row-notes muted', title: notes,
    style: {fontSize: '12px', maxWidth: '260px', overflow: 'hidden', textOverflow: 'ellipsis', whiteSpace: 'nowrap'}},
  notes.split('\n')[0]);
}

/** "a, b ,, c" -> ["a", "b", "c"]: how the editor's tag box reads. */
export const parseTags = (text) => text.split(',').map((t) => t.trim()).filter(Boolean);

export class RunNotes {
  constructor(host, {runId, onSaved}) {
    this.runId = runId;
    this.onSaved = onSaved;
    this.run = null;
    this.editing = false;
    this.body = h('div');
    this.section = h('section', {class: 'card', id: 'notes'}, h('header', {class: 'card-head'}, h('h2', {}, 'Notes'),
      this.editButton = h('button', {type: 'button', class: 'btn btn-small', id: 'edit-run-meta', onclick: () => this.edit()},
        'Edit name, tags and notes')), this.body);
    host.append(this.section);
  }

  update(run) {
    this.run = run;
    if (!this.editing) this.show();
  }

  show() {
    this.editing = false;
    this.editButton.hidden = false;
    const notes = this.run?.notes || '';
    replace(this.body, notes
      ? h('p', {class: 'run-notes', style: {whiteSpace: 'pre-wrap', margin: 0, overflowWrap: 'anywhere'}}, notes)
      : h('p', {class: 'run-notes muted', style: {margin: 0}}, 'No notes yet: what this run tries, what you saw.'));
  }

  /** Leave the editor (Cancel or a save) with focus back on the button that opened it. */
  close() {
    this.show();
    this.editButton.focus();
  }

  edit() {
    this.editing = true;
    this.editButton.hidden = true;
    const run = this.run;
    const field = (key, label, control, hint) => h('div', {class: 'field'},
      h('label', {for: `edit-${key}`}, label), control, hint ? h('p', {class: 'muted', id: `edit-${key}-hint`}, hint) : null,
      this.errors[key] = h('p', {class: 'field-error', id: `edit-${key}-error`, role: 'alert'}));
    this.errors = {};
    this.inputs = {
      name: h('input', {id: 'edit-name', value: run.name || '', maxlength: 200, 'aria-describedby': 'edit-name-error'}),
      tags: h('input', {id: 'edit-tags', value: (run.tags || []).join(', '),
        'aria-describedby': 'edit-tags-hint edit-tags-error'}),
      notes: h('textarea', {id: 'edit-notes', rows: 5, maxlength: 10000, 'aria-describedby': 'edit-notes-error'}),
    };
    this.inputs.notes.value = run.notes || '';
    this.formError = h('p', {class: 'field-error', role: 'alert'});
    replace(this.body, h('form', {class: 'run-meta-form', onsubmit: (e) => { e.preventDefault(); this.save(); }},
      field('name', 'Name', this.inputs.name),
      field('tags', 'Tags', this.inputs.tags, 'comma-separated, at most 32, each up to 64 characters'),
      field('notes', 'Notes', this.inputs.notes),
      h('div', {class: 'form-actions'},
        this.saveButton = h('button', {type: 'submit', class: 'btn btn-primary', id: 'save-run-meta'}, 'Save'),
        h('button', {type: 'button', class: 'btn', id: 'cancel-run-meta', onclick: () => this.close()}, 'Cancel'),
        this.formError)));
    this.inputs.notes.focus();
  }

  async save() {
    const body = {name: this.inputs.name.value, tags: parseTags(this.inputs.tags.value), notes: this.inputs.notes.value};
    for (const key of FIELDS) { replace(this.errors[key]); this.inputs[key].removeAttribute('aria-invalid'); }
    replace(this.formError);
    this.saveButton.disabled = true;
    try {
      const run = await api(`/api/runs/${enc(this.runId)}`, {method: 'PATCH', body});
      this.run = run;
      this.close();
      this.onSaved?.(run);
    } catch (err) {
      if (isAbort(err)) return;
      this.saveButton.disabled = false;
      this.showErrors(err);
    }
  }

  /** Each message beside its field (`tags.3` is the tag box); anything else under the buttons. */
  showErrors(err) {
    const rest = [];
    for (const {field, message} of err.fields || [{field: '', message: err.message}]) {
      const key = FIELDS.find((k) => field === k || field.startsWith(`${k}.`));
      if (!key) { rest.push(message); continue; }
      this.inputs[key].setAttribute('aria-invalid', 'true');
      const which = field.startsWith('tags.') ? `tag ${Number(field.split('.')[1]) + 1}: ` : '';
      this.errors[key].textContent = `${this.errors[key].textContent ? `${this.errors[key].textContent}; ` : ''}${which}${message}`;
    }
    if (rest.length) this.formError.textContent = rest.join('; ');
  }
}
