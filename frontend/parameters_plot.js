// The compare page's "Settings and results" card: one line per run through a parallel-coordinates plot, an
// axis per config setting the runs differ in and a last one for a metric's best value, coloured by it, so a
// sweep's good region shows at a glance (as in a W&B sweep page). Drawn as SVG lines (Plotly's parcoords needs
// WebGL, which remote desktops and locked-down browsers lack), so hovering a point names its run.

import {h, replace, flatten, fmtNum} from './util.js';
import {higherIsBetter} from './run_columns.js';
import {loadPlotly} from './plotly_loader.js';
import {plotConfig, plotText, plotTheme, onThemeChange} from './plot_style.js';

const MAX_AXES = 12; // settings beyond these are still in the config differences table below
const IGNORED = new Set(['name', 'tags', 'output_dir']); // labels, not settings that change a result
const LABEL_CHARS = 24;

const short = (text) => (text.length > LABEL_CHARS ? `${text.slice(0, LABEL_CHARS - 1)}…` : text);

/** The settings the runs differ in: [{key, values}], a run's value undefined where its config lacks the key. */
export function differingSettings(configs) {
  const flat = configs.map((c) => flatten(c || {}));
  const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].filter((k) => !IGNORED.has(k));
  return keys.map((key) => ({key, values: flat.map((f) => f[key])}))
    .filter(({values}) => new Set(values.map((v) => JSON.stringify(v))).size > 1);
}

/**
 * An axis for one setting (or the metric): `pos(value)` in [0, 1] and the ticks to label it with. Numbers sit
 * on a linear scale, or a log one where they are all positive and span a factor of 20 or more (learning
 * rates); anything else (text, booleans, lists, absent) is a category, in sorted order.
 */
export function settingAxis(label, values) {
  const numeric = values.every((v) => typeof v === 'number' && Number.isFinite(v));
  if (numeric) {
    const log = Math.min(...values) > 0 && Math.max(...values) / Math.min(...values) >= 20;
    const f = log ? Math.log10 : (v) => v;
    const lo = Math.min(...values.map(f)), hi = Math.max(...values.map(f));
    const pos = (v) => (hi > lo ? (f(v) - lo) / (hi - lo) : 0.5);
    const distinct = [...new Set(values)].sort((a, b) => a - b);
    const tickValues = distinct.length <= 6 ? distinct : [0, 0.25, 0.5, 0.75, 1].map((q) => {
      const x = lo + q * (hi - lo);
      return log ? 10 ** x : x;
    });
    return {label: log ? `${label} (log)` : label, pos, text: fmtNum,
      ticks: tickValues.map((v) => ({pos: pos(v), text: fmtNum(v)}))};
  }
  const text = (v) => (v === undefined ? '(absent)' : typeof v === 'string' ? v : JSON.stringify(v));
  const categories = [...new Set(values.map(text))].sort();
  const pos = (v) => (categories.length > 1 ? categories.indexOf(text(v)) / (categories.length - 1) : 0.5);
  return {label, pos, text, ticks: categories.map((c) => ({pos: pos(c === '(absent)' ? undefined : c), text: short(c)}))};
}

// Viridis at five stops, interpolated: a colour-blind-safe scale whose bright end marks the best runs.
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const VIRIDIS_SCALE = VIRIDIS.map((c, i) => [i / (VIRIDIS.length - 1), `rgb(${c.join(',')})`]);

function viridis(t) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
  const rgb = VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
  return `rgb(${rgb.join(',')})`;
}

export class ParametersPlot {
  /** `entries`: [{run, config}] of the compared runs; `preferred`: the metric to start with. */
  constructor(container, entries, {onError}) {
    this.entries = entries;
    this.onError = onError;
    this.settings = differingSettings(entries.map((e) => e.config));
    const metrics = [...new Set(entries.flatMap((e) => Object.keys(e.run.best || {})))].sort();
    const preferred = entries.map((e) => e.config?.checkpoint?.best_metric).find((m) => metrics.includes(m));
    this.metric = preferred || metrics.find((m) => m === 'val/loss') || metrics[0] || null;
    this.select = h('select', {id: 'params-metric', onchange: () => { this.metric = this.select.value; this.draw(); }},
      metrics.map((m) => h('option', {value: m, selected: m === this.metric}, `${m} (best)`)));
    this.note = h('p', {class: 'muted params-note'});
    this.plot = h('div', {class: 'params-plot', role: 'img',
      'aria-label': 'Parallel coordinates: each run is a line through its settings and its best metric'});
    this.card = h('section', {class: 'card', id: 'compare-params'},
      h('header', {class: 'card-head'}, h('h2', {}, 'Settings and results')),
      metrics.length ? h('div', {class: 'params-controls'}, h('label', {for: 'params-metric'}, 'Colour by'), this.select) : null,
      this.note, this.plot);
    container.append(this.card);
    this.stopThemeWatch = onThemeChange(() => this.draw());
  }

  dispose() {
    this.stopThemeWatch();
    window.Plotly?.purge(this.plot);
  }

  /** Runs with a finite best value of the chosen metric (or all of them when there is no metric). */
  shown() {
    if (!this.metric) return this.entries.map((_, i) => i);
    return this.entries.map((e, i) => [i, e.run.best?.[this.metric]]).filter(([, v]) => Number.isFinite(v)).map(([i]) => i);
  }

  async draw() {
    if (!this.settings.length) {
      replace(this.note, 'The runs have the same settings: nothing to plot against.');
      this.plot.hidden = true;
      return;
    }
    const rows = this.shown();
    const left = this.entries.length - rows.length;
    const settings = this.settings.slice(0, MAX_AXES);
    replace(this.note, [
      `${settings.length} setting${settings.length === 1 ? '' : 's'} the runs differ in`,
      this.settings.length > settings.length ? ` (the first ${MAX_AXES} of ${this.settings.length})` : '',
      this.metric ? `, and the best ${this.metric} (${higherIsBetter(this.metric) ? 'higher' : 'lower'} is better; brightest is best)`
        : '; no run has evaluated yet, so there is no metric to set them against',
      left ? `; ${left} run${left === 1 ? '' : 's'} without a ${this.metric} value left out` : '',
      '.'].join(''));
    this.plot.hidden = rows.length === 0;
    if (!rows.length) return;
    const columns = settings.map(({key, values}) => ({axis: settingAxis(key, rows.map((i) => values[i])),
      values: rows.map((i) => values[i])}));
    let shade = () => '#0072B2';
    if (this.metric) {
      const scores = rows.map((i) => this.entries[i].run.best[this.metric]);
      const axis = settingAxis(`${this.metric} (best)`, scores);
      columns.push({axis, values: scores});
      const good = (v) => (higherIsBetter(this.metric) ? axis.pos(v) : 1 - axis.pos(v));
      shade = (k) => viridis(good(scores[k]));
    }
    try {
      const Plotly = await loadPlotly();
      await Plotly.react(this.plot, this.traces(rows, columns, shade), this.layout(columns),
        plotConfig({responsive: true, modeBarButtonsToRemove: ['select2d', 'lasso2d', 'zoom2d', 'pan2d', 'autoScale2d', 'resetScale2d']}));
    } catch (err) {
      this.onError(err);
    }
  }

  /** One line per run through its position on each axis; the hover names the run and the value as set. */
  traces(rows, columns, shade) {
    const x = columns.map((_, j) => j);
    const lines = rows.map((i, k) => {
      const run = this.entries[i].run;
      const name = run.name || run.id;
      return {type: 'scatter', mode: 'lines+markers', x, y: columns.map((c) => c.axis.pos(c.values[k])),
        name: plotText(name), line: {color: shade(k), width: 2}, marker: {color: shade(k), size: 7},
        text: columns.map((c) => plotText(`${c.axis.label}: ${c.axis.text(c.values[k])}`)),
        hovertemplate: `<b>${plotText(name)}</b><br>%{text}<extra></extra>`};
    });
    if (!this.metric) return lines;
    // An invisible trace that carries the colour bar of the metric (the lines are coloured one by one).
    const scores = rows.map((i) => this.entries[i].run.best[this.metric]);
    return [...lines, {type: 'scatter', mode: 'markers', x: [null], y: [null], hoverinfo: 'skip', showlegend: false,
      marker: {color: [Math.min(...scores)], cmin: Math.min(...scores), cmax: Math.max(...scores) + (Math.max(...scores) === Math.min(...scores) ? 1 : 0),
        colorscale: VIRIDIS_SCALE, reversescale: !higherIsBetter(this.metric), showscale: true,
        colorbar: {thickness: 10, len: 0.8, title: {text: plotText(short(this.metric)), side: 'right'}}}}];
  }

  /** The axes as vertical lines with their tick labels beside them; the x ticks name the settings. */
  layout(columns) {
    const theme = plotTheme();
    const shapes = columns.map((_, j) => ({type: 'line', x0: j, x1: j, y0: 0, y1: 1, yref: 'y',
      line: {color: theme.muted, width: 1}, layer: 'below'}));
    // Labels left of each axis, where the lines come in, on a background so a line does not strike them
    // through; the last axis (the metric) has no lines past it, so its labels go on its right.
    const last = columns.length - 1;
    const annotations = columns.flatMap((c, j) => c.axis.ticks.map((t) => ({x: j, y: t.pos, text: plotText(t.text),
      xanchor: j === last && last > 0 ? 'left' : 'right', xshift: j === last && last > 0 ? 4 : -4, showarrow: false,
      bgcolor: theme.plotBg, font: {size: 10, color: theme.muted}})));
    return {showlegend: false, hovermode: 'closest', height: 380, margin: {l: 70, r: 40, t: 50, b: 20},
      paper_bgcolor: 'rgba(0,0,0,0)', plot_bgcolor: 'rgba(0,0,0,0)', font: {color: theme.ink},
      xaxis: {tickvals: columns.map((_, j) => j), ticktext: columns.map((c) => plotText(short(c.axis.label))),
        side: 'top', range: [-0.5, columns.length - 0.6], showgrid: false, zeroline: false, fixedrange: true},
      yaxis: {visible: false, range: [-0.06, 1.06], fixedrange: true}, shapes, annotations};
  }
}
