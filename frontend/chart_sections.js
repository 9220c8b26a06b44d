// The run page's charts in sections by metric prefix (`val/`, `extra/`: the part before the first "/"; names
// without one in a first section), as W&B groups panels. Each section folds; a chart in a folded section, or
// hidden by the "filter charts" box, is not drawn (nor fetched) until it shows, so a run with 60+ metrics opens
// fast. Which sections a user folded or opened is remembered in local storage, by prefix, for every run.

import {h, replace} from './util.js';

const STORAGE_KEY = 'cliplab.chartSections';
const MANY = 12; // more charts than this: only the first section starts open
const FIRST_TITLE = 'Charts'; // W&B's name for the panels without a prefix

/** A chart's section: the prefix of its first metric ('' for none; `loss` + `val/loss` go with `loss`). */
export const sectionOf = (spec) => {
  const name = spec.names[0] || '';
  const cut = name.indexOf('/');
  return cut > 0 ? name.slice(0, cut) : '';
};

/** Does the chart show under filter text `q` (lower case)? Any metric name or the title containing it. */
export const chartMatches = (spec, q) => !q || spec.title.toLowerCase().includes(q)
  || spec.names.some((n) => n.toLowerCase().includes(q));

function remembered() {
  try { return JSON.parse(localStorage.getItem(STORAGE_KEY) || '{}') || {}; } catch { return {}; }
}

export class ChartSections {
  /** `onShow(chart)` when a chart not drawn yet (or folded away) comes into view; `onHide(chart)` when it leaves. */
  constructor({onShow, onHide, prefix = ''}) {
    this.onShow = onShow;
    this.onHide = onHide;
    this.sections = new Map(); // prefix -> {key, el, grid, countEl, charts, open}
    this.el = h('div', {class: 'chart-sections'});
    this.emptyEl = h('p', {class: 'empty muted', hidden: true});
    this.input = h('input', {type: 'search', id: `${prefix}chart-filter`, placeholder: 'metric name', autocomplete: 'off',
      oninput: () => this.applyFilter()});
    this.filterEl = h('div', {class: 'inline-group chart-filter'},
      h('label', {for: `${prefix}chart-filter`}, 'Filter charts'), this.input);
    this.many = false;
  }

  get query() { return this.input.value.trim().toLowerCase(); }

  /** Start over for a board of `total` charts (a long list starts with only its first section open). */
  reset(total) {
    this.many = total > MANY;
    this.sections.clear();
    replace(this.el, this.emptyEl);
  }

  /** The grid a chart of `spec` goes in (its section, made on first use). */
  gridFor(spec) {
    return this.section(sectionOf(spec)).grid;
  }

  section(key) {
    let sec = this.sections.get(key);
    if (sec) return sec;
    const saved = remembered()[key];
    const open = typeof saved === 'boolean' ? saved : (!this.many || !this.sections.size || key === '');
    sec = {key, charts: [], open, grid: h('div', {class: 'chart-grid'}), countEl: h('span', {class: 'count muted'})};
    sec.el = h('details', {class: 'chart-section', open, dataset: {section: key}},
      h('summary', {}, h('h3', {class: 'inline'}, key || FIRST_TITLE), sec.countEl), sec.grid);
    sec.el.addEventListener('toggle', () => this.onToggle(sec));
    this.sections.set(key, sec);
    // The charts without a prefix come first, whenever their first metric arrives.
    if (key === '') this.el.insertBefore(sec.el, this.emptyEl.nextSibling); else this.el.append(sec.el);
    return sec;
  }

  /** A chart just made in gridFor()'s grid: drawn only when its section is open and the filter matches it. */
  add(chart) {
    const sec = this.section(sectionOf(chart.spec));
    sec.charts.push(chart);
    const match = chartMatches(chart.spec, this.query);
    chart.card.hidden = !match;
    chart.deferred = !(sec.open && match);
    this.count(sec);
  }

  onToggle(sec) {
    if (sec.el.open === sec.open) return; // the event for the state it was made with
    sec.open = sec.el.open;
    try { localStorage.setItem(STORAGE_KEY, JSON.stringify({...remembered(), [sec.key]: sec.open})); } catch { /* private mode */ }
    this.refresh(sec);
  }

  /** Show, hide, draw or stop drawing the charts of every section after the filter changed. */
  applyFilter() {
    for (const sec of this.sections.values()) this.refresh(sec);
    const q = this.query;
    const none = !!q && this.sections.size > 0 && [...this.sections.values()].every((sec) => sec.el.hidden);
    this.emptyEl.hidden = !none;
    this.emptyEl.textContent = none ? `No chart's metric matches “${this.input.value.trim()}”.` : '';
  }

  /** Bring one section's charts in line with its open state and the filter (a chart can gain a name live). */
  refresh(sec) {
    const q = this.query;
    for (const chart of sec.charts) {
      const match = chartMatches(chart.spec, q);
      chart.card.hidden = !match;
      const shown = sec.open && match;
      if (shown && chart.deferred) this.onShow(chart);
      else if (!shown && !chart.deferred) this.onHide(chart);
    }
    this.count(sec);
  }

  count(sec) {
    const n = sec.charts.length;
    const shown = sec.charts.filter((c) => !c.card.hidden).length;
    sec.countEl.textContent = shown === n ? `${n} chart${n === 1 ? '' : 's'}` : `${shown} of ${n} charts`;
    sec.el.hidden = !shown && n > 0;
  }
}
