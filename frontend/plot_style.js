// What every Plotly chart of the dashboard shares: the plot config (nothing that offers to upload a chart or
// links to plotly.com), the escaping of user text for Plotly's pseudo-HTML, and the colours of the current
// light or dark theme.

/**
 * Plotly renders trace names, tick labels, hover text and titles as pseudo-HTML (<b>, <a href>, <br>):
 * user text (run and metric names, captions) must reach it with its markup characters as entities.
 */
export function plotText(value) {
  return String(value).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * The config of every chart: no "Share chart" (it uploads to Plotly Cloud) and no Plotly logo link; the
 * PNG download stays. `extra` adds per-chart switches.
 */
export function plotConfig(extra = {}) {
  return {displaylogo: false, showSendToCloud: false, showEditInChartStudio: false, showTips: false,
    plotlyServerURL: '', ...extra};
}

const prefersDark = () => window.matchMedia?.('(prefers-color-scheme: dark)').matches ?? false;

/** The colours charts draw with, for the light or dark theme the page follows (prefers-color-scheme). */
export function plotTheme() {
  return prefersDark()
    ? {dark: true, ink: '#d7dce5', muted: '#8b94a7', grid: '#2c3444', plotBg: '#161b26', diagonal: '#ffffff'}
    : {dark: false, ink: '#1d2330', muted: '#667085', grid: '#e6e9ef', plotBg: '#ffffff', diagonal: '#ffffff'};
}

/** Call `fn` when the system switches between light and dark; returns the function that stops it. */
export function onThemeChange(fn) {
  const query = window.matchMedia?.('(prefers-color-scheme: dark)');
  if (!query) return () => {};
  query.addEventListener('change', fn);
  return () => query.removeEventListener('change', fn);
}
