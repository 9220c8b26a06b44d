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

/** Ask for a whole number of at least `min`; resolves it, or null when cancelled. Enter confirms. */
export async function numberDialog({title, text, label, value, min, ok = 'OK'}) {
  const input = h('input', {type: 'number', id: 'dialog-number', min, step: 1, value: String(value), inputmode: 'numeric'});
  const error = h('p', {class: 'field-error', id: 'dialog-number-error', role: 'alert'});
  const body = h('div', {class: 'field'}, h('label', {for: 'dialog-number'}, label), input, error);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); body.closest('dialog').querySelector('button[value=ok]').click(); }
  });
  for (;;) {
    if (!await confirmDialog({title, text, ok, body, focus: input})) return null;
    const n = Number(input.value);
    if (Number.isInteger(n) && n >= min) return n;
    error.textContent = `must be a whole number, ${min} or more`;
  }
}
