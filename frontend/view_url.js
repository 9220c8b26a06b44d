// What a run or compare page shows, kept in its URL so a link reproduces the view:
//   #/runs/<id>?x=time&smooth=0.6&sync=1&log=loss,lr&zoom=loss~100~200&mstep=40&mcolor=softmax
// x: the x-axis (step, time, elapsed); smooth: the EMA weight; sync: zoom all charts together; log: charts
// with a log y axis; zoom: one chart's x range (key~from~to; with sync on, `from~to` for all charts) in steps,
// seconds since the run's start (elapsed) or epoch milliseconds (time); mstep/mcolor: the similarity matrix's
// eval step and colouring. The URL is rewritten in place (no history entry, no re-route) as the view changes.

const X_MODES = ['step', 'time', 'elapsed'];
const VIEW_KEYS = ['x', 'smooth', 'sync', 'log', 'zoom', 'mstep', 'mcolor'];

const finite = (v) => v !== '' && v != null && Number.isFinite(Number(v));

/** Split `key~from~to` (the key may hold `~`) or `from~to` into [key or null, [from, to]]; null if malformed. */
function parseZoom(value) {
  const parts = value.split('~');
  if (parts.length < 2) return null;
  const [from, to] = parts.slice(-2);
  if (!finite(from) || !finite(to) || Number(from) >= Number(to)) return null;
  return [parts.length > 2 ? parts.slice(0, -2).join('~') : null, [Number(from), Number(to)]];
}

/**
 * The view a page's query asks for: {view: {xMode, smoothing, syncZoom, logY}, zooms: Map(chart key or '*'
 * -> [from, to] in URL units), matrix: {step, mode}}. Unknown or malformed values fall back to defaults.
 */
export function readView(query) {
  const view = {};
  if (X_MODES.includes(query.get('x'))) view.xMode = query.get('x');
  const smooth = query.get('smooth');
  if (finite(smooth)) view.smoothing = Math.min(0.99, Math.max(0, Number(smooth)));
  if (query.get('sync') === '1') view.syncZoom = true;
  view.logY = new Set((query.get('log') || '').split(',').filter(Boolean));
  const zooms = new Map();
  for (const value of query.getAll('zoom')) {
    const parsed = parseZoom(value);
    if (parsed) zooms.set(parsed[0] ?? '*', parsed[1]);
  }
  const mstep = query.get('mstep');
  return {view, zooms, matrix: {step: finite(mstep) ? Number(mstep) : null, mode: query.get('mcolor') || null}};
}

/** A chart's x range from Plotly (numbers, Dates or local date strings) in URL units. */
export function rangeToUrl(range, xMode, elapsedSeconds = 1) {
  if (xMode === 'time') {
    return range.map((v) => (v instanceof Date ? v.getTime() : typeof v === 'number' ? v
      : new Date(String(v).trim().replace(' ', 'T')).getTime()));
  }
  return range.map((v) => Number(v) * (xMode === 'elapsed' ? elapsedSeconds : 1));
}

/** A URL range back in a chart's axis units. */
export function rangeFromUrl(range, xMode, elapsedSeconds = 1) {
  if (xMode === 'time') return range.map((ms) => new Date(ms));
  return xMode === 'elapsed' ? range.map((s) => s / elapsedSeconds) : range;
}

const round = (v) => String(Number(Number(v).toPrecision(13))); // epoch milliseconds keep every digit

/** The query parameters for a chart board's view (defaults left out, so a plain page keeps a plain URL). */
export function boardParams(board) {
  const {view} = board;
  const out = [];
  if (view.xMode !== 'step') out.push(['x', view.xMode]);
  if (view.smoothing > 0) out.push(['smooth', round(view.smoothing)]);
  if (view.syncZoom) out.push(['sync', '1']);
  if (view.logY.size) out.push(['log', [...view.logY].join(',')]);
  for (const [key, range] of board.zoomState()) {
    const [from, to] = range.map(round);
    out.push(['zoom', key === '*' ? `${from}~${to}` : `${key}~${from}~${to}`]);
  }
  return out;
}

/** A query string with `,` `~` `:` `/` left as typed (all safe in a fragment), so a link stays readable. */
export function readableQuery(query) {
  return query.toString().replace(/%2C/gi, ',').replace(/%7E/gi, '~').replace(/%3A/gi, ':').replace(/%2F/gi, '/');
}

/** Rewrite the current hash's view parameters with `params` ([[key, value]]), keeping the others (ids). */
export function writeView(params) {
  const raw = location.hash.replace(/^#/, '');
  const [path, qs = ''] = raw.split('?');
  const query = new URLSearchParams(qs);
  for (const key of VIEW_KEYS) query.delete(key);
  for (const [key, value] of params) query.append(key, value);
  const text = readableQuery(query);
  const next = `#${path}${text ? `?${text}` : ''}`;
  if (next !== location.hash) history.replaceState(history.state, '', next);
}
