// The strip under the header for conditions that outlive one widget: a dropped live stream, a failed action.
// Messages are keyed so the code that raised one can clear it.

import {h} from './util.js';

const messages = new Map(); // key -> {text, kind}

function render() {
  const root = document.getElementById('banner');
  if (!root) return;
  root.replaceChildren(...[...messages.entries()].map(([key, {text, kind}]) =>
    h('div', {class: `banner-msg banner-${kind}`, role: kind === 'error' ? 'alert' : 'status', dataset: {key}},
      h('span', {}, text),
      kind === 'error' ? h('button', {type: 'button', class: 'link', 'aria-label': 'Dismiss',
        onclick: () => banner.clear(key)}, '×') : null)));
  root.hidden = messages.size === 0;
}

export const banner = {
  show(key, text, kind = 'warn') { messages.set(key, {text, kind}); render(); },
  clear(key) { if (messages.delete(key)) render(); },
  error(text) { banner.show(`error:${text}`, text, 'error'); },
};
