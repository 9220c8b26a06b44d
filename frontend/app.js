// Hash router: #/runs, #/new[?clone=<id>], #/runs/<id>, #/compare?ids=a,b. Each page module exports
// mount(root, {params, query, scope}); the scope is disposed when the route changes.

import {Scope, h, replace} from './util.js';
import {banner} from './banner.js';
import {initSkipLink} from './section_nav.js';
import * as runsList from './runs_list.js';
import * as newRun from './new_run.js';
import * as runPage from './run_page.js';
import * as compare from './compare.js';

const ROUTES = [
  {pattern: /^\/runs\/?$/, page: runsList, nav: 'runs', title: 'Runs'},
  {pattern: /^\/new\/?$/, page: newRun, nav: 'new', title: 'New run'},
  {pattern: /^\/runs\/([^/]+)\/?$/, page: runPage, nav: 'runs', title: 'Run'},
  {pattern: /^\/compare\/?$/, page: compare, nav: 'compare', title: 'Compare'},
];

let current = null; // {scope}

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/runs';
  const [path, qs = ''] = raw.split('?');
  return {path, query: new URLSearchParams(qs)};
}

function route() {
  const {path, query} = parseHash();
  if (current) current.scope.dispose();
  banner.pageChanged();
  const root = document.getElementById('app');
  const scope = new Scope();
  current = {scope};
  for (const el of document.querySelectorAll('[data-nav]')) el.removeAttribute('aria-current');
  const match = ROUTES.map((r) => ({r, m: path.match(r.pattern)})).find((x) => x.m);
  if (!match) {
    document.title = 'Not found · cliplab';
    replace(root, h('section', {class: 'card empty'}, h('h1', {}, 'Page not found'),
      h('p', {}, `Nothing lives at #${path}. `, h('a', {href: '#/runs'}, 'Go to the runs list'), '.')));
    return;
  }
  const {r, m} = match;
  document.querySelector(`[data-nav="${r.nav}"]`)?.setAttribute('aria-current', 'page');
  document.title = `${r.title} · cliplab`;
  replace(root);
  try {
    r.page.mount(root, {params: m.slice(1).map(decodeURIComponent), query, scope});
  } catch (err) {
    console.error(err);
    replace(root, h('div', {class: 'error-box', role: 'alert'}, `This page failed to draw: ${err.message}`));
  }
  // Move focus to the page so keyboard users start at its top rather than on the old page's element.
  root.focus({preventScroll: true});
  window.scrollTo(0, 0);
}

window.addEventListener('hashchange', route);
window.addEventListener('unhandledrejection', (ev) => {
  if (ev.reason && ev.reason.name === 'AbortError') { ev.preventDefault(); return; }
  banner.error(`Unexpected error: ${ev.reason?.message || ev.reason}`);
});
if (!location.hash) history.replaceState(null, '', '#/runs');
initSkipLink();
route();
