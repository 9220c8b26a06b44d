// Keyboard ways past the charts: "Skip to main content" before the top bar, and on pages with many charts
// (each with a toolbar) a row of buttons that move focus straight to a section. Buttons, not #anchors: the
// hash is the router's.

import {h} from './util.js';

/** Move focus (and the view) to `el`, which gets a tabindex so it can hold focus. */
export function focusSection(el) {
  if (!el) return;
  if (!el.hasAttribute('tabindex')) el.setAttribute('tabindex', '-1');
  el.dataset.section = '';
  el.scrollIntoView({block: 'start'});
  el.focus({preventScroll: true});
}

/** A "Jump to" row for `sections`: [[label, element or () => element]]; missing sections are left out. */
export function sectionNav(label, sections) {
  return h('nav', {class: 'section-nav', 'aria-label': label}, h('span', {class: 'label'}, 'Jump to'),
    sections.map(([text, target]) => h('button', {type: 'button', class: 'section-link',
      onclick: () => focusSection(typeof target === 'function' ? target() : target)}, text)));
}

/** Wire the page-wide skip link of index.html. */
export function initSkipLink() {
  document.getElementById('skip-link')?.addEventListener('click', () => focusSection(document.getElementById('app')));
}
