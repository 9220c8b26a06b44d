// The K x K image-text similarity matrix of one run: rows are validation images (thumbnails down the left),
// columns their captions, a slider walks through the eval steps. As the model learns the diagonal (each image
// with its own caption) should light up while the rest fades.

import {h, replace, debounce, isAbort, fmtNum} from './util.js';
import {api, enc} from './api.js';
import {loadPlotly} from './plotly_loader.js';
import {plotConfig, plotText} from './plot_style.js';

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

function softmaxRows(sim, scale) {
  return sim.map((row) => {
    const logits = row.map((v) => v * scale);
    const max = Math.max(...logits);
    const exps = logits.map((v) => Math.exp(v - max));
    const total = exps.reduce((a, b) => a + b, 0);
    return exps.map((v) => v / total);
  });
}

/** Diagonal vs off-diagonal means and how many images rank their own caption first. */
export function matrixStats(sim, captions) {
  const k = sim.length;
  let diag = 0, off = 0, hits = 0;
  for (let i = 0; i < k; i++) {
    let best = 0;
    for (let j = 0; j < k; j++) {
      if (i === j) diag += sim[i][j]; else off += sim[i][j];
      if (sim[i][j] > sim[i][best]) best = j;
    }
    // Identical captions are equally right: compare the text, not the column.
    if (captions[best] === captions[i]) hits += 1;
  }
  return {diag: diag / k, off: k > 1 ? off / (k * (k - 1)) : 0, hits, k};
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
    this.plot = h('div', {class: 'matrix-plot', role: 'img', 'aria-label': 'Similarity matrix heatmap'});
    this.body = h('div', {class: 'matrix-body'}, h('p', {class: 'muted'}, 'Loading…'));
    this.card = h('section', {class: 'card', id: 'matrix'},
      h('header', {class: 'card-head'}, h('h2', {}, 'Similarity matrix')),
      h('div', {class: 'matrix-controls'},
        h('label', {for: 'matrix-step'}, 'Eval step'), this.slider, this.stepLabel,
        h('label', {for: 'matrix-mode'}, 'Colour'), this.modeSelect),
      this.stats, this.body);
    container.append(this.card);
    this.showDebounced = debounce((i) => this.show(i), 80);
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
    const wanted = this.steps.indexOf(this.wantedStep);
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
  addEvent(event) {
    if (event.step == null || this.steps.includes(event.step)) return;
    const following = this.wantedStep == null;
    this.cache.set(event.step, event);
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
      if (!this.cache.has(step)) {
        const m = await api(`/api/runs/${enc(this.runId)}/matrices/${step}`, {signal: this.signal});
        this.cache.set(step, m);
      }
      if (this.index === i) await this.draw();
    } catch (err) {
      if (!isAbort(err)) replace(this.body, h('p', {class: 'error-box', role: 'alert'}, err.message));
    }
  }

  async draw() {
    const m = this.cache.get(this.steps[this.index]);
    if (!m) return;
    const sim = m.similarity || [];
    const captions = (m.captions || []).map(String);
    const thumbs = m.thumbnails || [];
    const k = sim.length;
    if (!k) { replace(this.body, h('p', {class: 'muted'}, 'This snapshot is empty.')); return; }
    const st = matrixStats(sim, captions);
    this.stats.textContent = `diagonal mean ${fmtNum(st.diag, 3)} · off-diagonal mean ${fmtNum(st.off, 3)} · ` +
      `${st.hits} of ${st.k} images rank their own caption first` +
      (m.logit_scale != null ? ` · logit scale ${fmtNum(m.logit_scale, 3)}` : '');

    const soft = this.mode === 'softmax';
    const z = soft ? softmaxRows(sim, m.logit_scale || 100) : sim;
    // Cells (and thumbnails) as large as a ~600 px square allows, at most 64 px.
    const cell = Math.max(12, Math.min(64, Math.floor(600 / k)));
    const gridPx = cell * k;
    const labels = captions.map((c) => shorten(c, LABEL_CHARS));
    const margin = matrixMargins(labels, cell);
    const idx = [...Array(k).keys()];
    const hoverCaption = (c) => plotText(wrapWords(c, 60)).replace(/\n/g, '<br>');
    const text = idx.map((i) => idx.map((j) =>
      `image ${i}: “${hoverCaption(captions[i])}”<br>caption ${j}: “${hoverCaption(captions[j])}”`));
    const trace = {
      type: 'heatmap', z, x: idx, y: idx, text, colorscale: 'Viridis',
      zmin: soft ? 0 : undefined, zmax: soft ? 1 : undefined,
      hovertemplate: `%{text}<br>${soft ? 'P' : 'cosine'} = %{z:.3f}<extra></extra>`,
      colorbar: {thickness: 12, len: 1, title: {text: soft ? 'P' : 'cos', side: 'right'}},
    };
    const layout = {
      width: gridPx + margin.l + margin.r + 90, // + colour bar
      height: gridPx + margin.t + margin.b,
      margin,
      // Fixed ranges: a zoomed heatmap would lose its thumbnails' alignment (and zooming a 16 x 16 grid helps no one).
      xaxis: {tickvals: idx, ticktext: labels.map(plotText), tickangle: -45, automargin: false, fixedrange: true,
        title: {text: 'captions', standoff: 4}, showgrid: false, constrain: 'domain'},
      yaxis: {tickvals: idx, autorange: 'reversed', showticklabels: false, showgrid: false, fixedrange: true,
        scaleanchor: 'x', constrain: 'domain'},
      images: thumbs.slice(0, k).map((src, i) => ({source: src, xref: 'paper', yref: 'y', x: -0.01, y: i,
        sizex: (cell - 2) / gridPx, sizey: 0.94, xanchor: 'right', yanchor: 'middle', sizing: 'contain', layer: 'above'})),
      font: {size: FONT_PX, family: FONT_FAMILY},
      paper_bgcolor: 'rgba(0,0,0,0)',
    };
    await loadPlotly();
    if (!this.body.contains(this.plot)) replace(this.body, this.plot);
    await Plotly.react(this.plot, [trace], layout, plotConfig({displayModeBar: false, responsive: false}));
    this.captions = captions;
    if (!this.plotted) this.plot.on('plotly_afterplot', () => this.titleColumnLabels());
    this.plotted = true;
    this.titleColumnLabels();
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
    if (this.plotted && window.Plotly) Plotly.purge(this.plot);
  }
}
