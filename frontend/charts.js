// Metric charts for one run or several overlaid (compare). The server always downsamples: a chart asks for
// at most `buckets` min/max/last buckets over a step range, draws min..max as a band and `last` as the line,
// and on zoom re-requests just the visible range (full detail once the range holds fewer steps than buckets).
// Live points arrive from the run stream and are appended with Plotly.extendTraces; when they pile up the
// chart swaps them for a fresh bucketed overview, so a run with millions of steps never ships every point.

import {h, replace, PALETTE, debounce, isAbort} from './util.js';
import {api, enc} from './api.js';
import {loadPlotly} from './plotly_loader.js';
import {plotConfig, plotText, plotTheme, onThemeChange} from './plot_style.js';
import {rangeToUrl, rangeFromUrl} from './view_url.js';
import {ChartSections} from './chart_sections.js';

/** Which metrics share a chart; metrics matching no spec get a chart of their own. */
export const CHART_SPECS = [
  {key: 'loss', title: 'Loss', names: ['loss', 'val/loss']},
  {key: 'acc', title: 'In-batch accuracy', names: ['acc', 'val/acc']},
  {key: 'similarity', title: 'Matched-pair similarity', names: ['similarity', 'val/similarity']},
  // A schedule and a learned parameter, not noisy measurements: never smoothed.
  {key: 'lr', title: 'Learning rate', names: ['lr'], exponent: true, smooth: false},
  {key: 'logit_scale', title: 'Logit scale', names: ['logit_scale'], smooth: false},
  {key: 'throughput', title: 'Throughput (samples/s)', names: ['samples_per_s', 'samples_per_s_per_device']},
  {key: 'retrieval', title: 'Retrieval recall@K (val)', match: (n) => /^val\/(i2t|t2i)_R@\d+$/.test(n)},
  {key: 'zeroshot', title: 'Zero-shot accuracy (val)', match: (n) => /^val\/zeroshot_top\d+$/.test(n)},
  {key: 'grad_norm', title: 'Gradient norm', names: ['grad_norm']},
  {key: 'step_time', title: 'Step time (s)', names: ['step_time', 'data_time']},
  {key: 'tflops', title: 'TFLOP/s per device', names: ['tflops_per_device']},
  {key: 'mfu', title: 'Model FLOPs utilisation', names: ['mfu']},
];

export const isEvalMetric = (name) => name.startsWith('val/');
/** CPU, memory and GPU series (`system` events): charted apart, by system_charts.js. */
export const isSystemMetric = (name) => name.startsWith('sys/');

function retrievalOrder(name) {
  const m = name.match(/(i2t|t2i)_R@(\d+)$/) || name.match(/top(\d+)$/);
  if (!m) return [name, 0];
  return m.length === 3 ? [m[1], Number(m[2])] : ['', Number(m[1])];
}

/** Group metric names into charts: [{key, title, names, exponent, smooth}] in a stable order. */
export function planCharts(names, specs = CHART_SPECS) {
  const used = new Set();
  const charts = [];
  for (const spec of specs) {
    let members = spec.names ? spec.names.filter((n) => names.includes(n)) : names.filter(spec.match);
    if (!spec.names) {
      members = [...members].sort((a, b) => {
        const [da, ka] = retrievalOrder(a), [db, kb] = retrievalOrder(b);
        return da === db ? ka - kb : (da < db ? -1 : 1);
      });
    }
    if (!members.length) continue;
    members.forEach((n) => used.add(n));
    charts.push({key: spec.key, title: spec.title, names: members, exponent: !!spec.exponent, smooth: spec.smooth !== false});
  }
  for (const n of names) if (!used.has(n)) charts.push({key: `metric:${n}`, title: n, names: [n], exponent: false, smooth: true});
  return charts;
}

/** Debiased exponential moving average (as TensorBoard): nulls stay gaps, `state` carries on for live points. */
export function ema(values, weight, state = {acc: 0, n: 0}) {
  const out = new Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v == null || !Number.isFinite(v)) { out[i] = null; continue; }
    state.acc = state.acc * weight + (1 - weight) * v;
    state.n += 1;
    out[i] = state.acc / (1 - Math.pow(weight, state.n));
  }
  return {values: out, state};
}

/**
 * A small symmetric y range around `value`, for a series that never changes (Plotly's autorange would span
 * -0.5..1 around two equal points).
 */
export function flatRange(value) {
  const pad = Math.abs(value) * 0.05 || 0.05;
  return [value - pad, value + pad];
}

// Plotly places no value beyond ±Number.MAX_VALUE / 1e4 (its FP_SAFE: 1e308 drew no line under ticks of
// 1.797×10^304), its autorange overflows on a span like -1e308..1e308, and it draws no ticks at all for
// subnormal values (1e-310): a chart whose largest |value| passes HUGE or stays under TINY is drawn in units
// of a power of ten, named in its y title, and its hover shows the values as logged.
const HUGE = 1e300;
const TINY = 1e-280;

/** The power of ten a chart's y values are drawn in: 0, or about that of its largest |value| when that passes
 * HUGE or stays under TINY (at most 10^-300 there: 10^-324 would be 0). */
export function yExponent(values) {
  let maxAbs = 0;
  for (const v of values) if (v != null && Number.isFinite(v)) maxAbs = Math.max(maxAbs, Math.abs(v));
  if (maxAbs > HUGE) return Math.floor(Math.log10(maxAbs));
  return maxAbs > 0 && maxAbs < TINY ? Math.max(-300, Math.floor(Math.log10(maxAbs))) : 0;
}

/** What a series' non-finite values were: `30 NaN/inf values (steps 30–59)`. */
export function nonfiniteText(nf) {
  const steps = nf.first_step === nf.last_step ? `step ${nf.first_step}` : `steps ${nf.first_step}–${nf.last_step}`;
  return `${nf.count.toLocaleString()} NaN/inf ${nf.count === 1 ? 'value' : 'values'} (${steps})`;
}

const scaled = (values, factor) => (factor === 1 ? values : values.map((v) => (v == null ? v : v / factor)));

const emptyData = () => ({step: [], time: [], min: [], max: [], last: []});

/** Two series with the same points (samples/s and samples/s per device on one device): drawn once. */
export function sameSeries(a, b) {
  if (!a.step.length || a.step.length !== b.step.length) return false;
  return a.step.every((s, i) => s === b.step[i] && a.last[i] === b.last[i] && a.min[i] === b.min[i] && a.max[i] === b.max[i]);
}

const MARKER_POINTS = 40; // lines with at most this many points show a marker on each

function normaliseData(d) {
  if (!d) return emptyData();
  const last = d.last || d.value || [];
  // Separate arrays even when the server sent only values: live points are pushed into each.
  return {step: d.step || [], time: d.time || [], min: d.min || last.slice(), max: d.max || last.slice(), last};
}

function pushPoint(d, step, time, v) {
  d.step.push(step); d.time.push(time); d.min.push(v); d.max.push(v); d.last.push(v);
}

/** Points of `d` with step in [lo, hi] (either end may be null = open). */
function sliceByStep(d, lo, hi) {
  const out = emptyData();
  for (let i = 0; i < d.step.length; i++) {
    const s = d.step[i];
    if ((lo == null || s >= lo) && (hi == null || s <= hi)) {
      out.step.push(s); out.time.push(d.time[i]); out.min.push(d.min[i]); out.max.push(d.max[i]); out.last.push(d.last[i]);
    }
  }
  return out;
}

function copyData(d) {
  return {step: d.step.slice(), time: d.time.slice(), min: d.min.slice(), max: d.max.slice(), last: d.last.slice()};
}

function concatData(...parts) {
  const out = emptyData();
  for (const p of parts) for (const k of Object.keys(out)) out[k].push(...p[k]);
  return out;
}

/** One metric of one run: the whole-run bucketed overview and, while zoomed, a full-detail window. */
class Series {
  constructor(runId, name, smoothable) {
    this.runId = runId;
    this.name = name;
    this.isEval = isEvalMetric(name);
    // Only noisy training series are smoothed: eval points are few and each one is the measurement.
    this.smoothable = smoothable && !this.isEval;
    this.overview = emptyData();
    this.detail = null; // {start, end, data}
    this.emaState = null;
    // The run's values of this series that were NaN or inf (sent as null, no point): {count, first_step,
    // first_time, last_step, last_time} from the server and live events, or null.
    this.nonfinite = null;
  }

  /** Count a live null value at `step`; false for one counted already (a replay after reconnecting). */
  addNonfinite(step, time) {
    const nf = this.nonfinite;
    if (!nf) this.nonfinite = {count: 1, first_step: step, first_time: time, last_step: step, last_time: time};
    else if (step > nf.last_step) Object.assign(nf, {count: nf.count + 1, last_step: step, last_time: time});
    else return false;
    return true;
  }
  displayed() {
    if (!this.detail) return this.overview;
    const {start, end, data} = this.detail;
    return concatData(sliceByStep(this.overview, null, start - 1), data, sliceByStep(this.overview, end + 1, null));
  }
}

/** Build the series query string for one run. */
export function seriesUrl(runId, names, {start = null, end = null, buckets}) {
  // One names= per metric: a name may hold a comma, which the server would otherwise split on.
  const qs = [...names.map(name => `names=${enc(name)}`), `buckets=${buckets}`];
  if (start != null) qs.push(`start=${Math.floor(start)}`);
  if (end != null) qs.push(`end=${Math.ceil(end)}`);
  return `/api/runs/${enc(runId)}/series?${qs.join('&')}`;
}

function withAlpha(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`;
}

/** `run · metric` within `max` characters: the run's name is cut (with …), never the metric's. */
export function legendLabel(runLabel, metric, max) {
  const room = max - metric.length - 3;
  const run = runLabel.length <= room ? runLabel : `${runLabel.slice(0, Math.max(4, room - 1)).trimEnd()}…`;
  return `${run} · ${metric}`;
}

function mixWithWhite(hex, amount) {
  const n = parseInt(hex.slice(1), 16);
  const mix = (c) => Math.round(c + (255 - c) * amount).toString(16).padStart(2, '0');
  return `#${mix((n >> 16) & 255)}${mix((n >> 8) & 255)}${mix(n & 255)}`;
}

const DASHES = ['solid', 'dot', 'dash', 'dashdot', 'longdash'];

/**
 * One chart card. `runs`: [{id, label, color}]; `view`: the shared {xMode: 'step'|'time'|'elapsed',
 * smoothing: 0..0.99}
 * object; `buckets`: how many buckets to ask for (about the plot's width in pixels).
 */
export class MetricChart {
  constructor(container, {spec, runs, view, buckets, signal, onError}) {
    this.spec = spec;
    this.runs = runs;
    this.view = view;
    this.buckets = buckets;
    this.signal = signal;
    this.onError = onError || ((err) => console.warn(err));
    this.series = new Map(); // `${runId}\u0000${name}` -> Series
    for (const r of runs) for (const n of spec.names) this.series.set(this.key(r.id, n), this.newSeries(r.id, n));
    this.traceIndex = new Map(); // series key -> [max, min, raw, smooth]
    this.t0 = new Map(); // run id -> time of its first point (elapsed axis)
    this.unit = null; // the elapsed axis unit
    this.zoom = null; // step range [start, end] per run id, or null for the whole run
    this.uirevision = 1;
    this.requestSeq = 0;
    this.lastOverviewRefresh = 0;
    this.plotted = false;
    // Out of view (a folded section, filtered out): neither fetched nor drawn, live points ignored; the board
    // reloads it from the server when it shows.
    this.deferred = false;
    this.pendingZoom = null; // a zoom from the URL (URL units) for when a deferred chart first shows
    this.logY = view.logY.has(spec.key);
    this.yExp = 0; // y values are drawn in units of 10^yExp (buildTraces), yFactor
    this.yFactor = 1;
    this.onZoomChange = null; // (chart, x range or null) after a user zooms or resets this chart
    this.onViewChange = null; // () after this chart's own view settings (log y) changed
    this.status = h('span', {class: 'chart-status muted'});
    this.logToggle = h('input', {type: 'checkbox', class: 'log-y', checked: view.logY.has(spec.key),
      onchange: () => this.setLogY(this.logToggle.checked)});
    this.plot = h('div', {class: 'plot', role: 'img', 'aria-label': `${spec.title} chart`});
    this.card = h('section', {class: 'chart-card', dataset: {chart: spec.key}},
      h('header', {}, h('h3', {}, spec.title), this.status,
        h('label', {class: 'inline chart-option', title: 'Logarithmic y axis'}, this.logToggle, 'log y')), this.plot);
    container.append(this.card);
    this.requestZoom = debounce((range) => this.loadZoom(range), 200);
  }

  key(runId, name) { return `${runId}\u0000${name}`; }

  newSeries(runId, name) { return new Series(runId, name, this.spec.smooth !== false); }

  /** Replace a run's overview from a /series response body ({series: {name: {...}}}). */
  setOverview(runId, seriesDict) {
    for (const n of this.spec.names) {
      const s = this.series.get(this.key(runId, n));
      if (s) {
        s.overview = normaliseData(seriesDict?.[n]);
        s.nonfinite = seriesDict?.[n]?.nonfinite || null;
      }
    }
  }

  /** Add a metric name that appeared after the chart was made (e.g. a new R@K). */
  addName(name) {
    if (this.spec.names.includes(name)) return;
    this.spec.names.push(name);
    for (const r of this.runs) this.series.set(this.key(r.id, name), this.newSeries(r.id, name));
  }

  /** x values of run `runId`'s points: steps, wall-clock Dates, or time since the run's first point. */
  xOf(runId, d) {
    if (this.view.xMode === 'time') return d.time.map((t) => new Date(t * 1000));
    if (this.view.xMode === 'elapsed') {
      const t0 = this.startTime(runId, d.time[0]);
      return d.time.map((t) => (t - t0) / this.elapsedUnit().seconds);
    }
    return d.step;
  }

  xOfPoint(runId, step, time) {
    return this.xOf(runId, {step: [step], time: [time]})[0];
  }

  /**
   * The zero of a run's elapsed axis, fixed once the chart has points: the run's start (`start` of its `runs`
   * entry, the Run's started_at) so that all charts share it, or this chart's first point when that is earlier
   * or the start is unknown.
   */
  startTime(runId, fallback) {
    if (!this.t0.has(runId)) {
      let t0 = this.runs.find((r) => r.id === runId)?.start ?? Infinity;
      let first = Infinity;
      for (const s of this.series.values()) {
        if (s.runId === runId && s.overview.time.length) first = Math.min(first, s.overview.time[0]);
      }
      if (!Number.isFinite(first)) return Number.isFinite(t0) ? t0 : fallback ?? 0;
      this.t0.set(runId, Math.min(t0, first));
    }
    return this.t0.get(runId);
  }

  /** Seconds, minutes or hours, whichever keeps the elapsed axis readable; fixed at the first draw. */
  elapsedUnit() {
    if (!this.unit) {
      let span = 0;
      for (const s of this.series.values()) {
        const t = s.overview.time;
        if (t.length) span = Math.max(span, t[t.length - 1] - this.startTime(s.runId, t[0]));
      }
      if (span < 180) this.unit = {seconds: 1, label: 's'};
      else if (span < 3 * 3600) this.unit = {seconds: 60, label: 'min'};
      else this.unit = {seconds: 3600, label: 'h'};
    }
    return this.unit;
  }

  /**
   * About how tall the legend above the plot will be: Plotly takes that height from the plot, so the chart
   * grows with it and twelve compare entries do not squash the lines into a strip. Entries are packed into
   * rows by an estimate of their width (the symbol plus ~6.3 px a character at 11 px).
   */
  legendHeight() {
    const width = this.plot.clientWidth || 400;
    let rows = 1, used = 0;
    for (const run of this.runs) for (const name of this.spec.names) {
      const entry = 46 + 6.3 * (this.runs.length === 1 ? name : legendLabel(run.label, name, this.legendChars())).length;
      if (used && used + entry > width) { rows += 1; used = 0; }
      used += entry;
    }
    return 29 * rows; // measured: a row of 11 px legend entries takes ~29 px
  }

  /** How many characters of legend text fit on one row of this chart (~6.3 px each at 11 px, after the symbol). */
  legendChars() {
    return Math.max(24, Math.floor(((this.plot.clientWidth || 400) - 50) / 6.3));
  }

  styleOf(runIdx, nameIdx) {
    const style = this.runs.length === 1 ? {color: PALETTE[nameIdx % PALETTE.length], dash: 'solid'}
      : {color: this.runs[runIdx].color, dash: DASHES[nameIdx % DASHES.length]};
    // On the dark background the palette's deep blues would sink: lift every colour a little towards white.
    if (plotTheme().dark) style.color = mixWithWhite(style.color, 0.25);
    return style;
  }

  buildTraces() {
    const traces = [];
    this.traceIndex.clear();
    const weight = this.view.smoothing;
    this.yExp = yExponent(this.allValues());
    const factor = this.yFactor = Number(`1e${this.yExp}`);
    // Drawn in units of 10^yExp: the hover reads the values as logged from customdata.
    const hoverY = this.yExp ? '%{customdata:.5g}' : '%{y:.5g}';
    this.runs.forEach((run, ri) => this.spec.names.forEach((name, ni) => {
      const s = this.series.get(this.key(run.id, name));
      // Copies: Plotly keeps the arrays it is given, and live points are pushed into the series' own arrays,
      // so sharing them would add every live point twice (once by push, once by extendTraces).
      const d = copyData(s.displayed());
      const x = this.xOf(run.id, d);
      const {color, dash} = this.styleOf(ri, ni);
      const twins = this.spec.names.filter((other) => other !== name &&
        sameSeries(d, this.series.get(this.key(run.id, other)).displayed()));
      const hidden = twins.some((other) => this.spec.names.indexOf(other) < ni); // drawn as its earlier twin
      const shownName = [name, ...twins].join(' = ');
      const smoothOn = weight > 0 && s.smoothable;
      const full = this.runs.length === 1 ? shownName : `${run.label} · ${shownName}`;
      // Legends do not wrap: on a narrow chart a long run name is cut (whole in the hover, via `meta`).
      const label = plotText(this.runs.length === 1 ? shownName : legendLabel(run.label, shownName, this.legendChars()));
      const meta = plotText(full);
      // Every line's hover has the same form (`name: 5 significant digits`), eval points and raw lines alike.
      const rawHover = `%{meta}${smoothOn ? ' (raw)' : ''}: ${hoverY}<extra></extra>`;
      const group = `${run.id}/${name}`;
      const band = !hidden && !s.isEval && d.min.some((v, i) => v !== d.max[i]);
      const [yMin, yMax, yLast] = [d.min, d.max, d.last].map((values) => scaled(values, factor));
      const smooth = smoothOn ? ema(yLast, weight) : {values: [], state: {acc: 0, n: 0}};
      s.emaState = smooth.state;
      this.traceIndex.set(this.key(run.id, name), [traces.length, traces.length + 1, traces.length + 2, traces.length + 3]);
      traces.push(
        // customdata on all four while scaled: live points extend it with the traces' x and y.
        {x, y: yMax, type: 'scatter', mode: 'lines', line: {width: 0, color}, hoverinfo: 'skip',
          showlegend: false, legendgroup: group, visible: band, ...(this.yExp ? {customdata: d.max} : {})},
        {x, y: yMin, type: 'scatter', mode: 'lines', line: {width: 0, color}, fill: 'tonexty',
          fillcolor: withAlpha(color, 0.18), hoverinfo: 'skip', showlegend: false, legendgroup: group, visible: band,
          ...(this.yExp ? {customdata: d.min} : {})},
        // Markers while a line is short: a single point drawn as a line would be invisible.
        // Smoothed: the raw line stays, faint, behind the smoothed one, and the hover shows both values.
        {x, y: yLast, type: 'scatter', mode: d.step.length <= MARKER_POINTS ? 'lines+markers' : 'lines', name: label,
          legendgroup: group, line: {color, dash, width: smoothOn ? 1 : 1.6}, marker: {size: s.isEval ? 5 : 4},
          opacity: smoothOn ? 0.3 : 1, showlegend: !smoothOn, visible: !hidden,
          meta, hovertemplate: rawHover, ...(this.yExp ? {customdata: d.last} : {})},
        {x: smoothOn ? x : [], y: smooth.values, type: 'scatter', mode: 'lines', name: label, legendgroup: group,
          line: {color, dash, width: 1.8}, visible: smoothOn && !hidden,
          meta, hovertemplate: `%{meta} (smoothed): ${hoverY}<extra></extra>`,
          ...(this.yExp ? {customdata: smooth.values.map((v) => (v == null ? v : v * factor))} : {})},
      );
    }));
    return traces;
  }

  maxStep() {
    let max = 0;
    for (const s of this.series.values()) {
      const d = s.overview.step;
      if (d.length) max = Math.max(max, d[d.length - 1]);
      if (s.nonfinite) max = Math.max(max, s.nonfinite.last_step); // a NaN-only series spans steps too
    }
    return max;
  }

  pointCount() {
    let n = 0;
    for (const s of this.series.values()) {
      n += s.detail ? s.displayed().step.length : s.overview.step.length;
    }
    return n;
  }

  /** Every min, max and last value the chart shows (nulls included). */
  *allValues() {
    for (const s of this.series.values()) {
      const d = s.displayed();
      yield* d.min; yield* d.max; yield* d.last;
    }
  }

  /**
   * While zoomed, fit y to the points in the window (Plotly's autorange would span the whole run); in drawn
   * units (yFactor), so a window spanning -1e308..1e308 pads without overflowing to Infinity.
   */
  zoomedYRange() {
    if (!this.zoom) return null;
    let lo = Infinity, hi = -Infinity;
    for (const s of this.series.values()) {
      if (!s.detail) continue;
      const d = s.detail.data;
      for (let i = 0; i < d.step.length; i++) {
        if (d.min[i] != null && d.min[i] < lo) lo = d.min[i];
        if (d.max[i] != null && d.max[i] > hi) hi = d.max[i];
      }
    }
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) return null;
    if (lo === hi) return flatRange(lo / this.yFactor);
    [lo, hi] = [lo / this.yFactor, hi / this.yFactor];
    const pad = (hi - lo) * 0.06;
    return [lo - pad, hi + pad];
  }

  /** The y range (drawn units) of a chart whose every point has one value; null when they differ (autorange). */
  flatYRange() {
    let lo = Infinity, hi = -Infinity;
    for (const v of this.allValues()) if (v != null && Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    return lo === hi ? flatRange(lo / this.yFactor) : null;
  }

  /**
   * The x range of a chart whose points all sit at one x (one eval so far): from the run's start to a little
   * past the point, instead of Plotly's ±1 around it; null otherwise.
   */
  singleXRange() {
    const xs = new Set();
    for (const s of this.series.values()) {
      const d = s.displayed();
      if (d.step.length) this.xOf(s.runId, d).forEach((x) => xs.add(+x));
      if (xs.size > 1) return null;
    }
    if (xs.size !== 1) return null;
    const [x] = xs;
    if (this.view.xMode === 'time') return [new Date(x - 60_000), new Date(x + 60_000)];
    const hi = x > 0 ? x * 1.1 : 1;
    return [Math.min(0, x) - hi * 0.04, hi];
  }

  /** A y range in axis units: log10 of the values on a log axis (null there when it reaches 0 or below). */
  yAxisRange(range) {
    if (!range || !this.logY) return range;
    return range[0] > 0 ? range.map(Math.log10) : null;
  }

  setLogY(on) {
    this.logY = on;
    if (on) this.view.logY.add(this.spec.key); else this.view.logY.delete(this.spec.key);
    this.logToggle.checked = on;
    this.onViewChange?.();
    return this.render().catch((err) => this.onError(err));
  }

  layout() {
    const mode = this.view.xMode;
    this.flatY = this.zoom ? null : this.flatYRange();
    const yRange = this.yAxisRange(this.zoomedYRange() || this.flatY);
    const xRange = this.singleX = this.zoom ? null : this.singleXRange();
    this.unitTicks = mode === 'step' && this.maxStep() < 8;
    const xTitle = mode === 'step' ? 'step' : mode === 'time' ? 'time' : `elapsed (${this.elapsedUnit().label})`;
    const theme = plotTheme();
    const axisColours = {gridcolor: theme.grid, linecolor: theme.grid, tickcolor: theme.grid};
    return {
      height: Math.max(250, 230 + this.legendHeight()),
      margin: {l: 58, r: 12, t: 28, b: 38},
      xaxis: {type: mode === 'time' ? 'date' : 'linear', title: {text: xTitle, standoff: 4}, automargin: true,
        zeroline: false,
        // Steps are whole numbers: no 1.5 ticks while a run is a few steps old (append() lifts it at step 8).
        ...(this.unitTicks ? {dtick: 1} : {}), ...(xRange ? {range: xRange, autorange: false} : {}), ...axisColours},
      yaxis: {automargin: true, exponentformat: this.spec.exponent ? 'e' : 'B', zeroline: false,
        ...(this.yExp ? {title: {text: `×10<sup>${this.yExp}</sup>`, standoff: 4}} : {}),
        type: this.logY ? 'log' : 'linear', uirevision: `${this.uirevision}:${this.logY ? 'log' : 'linear'}`, ...axisColours,
        ...(yRange ? {range: yRange, autorange: false} : {autorange: true})},
      legend: {orientation: 'h', x: 0, y: 1.0, yanchor: 'bottom', font: {size: 11}},
      hovermode: 'x unified',
      hoverlabel: {namelength: -1, bgcolor: theme.plotBg, bordercolor: theme.grid, font: {color: theme.ink}},
      font: {size: 11, family: 'system-ui, sans-serif', color: theme.ink},
      paper_bgcolor: 'rgba(0,0,0,0)',
      plot_bgcolor: theme.plotBg,
      modebar: {bgcolor: 'rgba(0,0,0,0)', color: theme.muted, activecolor: theme.ink},
      uirevision: this.uirevision,
      ...this.nonfiniteMarks(theme),
    };
  }

  /** [{s, label, color}] of the chart's Series that logged NaN or inf, in legend order. */
  nonfiniteSeries() {
    const out = [];
    this.runs.forEach((run, ri) => this.spec.names.forEach((name, ni) => {
      const s = this.series.get(this.key(run.id, name));
      if (s?.nonfinite) out.push({s, label: this.runs.length === 1 ? name : `${run.label} · ${name}`, color: this.styleOf(ri, ni).color});
    }));
    return out;
  }

  /**
   * Where series went NaN or inf, which leaves no point: a shaded band from each one's first to last
   * non-finite step, edged by a dotted line at the first and labelled there, so a line that stops shows why; a
   * chart with no finite point at all says so in words instead of "no points yet".
   */
  nonfiniteMarks(theme) {
    const marked = this.nonfiniteSeries();
    const annotations = [], shapes = [];
    for (const {s, label, color} of marked) {
      const nf = s.nonfinite;
      const [x0, x1] = [this.xOfPoint(s.runId, nf.first_step, nf.first_time), this.xOfPoint(s.runId, nf.last_step, nf.last_time)];
      shapes.push({type: 'rect', xref: 'x', yref: 'paper', x0, x1, y0: 0, y1: 1, line: {width: 0}, fillcolor: withAlpha(color, 0.08), layer: 'below'},
        {type: 'line', xref: 'x', yref: 'paper', x0, x1: x0, y0: 0, y1: 1, line: {color, width: 1.2, dash: 'dot'}});
      annotations.push({text: 'NaN/inf', x: x0, xref: 'x', y: 1, yref: 'paper', yanchor: 'top', xanchor: 'left', showarrow: false,
        font: {color, size: 10}, hovertext: plotText(`${label}: ${nonfiniteText(nf)}`)});
    }
    if (!this.pointCount()) {
      const lines = !marked.length ? ['no points yet']
        : this.series.size === 1 ? [`no finite values: ${nonfiniteText(marked[0].s.nonfinite)}`]
          : ['no finite values:', ...marked.map(({s, label}) => `${label}: ${nonfiniteText(s.nonfinite)}`)];
      annotations.push({text: lines.map(plotText).join('<br>'), showarrow: false, xref: 'paper', yref: 'paper',
        x: 0.5, y: 0.5, font: {color: theme.muted, size: 13}});
    }
    return {annotations, shapes};
  }

  /**
   * Draw from scratch (data, smoothing or x-axis changed). Renders are serialised: a live point that lands
   * while one is in flight marks the chart dirty and it draws once more afterwards.
   */
  render() {
    if (this.deferred) return Promise.resolve();
    if (this.rendering) { this.dirty = true; return this.rendering; }
    this.rendering = (async () => {
      try {
        do {
          this.dirty = false;
          await this.draw();
        } while (this.dirty);
      } finally {
        this.rendering = null;
      }
    })();
    return this.rendering;
  }

  async draw() {
    await loadPlotly();
    const config = plotConfig({responsive: true, modeBarButtonsToRemove: ['lasso2d', 'select2d']});
    await Plotly.react(this.plot, this.buildTraces(), this.layout(), config);
    if (!this.plotted) {
      this.plotted = true;
      this.plot.on('plotly_relayout', (ev) => this.onRelayout(ev));
    }
    this.updateStatus();
  }

  updateStatus() {
    const points = this.pointCount();
    const zoomText = !this.zoom ? ''
      : `zoomed: ${this.zoomBucketed ? 'min/max buckets' : 'every point'} in range · double-click to reset`;
    const nonfinite = this.nonfiniteSeries().reduce((n, {s}) => n + s.nonfinite.count, 0);
    this.status.textContent = [zoomText, `${points.toLocaleString()} pts`,
      nonfinite ? `${nonfinite.toLocaleString()} NaN/inf` : ''].filter(Boolean).join(' · ');
  }

  onRelayout(ev) {
    const followed = this.following; // a zoom this chart copied from another: do not pass it on again
    if (ev['xaxis.autorange'] === true) {
      this.resetZoom();
      this.xView = null;
      this.render().catch((err) => this.onError(err));
      if (!followed) this.onZoomChange?.(this, null);
      return;
    }
    let range = null;
    if ('xaxis.range[0]' in ev) range = [ev['xaxis.range[0]'], ev['xaxis.range[1]']];
    else if (Array.isArray(ev['xaxis.range'])) range = ev['xaxis.range'];
    if (!range) return;
    this.xView = range;
    this.requestZoom(range);
    if (!followed) this.onZoomChange?.(this, range);
  }

  /** Show x range `range` (null: the whole run) as if the user had zoomed there. */
  async zoomTo(range) {
    await this.rendering;
    if (!this.plotted) return;
    this.following = true;
    try {
      await Plotly.relayout(this.plot, range ? {'xaxis.range': range, 'xaxis.autorange': false} : {'xaxis.autorange': true});
    } finally {
      this.following = false;
    }
  }

  resetZoom() {
    this.requestZoom.cancel();
    this.requestSeq += 1; // drop any zoom request still in flight
    this.zoom = null;
    for (const s of this.series.values()) s.detail = null;
  }

  /** Convert an x-axis range to a step range for one run. */
  stepRange(runId, range) {
    if (this.view.xMode === 'step') return [Math.floor(Number(range[0])), Math.ceil(Number(range[1]))];
    // Plotly reports date ranges as local wall-clock strings ('2026-11-27 03:15:02.5'); scripts may pass Dates.
    const toMs = (v) => (v instanceof Date ? v.getTime() : typeof v === 'number' ? v
      : new Date(String(v).trim().replace(' ', 'T')).getTime());
    const [t0, t1] = this.view.xMode === 'elapsed'
      ? range.map((x) => this.startTime(runId) + Number(x) * this.elapsedUnit().seconds)
      : [toMs(range[0]) / 1000, toMs(range[1]) / 1000];
    let lo = null, hi = null;
    for (const s of this.series.values()) {
      if (s.runId !== runId) continue;
      const d = s.overview;
      for (let i = 0; i < d.step.length; i++) {
        if (d.time[i] >= t0 && d.time[i] <= t1) {
          lo = lo == null ? d.step[i] : Math.min(lo, d.step[i]);
          hi = hi == null ? d.step[i] : Math.max(hi, d.step[i]);
        }
      }
    }
    return lo == null ? null : [lo, hi];
  }

  async loadZoom(range) {
    const seq = ++this.requestSeq;
    const ranges = new Map(this.runs.map((r) => [r.id, this.stepRange(r.id, range)]));
    try {
      const bodies = await Promise.all(this.runs.map((r) => {
        const sr = ranges.get(r.id);
        if (!sr) return null;
        return api(seriesUrl(r.id, this.spec.names, {start: sr[0], end: sr[1], buckets: this.buckets}), {signal: this.signal});
      }));
      if (seq !== this.requestSeq) return; // a newer zoom superseded this one
      this.zoom = Object.fromEntries(ranges);
      this.zoomBucketed = bodies.some((b) => b?.downsampled);
      this.runs.forEach((r, i) => {
        const sr = ranges.get(r.id);
        for (const n of this.spec.names) {
          const s = this.series.get(this.key(r.id, n));
          s.detail = sr && bodies[i] ? {start: sr[0], end: sr[1], data: normaliseData(bodies[i].series?.[n])} : null;
        }
      });
      await this.render();
    } catch (err) {
      if (!isAbort(err)) this.onError(err);
    }
  }

  /**
   * Live points from the run stream, [{step, time, values: {name: value}}] of run `runId` in arrival order:
   * one extendTraces call for all of them.
   */
  append(runId, points) {
    if (this.deferred) return;
    const wasEmpty = this.pointCount() === 0;
    const weight = this.view.smoothing;
    const update = {x: [], y: [], ...(this.yExp ? {customdata: []} : {})};
    const indices = [];
    let grew = false, sawNonfinite = false;
    // A flat chart's y range is fixed around its one value, a one-x chart's x range around its one x: the next
    // point may fall outside either.
    let needsRender = wasEmpty || !this.plotted || !!this.rendering || !!this.flatY || !!this.singleX;
    for (const n of this.spec.names) {
      const s = this.series.get(this.key(runId, n));
      if (!s) continue;
      const smoothOn = weight > 0 && s.smoothable;
      const xs = [], ys = [], sms = [], logged = [];
      for (const {step, time, values} of points) {
        if (!(n in values)) continue;
        const ov = s.overview;
        // A replay after reconnecting; a later sample at the same step (system metrics during an eval) is new.
        const lastStep = ov.step[ov.step.length - 1], lastTime = ov.time[ov.time.length - 1];
        if (ov.step.length && (step < lastStep || (step === lastStep && !(time > lastTime)))) continue;
        const v = typeof values[n] === 'number' ? values[n] : null;
        if (v == null) { // NaN or inf where it was measured: no point, as the server stores it; its band grows
          if (s.addNonfinite(step, time)) needsRender = sawNonfinite = true;
          continue;
        }
        pushPoint(ov, step, time, v);
        if (s.detail && step >= s.detail.start && step <= s.detail.end) pushPoint(s.detail.data, step, time, v);
        xs.push(this.xOfPoint(runId, step, time));
        logged.push(v);
        const y = v / this.yFactor;
        ys.push(y);
        if (smoothOn) sms.push(ema([y], weight, s.emaState || (s.emaState = {acc: 0, n: 0})).values[0]);
        // Drawn in other units now: past HUGE while unscaled, or no longer tiny while scaled up.
        if ((Math.abs(v) > HUGE && this.yExp <= 0) || (Math.abs(v) >= TINY && this.yExp < 0)) needsRender = true;
        if (this.unitTicks && step >= 8) needsRender = true;
        if (ov.step.length === MARKER_POINTS + 1) needsRender = true; // enough points now: drop the markers
      }
      if (!xs.length) continue;
      grew = true;
      const idx = this.traceIndex.get(this.key(runId, n));
      if (!idx) { needsRender = true; continue; }
      update.x.push(xs, xs, xs, smoothOn ? xs : []);
      update.y.push(ys, ys, ys, smoothOn ? sms : []);
      update.customdata?.push(logged, logged, logged, smoothOn ? sms.map((v) => v * this.yFactor) : []);
      indices.push(...idx);
    }
    if (!grew && !sawNonfinite) return;
    if (needsRender) {
      this.render().catch((err) => this.onError(err));
    } else if (indices.length) {
      Plotly.extendTraces(this.plot, update, indices);
      this.updateStatus();
    }
    this.maybeRefreshOverview();
  }

  /** Once live points outnumber the buckets twice over, swap them for a fresh bucketed overview. */
  maybeRefreshOverview() {
    let longest = 0;
    for (const s of this.series.values()) longest = Math.max(longest, s.overview.step.length);
    const now = Date.now();
    if (longest <= 2 * this.buckets || now - this.lastOverviewRefresh < 10000) return;
    this.lastOverviewRefresh = now;
    this.reloadOverview().catch((err) => { if (!isAbort(err)) this.onError(err); });
  }

  async reloadOverview() {
    const bodies = await Promise.all(this.runs.map((r) =>
      api(seriesUrl(r.id, this.spec.names, {buckets: this.buckets}), {signal: this.signal})));
    this.runs.forEach((r, i) => this.setOverview(r.id, bodies[i].series));
    await this.render();
  }

  dispose() {
    this.requestZoom.cancel();
    if (window.Plotly && this.plotted) Plotly.purge(this.plot);
  }
}

/**
 * Controls shared by all charts of a page: x-axis by step or time, EMA smoothing, zooming all charts as one.
 * Calls onChange('xMode'|'smoothing'|'syncZoom').
 */
export function chartControls(view, onChange, prefix = '') {
  const smoothValue = h('output', {for: `${prefix}smoothing`}, view.smoothing.toFixed(2));
  const slider = h('input', {type: 'range', id: `${prefix}smoothing`, min: 0, max: 0.99, step: 0.01, value: String(view.smoothing),
    oninput: (e) => { smoothValue.textContent = Number(e.target.value).toFixed(2); },
    onchange: (e) => { view.smoothing = Number(e.target.value); onChange('smoothing'); }});
  const radio = (value, label) => h('label', {class: 'inline'},
    h('input', {type: 'radio', name: `${prefix}xmode`, value, checked: view.xMode === value,
      onchange: () => { view.xMode = value; onChange('xMode'); }}), ' ', label);
  return h('div', {class: 'chart-controls'},
    h('fieldset', {class: 'inline-group'}, h('legend', {}, 'x-axis'), radio('step', 'step'), radio('time', 'time'),
      radio('elapsed', 'elapsed')),
    h('div', {class: 'inline-group'}, h('label', {for: `${prefix}smoothing`}, 'Smoothing'), slider, smoothValue),
    h('label', {class: 'inline', for: `${prefix}sync-zoom`}, h('input', {type: 'checkbox', id: `${prefix}sync-zoom`, checked: view.syncZoom,
      onchange: (e) => { view.syncZoom = e.target.checked; onChange('syncZoom'); }}), 'Zoom all charts together'));
}

/**
 * All charts of one page for one or more runs. `runs`: [{id, label, color}].
 * load() asks each run for its metric names and one bucketed overview; ingest() feeds live events.
 */
export class ChartBoard {
  // `accept(name)` picks the metrics this board charts and `specs` groups them (system_charts.js: the System group).
  // `controlsPrefix` keeps a second board's control ids and radio group apart from the first's.
  constructor(container, {runs, scope, buckets = 500, onError, view = {}, onViewChange = null,
    accept = (n) => !isSystemMetric(n), specs = CHART_SPECS, controlsPrefix = '', sections = false}) {
    this.runs = runs;
    this.accept = accept;
    this.specs = specs;
    this.scope = scope;
    this.buckets = buckets;
    this.onError = onError || ((err) => console.warn(err));
    this.view = {xMode: 'step', smoothing: 0, syncZoom: false, logY: new Set(), ...view};
    this.onViewChange = onViewChange; // (board) whenever the view, a chart's zoom or log scale changes
    this.lastZoom = null; // {chart, range}: the last zoom a user made, for "zoom all charts together"
    this.charts = new Map(); // spec key -> MetricChart
    this.names = [];
    this.queue = []; // live points waiting for the next flush
    this.flushTimer = null;
    this.grid = h('div', {class: 'chart-grid'});
    this.controls = chartControls(this.view, (what) => this.onControl(what), controlsPrefix);
    // `sections`: charts in folding sections by metric prefix, with a filter box (the run page).
    this.sections = sections ? new ChartSections({prefix: controlsPrefix,
      onShow: (c) => this.showChart(c), onHide: (c) => { c.deferred = true; }}) : null;
    if (this.sections) {
      this.grid = this.sections.el;
      this.controls.append(this.sections.filterEl);
    }
    replace(container, this.controls, this.grid);
    scope.onDispose(() => this.dispose());
    scope.onDispose(onThemeChange(() => this.rerender(false))); // the system switched light/dark
  }

  /**
   * Ask each run for its metric names, then let every chart fetch its own bucketed overview in parallel,
   * so the first charts draw while the server still buckets the others.
   */
  async load(metricLists = null) {
    const signal = this.scope.signal;
    const plotly = loadPlotly(); // parse it while the API answers
    // `metricLists`: the runs' /metrics answers when the caller already has them (one request, not two).
    const lists = metricLists || await Promise.all(this.runs.map((r) => api(`/api/runs/${enc(r.id)}/metrics`, {signal})));
    if (!this.scope.alive) return;
    const names = [];
    for (const body of lists) for (const n of body?.names || []) if (!names.includes(n) && this.accept(n)) names.push(n);
    this.names = names;
    if (!names.length) {
      replace(this.grid, h('p', {class: 'empty muted'}, 'No metrics logged yet. Charts appear with the first logged step.'));
      await plotly;
      return;
    }
    const plan = planCharts(names, this.specs);
    if (this.sections) this.sections.reset(plan.length); else this.grid.replaceChildren();
    const charts = plan.map((spec) => this.addChart(spec));
    await Promise.all(charts.filter((c) => !c.deferred).map((c) => c.reloadOverview()));
  }

  /** Drop every chart and load them again from the server (after a resume replaced the steps past its
   * checkpoint, points the page holds are stale). */
  async reload() {
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    this.queue = [];
    for (const c of this.charts.values()) c.dispose();
    this.charts.clear();
    this.names = [];
    await this.load();
  }

  addChart(spec) {
    const grid = this.sections ? this.sections.gridFor(spec) : this.grid;
    const chart = new MetricChart(grid, {spec, runs: this.runs, view: this.view, buckets: this.buckets,
      signal: this.scope.signal, onError: this.onError});
    chart.onZoomChange = (c, range) => this.onChartZoom(c, range);
    chart.onViewChange = () => this.onViewChange?.(this);
    this.charts.set(spec.key, chart);
    this.sections?.add(chart);
    return chart;
  }

  /** A chart comes into view (its section opened, the filter let it through): fetch and draw it, zoomed as the
   * URL asked or, when zooming together, as the others are. */
  async showChart(chart) {
    chart.deferred = false;
    try {
      await chart.reloadOverview();
      if (chart.pendingZoom) {
        const range = rangeFromUrl(chart.pendingZoom, this.view.xMode, chart.elapsedUnit().seconds);
        chart.pendingZoom = null;
        await chart.zoomTo(range);
      } else if (this.view.syncZoom && this.lastZoom && this.lastZoom.chart !== chart) {
        await chart.zoomTo(this.followedRange(this.lastZoom.chart, chart, this.lastZoom.range));
      }
    } catch (err) {
      if (!isAbort(err)) this.onError(err);
    }
  }

  onControl(what) {
    if (what === 'syncZoom') {
      if (this.view.syncZoom && this.lastZoom) this.follow(this.lastZoom.chart, this.lastZoom.range);
    } else {
      this.rerender(what === 'xMode');
    }
    this.onViewChange?.(this);
  }

  /** A user zoomed (or reset) one chart: with "zoom all charts together" on, the others follow. */
  onChartZoom(source, range) {
    this.lastZoom = {chart: source, range};
    if (this.view.syncZoom) this.follow(source, range);
    this.onViewChange?.(this);
  }

  /** Zoomed charts: Map(chart key, or '*' for all when zooming together -> x range in URL units). */
  zoomState() {
    const {xMode, syncZoom} = this.view;
    const toUrl = (c, range) => rangeToUrl(range, xMode, c.elapsedUnit().seconds);
    if (syncZoom) return new Map(this.lastZoom?.range ? [['*', toUrl(this.lastZoom.chart, this.lastZoom.range)]] : []);
    return new Map([...this.charts].filter(([, c]) => c.xView || c.pendingZoom)
      .map(([key, c]) => [key, c.pendingZoom || toUrl(c, c.xView)]));
  }

  /** Zoom charts as a URL asked (zoomState's shape), once they are drawn. */
  async applyZooms(zooms) {
    const jobs = [];
    for (const [key, c] of this.charts) {
      const range = zooms.get('*') || zooms.get(key);
      if (!range) continue;
      if (c.deferred) { c.pendingZoom = range; continue; } // zoomed when it shows
      const axisRange = rangeFromUrl(range, this.view.xMode, c.elapsedUnit().seconds);
      if (zooms.has('*') && !this.lastZoom) this.lastZoom = {chart: c, range: axisRange};
      jobs.push(c.zoomTo(axisRange));
    }
    await Promise.all(jobs);
  }

  follow(source, range) {
    for (const c of this.charts.values()) {
      if (c === source || c.deferred) continue; // a deferred chart takes the zoom when it shows
      c.zoomTo(this.followedRange(source, c, range)).catch((err) => this.onError(err));
    }
  }

  /** `range` of chart `source` in chart `c`'s units: each chart picks its own elapsed unit (s, min or h). */
  followedRange(source, c, range) {
    const scale = this.view.xMode === 'elapsed' ? source.elapsedUnit().seconds / c.elapsedUnit().seconds : 1;
    return range && this.view.xMode === 'elapsed' ? range.map((x) => Number(x) * scale) : range;
  }

  /** A metric name nobody charted yet: put it in its spec's chart or a new one (drawn by its first append). */
  addName(name) {
    if (!this.names.length) { if (this.sections) this.sections.reset(0); else this.grid.replaceChildren(); }
    this.names.push(name);
    const spec = planCharts([name], this.specs)[0];
    const existing = this.charts.get(spec.key);
    if (existing) { existing.addName(name); this.sections?.applyFilter(); return; }
    this.addChart(spec);
  }

  /**
   * A `metric` or `eval` event from a run's stream. Points are batched for 100 ms so a fast run redraws each
   * chart a few times a second, not once per event.
   */
  ingest(runId, event) {
    const values = event.values || {};
    if (event.step == null) return;
    for (const n of Object.keys(values)) {
      // A null is a value that was NaN or inf: the metric is logged all the same (its chart says so).
      if ((typeof values[n] === 'number' || values[n] === null) && !this.names.includes(n) && this.accept(n)) this.addName(n);
    }
    this.queue.push({runId, step: event.step, time: event.time ?? Date.now() / 1000, values});
    if (!this.flushTimer) this.flushTimer = setTimeout(() => this.flush(), 100);
  }

  flush() {
    this.flushTimer = null;
    const byRun = new Map();
    for (const p of this.queue.splice(0)) {
      if (!byRun.has(p.runId)) byRun.set(p.runId, []);
      byRun.get(p.runId).push(p);
    }
    for (const [runId, points] of byRun) for (const chart of this.charts.values()) chart.append(runId, points);
  }

  /** The view changed: a new x-axis kind resets zoom (step ranges do not carry over to time); smoothing keeps it. */
  rerender(resetZoom) {
    for (const c of this.charts.values()) {
      if (resetZoom) {
        c.uirevision += 1; c.resetZoom(); c.unit = null; c.xView = null; c.pendingZoom = null; this.lastZoom = null;
      }
      c.render().catch((err) => this.onError(err));
    }
  }

  dispose() {
    clearTimeout(this.flushTimer);
    for (const c of this.charts.values()) c.dispose();
    this.charts.clear();
  }
}
