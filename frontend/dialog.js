// Confirmation dialogs on the native <dialog> element: modal, focus-trapped and closed by Escape for free.

import {h} from './util.js';

/**
 * Ask before doing something; resolves true when confirmed. Focus starts on Cancel for dangerous actions so
 * a stray Enter does not stop a run.
 */
export function confirmDialog({title, text, ok = 'OK', danger = false}) {
  return new Promise((resolve) => {
    const cancelBtn = h('button', {type: 'button', class: 'btn', value: 'cancel'}, 'Cancel');
    const okBtn = h('button', {type: 'button', class: danger ? 'btn btn-danger' : 'btn btn-primary', value: 'ok'}, ok);
    const dlg = h('dialog', {class: 'confirm', 'aria-labelledby': 'confirm-title'},
      h('h2', {id: 'confirm-title'}, title),
      text ? h('p', {}, text) : null,
      h('div', {class: 'actions'}, cancelBtn, okBtn));
    let result = false;
    cancelBtn.addEventListener('click', () => dlg.close());
    okBtn.addEventListener('click', () => { result = true; dlg.close(); });
    dlg.addEventListener('close', () => { dlg.remove(); resolve(result); });
    document.body.append(dlg);
    dlg.showModal();
    (danger ? cancelBtn : okBtn).focus();
  });
}
