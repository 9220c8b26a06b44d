// The strip under the header for conditions that outlive one widget: a dropped live stream, a failed action.
// Messages are keyed so the code that raised one can clear it. Each belongs to the page that raised it and
// goes when the user navigates away; `lasts: 'app'` ones (the live streams' connection state, cleared by the
// stream itself) stay, and `lasts: 'next'` ones are meant for the page being navigated to (say, "run deleted").

import {h} from './util.js';

const messages = new Map(); // key -> {text, kind, lasts}

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
  /** lasts: 'page' (until navigation), 'next' (through the next navigation) or 'app' (until cleared). */
  show(key, text, kind = 'warn', {lasts = 'page'} = {}) { messages.set(key, {text, kind, lasts}); render(); },
  clear(key) { if (messages.delete(key)) render(); },
  error(text) { banner.show(`error:${text}`, text, 'error'); },
  /** The router calls this on every route change: drop the previous page's messages. */
  pageChanged() {
    for (const [key, msg] of messages) {
      if (msg.lasts === 'page') messages.delete(key);
      else if (msg.lasts === 'next') msg.lasts = 'page';
    }
    render();
  },
};
