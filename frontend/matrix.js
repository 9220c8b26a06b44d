// The K x K image-text similarity matrix of one run: rows are validation images (thumbnails down the left),
// columns their captions, a slider walks through the eval steps. As the model learns the diagonal (each image
// with its own caption) should light up while the rest fades.

import {h, replace, debounce, isAbort, fmtNum} from './util.js';
import {api, enc} from './api.js';
import {loadPlotly} from './plotly_loader.js';
import {plotConfig, plotText, plotTheme, onThemeChange} from './plot_style.js';

const MODES = {
  cosine: 'cosine similarity',
  softmax: 'P(caption | image): softmax over the row at the logit scale',
};

const shorten = (s, n) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

const FONT_PX = 11;
const FONT_FAMILY = 'system-ui, sans-serif';
const LABEL_CHARS = 28; // longer captions are cut with an ellipsis under the columns (whole in the hover)
const SIN45 = Math.SQRT1_2;

/** Break a caption into lines of about `width` characters at spaces, for the hover box. */
function wrapWords(text, width) {
  const lines = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) { lines.push(line); line = word; }
    else line = line ? `${line} ${word}` : word;
  }
  return [...lines, line].join('\n');
}

let measureCtx = null;
function textWidth(text) {
  measureCtx = measureCtx || document.createElement('canvas').getContext('2d');
  measureCtx.font = `${FONT_PX}px ${FONT_FAMILY}`;
  return measureCtx.measureText(text).width;
}

/**
 * Margins that fit every column's -45° caption: label j hangs down and to the left of its column's centre,
 * so the left margin must hold whatever of it reaches past the grid's left edge (Plotly hides a tick label
 * that would cross the edge of the plot), and the bottom margin its full drop. The thumbnails need `cell`
 * px on the left too.
 */
export function matrixMargins(labels, cell) {
  let left = cell + 14, drop = 0;
  labels.forEach((label, j) => {
    const reach = (textWidth(label) + FONT_PX) * SIN45 + 8; // the rotated text's width and height, plus the tick gap
    left = Math.max(left, Math.ceil(reach - cell * (j + 0.5)) + 4);
    drop = Math.max(drop, reach);
  });
  return {l: left, r: 10, t: 10, b: Math.ceil(drop) + 28}; // + the axis title
}

const finiteNumber = (v) => typeof v === 'number' && Number.isFinite(v);

/**
 * The snapshot's similarities as a K x K grid of numbers, null where a cell is not a finite number: a diverged
 * model's NaN and ±inf reach the dashboard as null (JSON has neither), and a short row is filled with nulls.
 */
export function finiteGrid(similarity) {
  if (!Array.isArray(similarity)) return [];
  const k = similarity.length;
  return similarity.map((row) => Array.from({length: k}, (_, j) => (finiteNumber(row?.[j]) ? row[j] : null)));
}

/** Each row's softmax at `scale` over its finite cells; the cells that are not finite stay null. */
function softmaxRows(sim, scale) {
  return sim.map((row) => {
    const logits = row.map((v) => (v == null ? null : v * scale));
    const max = Math.max(...logits.filter((v) => v != null));
    const exps = logits.map((v) => (v == null ? null : Math.exp(v - max)));
    const total = exps.reduce((a, b) => a + (b ?? 0), 0);
    return exps.map((v) => (v == null ? null : v / total));
  });
}

/**
 * Diagonal vs off-diagonal means and how many images rank their own caption first, over the finite cells
 * (a mean is null when its cells have none; a row without a finite cell ranks nothing).
 */
export function matrixStats(sim, captions) {
  const k = sim.length;
  let diag = 0, nDiag = 0, off = 0, nOff = 0, hits = 0;
  for (let i = 0; i < k; i++) {
    let best = -1;
    for (let j = 0; j < k; j++) {
      const v = sim[i][j];
      if (!finiteNumber(v)) continue;
      if (i === j) { diag += v; nDiag += 1; } else { off += v; nOff += 1; }
      if (best < 0 || v > sim[i][best]) best = j;
    }
    // Identical captions are equally right: compare the text, not the column.
    if (best >= 0 && captions[best] === captions[i]) hits += 1;
  }
  return {diag: nDiag ? diag / nDiag : null, off: nOff ? off / nOff : null, hits, k};
}

/** Where no value is: one stroke across each cell of `z` that is null (its colour is the plot's background). */
function gapStrokes(z, color) {
  const path = z.flatMap((row, i) => row.flatMap((v, j) => (v == null ? [`M${j - 0.5},${i + 0.5}L${j + 0.5},${i - 0.5}`] : [])));
  if (!path.length) return [];
  return [{type: 'path', xref: 'x', yref: 'y', path: path.join(''), line: {color, width: 1.5}, layer: 'above'}];
}

export class SimilarityMatrix {
  /** `step`/`mode`: the view a URL asked for; `onViewChange()` after the user picks another step or colouring. */
  constructor(container, {runId, signal, onError, step = null, mode = null, onViewChange = null}) {
    this.runId = runId;
    this.signal = signal;
    this.onError = onError || ((err) => console.warn(err));
    this.onViewChange = onViewChange;
    this.steps = [];
    this.cache = new Map(); // step -> matrix event
    this.index = -1;
    this.wantedStep = step; // a step the user chose (slider or URL): the view stays on it as new steps arrive
    this.mode = mode in MODES ? mode : 'cosine';
    this.plotted = false;
    this.slider = h('input', {type: 'range', id: 'matrix-step', min: 0, max: 0, step: 1, value: 0, disabled: true,
      'aria-label': 'Eval step of the similarity matrix',
      oninput: () => this.pick(Number(this.slider.value))});
    this.stepLabel = h('output', {for: 'matrix-step', class: 'muted'});
    this.modeSelect = h('select', {id: 'matrix-mode', onchange: () => {
      this.mode = this.modeSelect.value;
      this.onViewChange?.();
      this.draw();
    }}, Object.entries(MODES).map(([v, label]) => h('option', {value: v, selected: v === this.mode}, label)));
    this.stats = h('p', {class: 'matrix-stats muted'});
    this.gapNote = h('p', {class: 'matrix-gaps', role: 'note', hidden: true});
    this.plot = h('div', {class: 'matrix-plot', role: 'img', 'aria-label': 'Similarity matrix heatmap'});
    this.body = h('div', {class: 'matrix-body'}, h('p', {class: 'muted'}, 'Loading…'));
    // Every caption in full, numbered as in the hover (column j is caption j; row i the image of caption i).
    this.captionList = h('ol', {class: 'matrix-captions', start: 0});
    this.captionBox = h('details', {class: 'matrix-caption-box', open: true, hidden: true},
      h('summary', {}, 'Captions'), this.captionList);
    this.card = h('section', {class: 'card', id: 'matrix'},
      h('header', {class: 'card-head'}, h('h2', {}, 'Similarity matrix')),
      h('div', {class: 'matrix-controls'},
        h('label', {for: 'matrix-step'}, 'Eval step'), this.slider, this.stepLabel,
        h('label', {for: 'matrix-mode'}, 'Colour'), this.modeSelect),
      this.stats, this.gapNote, this.body, this.captionBox);
    container.append(this.card);
    this.showDebounced = debounce((i) => this.show(i), 80);
    this.range = null; // the cosine colour range, fixed across steps so their colours compare
    this.onResize = debounce(() => this.draw().catch((err) => this.onError(err)), 200);
    window.addEventListener('resize', this.onResize);
    this.stopThemeWatch = onThemeChange(() => this.draw().catch((err) => this.onError(err)));
  }

  async load() {
    const list = await api(`/api/runs/${enc(this.runId)}/matrices`, {signal: this.signal});
    this.steps = (list || []).map((m) => m.step).sort((a, b) => a - b);
    this.updateSlider();
    if (!this.steps.length) {
      replace(this.body, h('p', {class: 'empty muted'},
        'No similarity matrix yet: the trainer takes a snapshot at every evaluation (eval.every steps).'));
      return;
    }
    // The latest snapshot sets the cosine colour range (a trained model spreads widest); live ones widen it.
    await this.fetchStep(this.steps[this.steps.length - 1]);
    this.widenRange(this.cache.get(this.steps[this.steps.length - 1]));
    const wanted = this.steps.indexOf(this.wantedStep);
    if (wanted < 0) this.wantedStep = null; // a link to a step this run does not have: follow the latest
    await this.show(wanted >= 0 ? wanted : this.steps.length - 1);
  }

  /** The URL parameters of this view: the chosen step and a colouring other than cosine. */
  viewParams() {
    const out = [];
    if (this.wantedStep != null && this.steps.includes(this.wantedStep)) out.push(['mstep', String(this.wantedStep)]);
    if (this.mode !== 'cosine') out.push(['mcolor', this.mode]);
    return out;
  }

  updateSlider() {
    this.slider.max = String(Math.max(0, this.steps.length - 1));
    this.slider.disabled = this.steps.length < 2;
    if (this.index >= 0) this.slider.value = String(this.index);
  }

  /** A `matrix` event from the live stream; follows it when the slider sat on the latest step. */
  /** A resume replaced the steps past its own: forget what the abandoned stretch recorded and list again. */
  async reload() {
    this.cache.clear();
    this.range = null;
    this.index = -1;
    await this.load();
  }

  addEvent(event) {
    if (event.step == null) return;
    if (this.steps.includes(event.step)) {
      // A resumed run records a step again: the newer snapshot replaces the one its rewind abandoned.
      const known = this.cache.get(event.step);
      if (!known || !(event.seq > known.seq)) return;
      this.cache.set(event.step, event);
      this.widenRange(event);
      if (this.steps[this.index] === event.step) this.show(this.index).catch((err) => this.onError(err));
      return;
    }
    // Show the new step when following the latest, when nothing is shown yet, or when it is the one asked for.
    const following = this.wantedStep == null || this.index < 0 || event.step === this.wantedStep;
    this.cache.set(event.step, event);
    this.widenRange(event);
    this.steps.push(event.step);
    this.steps.sort((a, b) => a - b);
    this.updateSlider();
    if (following) this.show(this.steps.indexOf(event.step)).catch((err) => this.onError(err));
    else this.stepLabel.textContent = this.labelFor(this.index);
  }

  /** The user moved the slider to index `i`: the latest step follows new evals, an earlier one stays. */
  pick(i) {
    this.wantedStep = i === this.steps.length - 1 ? null : this.steps[i];
    this.onViewChange?.();
    this.showDebounced(i);
  }

  labelFor(i) { return `step ${this.steps[i]} (${i + 1} of ${this.steps.length})`; }

  async show(i) {
    if (i < 0 || i >= this.steps.length) return;
    this.index = i;
    this.slider.value = String(i);
    this.stepLabel.textContent = this.labelFor(i);
    const step = this.steps[i];
    try {
      await this.fetchStep(step);
      if (this.index === i) await this.draw();
    } catch (err) {
      if (!isAbort(err)) replace(this.body, h('p', {class: 'error-box', role: 'alert'}, err.message));
    }
  }

  async fetchStep(step) {
    if (!this.cache.has(step)) this.cache.set(step, await api(`/api/runs/${enc(this.runId)}/matrices/${step}`, {signal: this.signal}));
  }

  /** Widen the cosine colour range to hold matrix `m` (never narrowed: a step's colours keep their meaning). */
  widenRange(m) {
    const values = (m?.similarity || []).flat().filter(finiteNumber); // NaN/inf cells (null) take no colour
    if (!values.length) return;
    // Outward to a multiple of 0.05, so the colour bar reads 0.1 … 0.9 rather than 0.1037 … 0.8951.
    const lo = Math.floor(Math.min(...values) * 20) / 20, hi = Math.ceil(Math.max(...values) * 20) / 20;
    this.range = this.range ? [Math.min(this.range[0], lo), Math.max(this.range[1], hi)] : [lo, hi];
    if (this.range[0] === this.range[1]) this.range = [this.range[0] - 0.05, this.range[1] + 0.05];
  }

  /**
   * Cell size and labels for the space the card has: cells up to 64 px in a ~600 px square; where that
   * does not fit (a phone) the columns are labelled by number and the caption list carries the text.
   */
  geometry(captions, k) {
    const avail = this.body.clientWidth || 600;
    const compact = avail < 640;
    if (compact) {
      const cell = Math.max(12, Math.min(64, Math.floor((avail - 14 - 10 - 56) / (k + 1))));
      return {cell, compact, colorbar: 56, labels: captions.map((_, j) => String(j)),
        margin: {l: cell + 14, r: 10, t: 10, b: 40}};
    }
    const cell = Math.max(12, Math.min(64, Math.floor(600 / k)));
    const labels = captions.map((c) => shorten(c, LABEL_CHARS));
    return {cell, compact, colorbar: 90, labels, margin: matrixMargins(labels, cell)};
  }

  renderCaptions(captions) {
    this.captionBox.hidden = !captions.length;
    if (JSON.stringify(captions) === this.captionsShown) return;
    this.captionsShown = JSON.stringify(captions);
    this.captionList.replaceChildren(...captions.map((c) => h('li', {}, c)));
  }

  async draw() {
    const m = this.cache.get(this.steps[this.index]);
    if (!m) return;
    const sim = finiteGrid(m.similarity);
    const captions = (m.captions || []).map(String);
    const thumbs = m.thumbnails || [];
    const k = sim.length;
    if (!k) {
      replace(this.body, h('p', {class: 'muted'}, 'This snapshot is empty.'));
      this.gapNote.hidden = true;
      return;
    }
    const soft = this.mode === 'softmax';
    const z = soft ? softmaxRows(sim, (finiteNumber(m.logit_scale) && m.logit_scale) || 100) : sim;
    if (!soft && !this.range) this.widenRange(m);
    // No finite cell at any step yet: cosine's whole range, so the grid of blanks and its thumbnails still draw.
    const [zmin, zmax] = soft ? [0, 1] : (this.range || [-1, 1]);
    this.describe(m, sim, captions, soft ? null : this.range);
    const {cell, compact, colorbar, labels, margin} = this.geometry(captions, k);
    const gridPx = cell * k;
    const idx = [...Array(k).keys()];
    const theme = plotTheme();
    const hoverCaption = (c) => plotText(wrapWords(c, 60)).replace(/\n/g, '<br>');
    const name = soft ? 'P' : 'cosine';
    const text = idx.map((i) => idx.map((j) =>
      `image ${i}: “${hoverCaption(captions[i])}”<br>caption ${j}: “${hoverCaption(captions[j])}”<br>` +
      (z[i][j] == null ? `${name} not finite (NaN/inf)` : `${name} = ${z[i][j].toFixed(3)}`)));
    const trace = {
      type: 'heatmap', z, x: idx, y: idx, text, colorscale: 'Viridis', zmin, zmax, zauto: false,
      hovertemplate: '%{text}<extra></extra>', hoverongaps: true,
      colorbar: {thickness: compact ? 10 : 12, len: 1, title: {text: soft ? 'P' : 'cos', side: 'right'}},
    };
    const layout = {
      width: gridPx + margin.l + margin.r + colorbar,
      height: gridPx + margin.t + margin.b,
      margin,
      // Fixed ranges: a zoomed heatmap would lose its thumbnails' alignment (and zooming a 16 x 16 grid helps no one).
      xaxis: {zeroline: false, tickvals: idx, ticktext: labels.map(plotText), tickangle: compact ? 0 : -45, automargin: false, fixedrange: true,
        title: {text: compact ? 'caption number (list below)' : 'captions', standoff: 4}, showgrid: false, constrain: 'domain'},
      yaxis: {zeroline: false, tickvals: idx, autorange: 'reversed', showticklabels: false, showgrid: false, fixedrange: true,
        scaleanchor: 'x', constrain: 'domain'},
      images: thumbs.slice(0, k).map((src, i) => ({source: src, xref: 'paper', yref: 'y', x: -0.01, y: i,
        sizex: (cell - 2) / gridPx, sizey: 0.94, xanchor: 'right', yanchor: 'middle', sizing: 'contain', layer: 'above'})),
      // Each image's own caption: an outline around the diagonal cells.
      shapes: [...idx.map((i) => ({type: 'rect', xref: 'x', yref: 'y', x0: i - 0.5, x1: i + 0.5, y0: i - 0.5, y1: i + 0.5,
        line: {color: theme.diagonal, width: 2}, fillcolor: 'rgba(0,0,0,0)', layer: 'above'})), ...gapStrokes(z, theme.muted)],
      font: {size: FONT_PX, family: FONT_FAMILY, color: theme.ink},
      // A cell that is not finite is a gap in the heatmap: this grey (no colour of Viridis) shows through it.
      paper_bgcolor: 'rgba(0,0,0,0)', plot_bgcolor: theme.grid,
    };
    await loadPlotly();
    if (!this.body.contains(this.plot)) replace(this.body, this.plot);
    await Plotly.react(this.plot, [trace], layout, plotConfig({displayModeBar: false, responsive: false}));
    this.captions = captions;
    this.renderCaptions(captions);
    if (!this.plotted) this.plot.on('plotly_afterplot', () => this.titleColumnLabels());
    this.plotted = true;
    this.titleColumnLabels();
  }

  /** The line over the heatmap (means, ranking, logit scale, `span` of the cosine colours) and the note on cells that
   * are not finite. */
  describe(m, sim, captions, span) {
    const st = matrixStats(sim, captions);
    // The trainer sends a NaN/inf logit scale as null; an older event has none at all.
    const scale = !('logit_scale' in m) ? ''
      : ` · logit scale ${m.logit_scale == null ? 'not finite' : fmtNum(m.logit_scale, 3)}`;
    this.stats.textContent = `diagonal mean ${fmtNum(st.diag, 3)} · off-diagonal mean ${fmtNum(st.off, 3)} · ` +
      `${st.hits} of ${st.k} images rank their own caption first${scale}` +
      (span ? ` · colours span cosine ${fmtNum(span[0], 3)} … ${fmtNum(span[1], 3)} at every step` : '');
    const cells = sim.length ** 2, gaps = sim.flat().filter((v) => v == null).length;
    this.gapNote.hidden = !gaps;
    this.gapNote.textContent = gaps === cells
      ? `All ${cells} cells not finite (NaN/inf): the model diverged; each is a struck-through blank.`
      : `${gaps} of ${cells} cells not finite (NaN/inf), struck-through blanks; the colours span the finite cells.`;
  }

  /** A native tooltip with the whole caption on each column label (the label itself may be cut short). */
  titleColumnLabels() {
    for (const el of this.plot.querySelectorAll('.xtick text')) {
      const caption = this.captions?.[el.__data__?.x];
      if (caption == null) continue;
      let title = el.querySelector('title');
      if (!title) title = el.appendChild(document.createElementNS('http://www.w3.org/2000/svg', 'title'));
      title.textContent = caption;
    }
  }

  dispose() {
    this.showDebounced.cancel();
    this.onResize.cancel();
    window.removeEventListener('resize', this.onResize);
    this.stopThemeWatch();
    if (this.plotted && window.Plotly) Plotly.purge(this.plot);
  }
}
