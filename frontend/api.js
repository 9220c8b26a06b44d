// The REST/SSE client. Every error becomes an ApiError whose message says in words what failed and why,
// so pages can show `err.message` as is.

import {banner} from './banner.js';

export class ApiError extends Error {
  constructor(message, status = 0, fields = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.fields = fields; // [{field: "optim.lr", message: "..."}] for invalid configs
  }
}

/** Normalise the two 422 shapes (ours: {field, message}; FastAPI's: {loc, msg}) to [{field, message}]. */
export function fieldErrors(detail) {
  if (!Array.isArray(detail)) return null;
  return detail.map((d) => ({
    field: d.field ?? (d.loc || []).filter((p) => p !== 'body').join('.'),
    message: d.message ?? d.msg ?? JSON.stringify(d),
  }));
}

/**
 * fetch JSON from the API. `body` is sent as JSON. Throws ApiError (or AbortError when `signal` aborts).
 */
export async function api(path, {method = 'GET', body, signal} = {}) {
  const init = {method, signal, headers: {Accept: 'application/json'}};
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    console.warn(`${method} ${path}: no answer (${err.message})`);
    throw new ApiError(`Cannot reach the server (${err.message}). Is \`cliplab serve\` still running?`);
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    const fields = fieldErrors(data?.detail);
    const message = failureMessage(resp, data, text, fields);
    // The request line and status are for whoever debugs; the page shows only what went wrong.
    console.warn(`${method} ${path} failed with ${resp.status}: ${message}`);
    throw new ApiError(message, resp.status, fields);
  }
  return data;
}

/** What the server said went wrong, in its own words: its `detail`, else the error page's gist. */
function failureMessage(resp, data, text, fields) {
  if (fields) return fields.map((f) => (f.field ? `${f.field}: ${f.message}` : f.message)).join('; ');
  const detail = data?.detail;
  if (typeof detail === 'string' && detail.trim()) return detail;
  if (detail) return JSON.stringify(detail);
  // A proxy or server error page is HTML: its status line says more than its markup.
  if (text.trim() && !/^\s*</.test(text)) return text.trim().slice(0, 300);
  if (resp.status >= 500) return 'the server hit an internal error (its log says more)';
  return resp.statusText || 'the server refused the request';
}

export const enc = encodeURIComponent;

/**
 * An EventSource that reports its health in the page banner. The browser reconnects by itself and sends
 * Last-Event-ID, so the server resumes where we left off. When the server refuses the stream outright
 * (EventSource gives up: readyState CLOSED) we open a new one after a backoff, resuming with `?after=<last id>`
 * when `resumable`, else calling `onGap` so the page can refetch what it may have missed.
 *
 * handlers: {eventName: (data, messageEvent) => void}; data is the parsed JSON body.
 */
export class LiveStream {
  constructor(url, handlers, {label = 'Live updates', onGap = null, resumable = false} = {}) {
    this.url = url;
    this.resumable = resumable;
    this.lastId = null;
    this.handlers = handlers;
    this.label = label;
    this.onGap = onGap;
    this.key = `stream:${url}`;
    this.closed = false;
    this.retryMs = 1000;
    this.timer = null;
    this.open();
  }

  open() {
    let url = this.url;
    if (this.resumable && this.lastId != null) url = withParam(url, 'after', this.lastId);
    const es = new EventSource(url);
    this.es = es;
    es.addEventListener('open', () => {
      this.retryMs = 1000;
      banner.clear(this.key);
    });
    es.addEventListener('error', () => {
      if (this.closed || es !== this.es) return;
      if (es.readyState === EventSource.CLOSED) {
        const wait = this.retryMs;
        this.retryMs = Math.min(this.retryMs * 2, 30000);
        banner.show(this.key, `${this.label} disconnected; retrying in ${Math.round(wait / 1000)} s…`, 'warn', {lasts: 'app'});
        this.timer = setTimeout(() => {
          if (this.closed) return;
          const resumes = this.resumable && this.lastId != null;
          this.open();
          if (!resumes && this.onGap) this.onGap();
        }, wait);
      } else {
        banner.show(this.key, `${this.label} disconnected; reconnecting…`, 'warn', {lasts: 'app'});
      }
    });
    for (const [name, fn] of Object.entries(this.handlers)) {
      es.addEventListener(name, (msg) => {
        if (this.closed) return;
        if (msg.lastEventId) this.lastId = msg.lastEventId;
        let data;
        try { data = JSON.parse(msg.data); } catch { console.warn(`unparseable ${name} event`, msg.data); return; }
        fn(data, msg);
      });
    }
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.es) this.es.close();
    banner.clear(this.key);
  }
}

function withParam(url, key, value) {
  const u = new URL(url, location.href);
  u.searchParams.set(key, value);
  return u.pathname + u.search;
}
