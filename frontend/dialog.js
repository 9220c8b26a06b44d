// Confirmation dialogs on the native <dialog> element: modal, focus-trapped and closed by Escape for free.

import {h} from './util.js';

/**
 * Ask before doing something; resolves true when confirmed. Focus starts on Cancel for dangerous actions so
 * a stray Enter does not stop a run.
 */
export function confirmDialog({title, text, ok = 'OK', danger = false, body = null, focus = null}) {
  return new Promise((resolve) => {
    const cancelBtn = h('button', {type: 'button', class: 'btn', value: 'cancel'}, 'Cancel');
    const okBtn = h('button', {type: 'button', class: danger ? 'btn btn-danger' : 'btn btn-primary', value: 'ok'}, ok);
    const dlg = h('dialog', {class: 'confirm', 'aria-labelledby': 'confirm-title'},
      h('h2', {id: 'confirm-title'}, title),
      text ? h('p', {}, text) : null,
      body,
      h('div', {class: 'actions'}, cancelBtn, okBtn));
    let result = false;
    cancelBtn.addEventListener('click', () => dlg.close());
    okBtn.addEventListener('click', () => { result = true; dlg.close(); });
    dlg.addEventListener('close', () => { dlg.remove(); resolve(result); });
    document.body.append(dlg);
    dlg.showModal();
    (focus || (danger ? cancelBtn : okBtn)).focus();
  });
}

/**
 * Ask for a few values: `fields` are {name, id, label, value, attrs, parse}, where `parse(text)` returns the
 * field's value or throws an Error whose message shows under it (and the dialog stays open). Resolves
 * {name: value}, or null when cancelled. Enter in a field confirms.
 */
export async function fieldsDialog({title, text, ok = 'OK', fields}) {
  const rows = fields.map((f) => {
    const input = h('input', {id: f.id, value: String(f.value ?? ''), 'aria-describedby': `${f.id}-error`, ...(f.attrs || {})});
    const error = h('p', {class: 'field-error', id: `${f.id}-error`, role: 'alert'});
    return {f, input, error, el: h('div', {class: 'field'}, h('label', {for: f.id}, f.label), input, error)};
  });
  const body = h('div', {}, rows.map((r) => r.el));
  for (const {input} of rows) {
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') { e.preventDefault(); body.closest('dialog').querySelector('button[value=ok]').click(); }
    });
  }
  for (;;) {
    if (!await confirmDialog({title, text, ok, body, focus: rows[0].input})) return null;
    const values = {};
    let valid = true;
    for (const {f, input, error} of rows) {
      try {
        values[f.name] = f.parse(input.value);
        error.textContent = '';
        input.removeAttribute('aria-invalid');
      } catch (err) {
        error.textContent = err.message;
        input.setAttribute('aria-invalid', 'true');
        valid = false;
      }
    }
    if (valid) return values;
  }
}

/** A `fieldsDialog` field's parse: a whole number of at least `min`. */
export const wholeNumberAtLeast = (min) => (text) => {
  const n = Number(text);
  if (text.trim() === '' || !Number.isInteger(n) || n < min) throw new Error(`must be a whole number, ${min} or more`);
  return n;
};

/** A `fieldsDialog` field's parse: a finite number above 0 (a learning rate: 1e-4, 0.0003). */
export const positiveNumber = (text) => {
  const x = Number(text.trim());
  if (text.trim() === '' || !Number.isFinite(x) || x <= 0) throw new Error('must be a number above 0, e.g. 1e-4');
  return x;
};

/** Ask for a whole number of at least `min`; resolves it, or null when cancelled. Enter confirms. */
export async function numberDialog({title, text, label, value, min, ok = 'OK'}) {
  const values = await fieldsDialog({title, text, ok, fields: [{name: 'n', id: 'dialog-number', label, value,
    attrs: {type: 'number', min, step: 1, inputmode: 'numeric'}, parse: wholeNumberAtLeast(min)}]});
  return values && values.n;
}
