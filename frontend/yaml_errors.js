// Config errors shown where the eye is in the YAML editor: a line-number gutter beside the textarea marks the
// lines, a message sits at the right of each bad line (scrolling with the text), and a list under the editor
// names line and field, each a button that puts the cursor on its line. The server names fields by dotted
// path (optim.lr, tags.0); yamlLineOf finds the line that sets them.

import {h, replace} from './util.js';

// `  key: value` or `- key: value` (a mapping in a list); the key bare or quoted.
const KEY_LINE = /^(\s*)(-\s+)?("[^"]*"|'[^']*'|[^\s#'"-][^:#]*?)\s*:(?:\s|$)/;

/**
 * The 1-based line of block-style YAML `text` that sets dotted `path` (optim.lr), or of its deepest
 * ancestor found (a list index or a key written in flow style leads to its parent's line); null if none.
 */
export function yamlLineOf(text, path) {
  const want = String(path || '').split('.').filter(Boolean);
  const stack = []; // [{indent, key}] of the mapping keys enclosing the current line
  let best = null, bestDepth = 0;
  text.split('\n').forEach((line, i) => {
    if (/^\s*(#|$)/.test(line)) return;
    const m = line.match(KEY_LINE);
    if (!m) return;
    const indent = m[1].length + (m[2] ? m[2].length : 0);
    while (stack.length && stack[stack.length - 1].indent >= indent) stack.pop();
    stack.push({indent, key: m[3].replace(/^["']|["']$/g, '').trim()});
    const keys = stack.map((s) => s.key);
    const depth = keys.length <= want.length && keys.every((k, j) => k === want[j]) ? keys.length : 0;
    if (depth > bestDepth) { best = i + 1; bestDepth = depth; }
  });
  return best;
}

/**
 * Wraps a YAML textarea: `el` goes where the textarea was. show([{field?, line?, message}]) marks the
 * errors (a `line` wins over looking the field up); show([]) clears them.
 */
export class YamlErrorMarks {
  constructor(textarea) {
    this.textarea = textarea;
    this.errors = [];
    this.gutter = h('pre', {class: 'yaml-gutter', 'aria-hidden': 'true'});
    this.overlay = h('div', {class: 'yaml-overlay', 'aria-hidden': 'true'});
    this.list = h('ul', {class: 'yaml-error-list'});
    this.el = h('div', {class: 'yaml-editor-wrap'},
      h('div', {class: 'yaml-editor'}, this.gutter, textarea, this.overlay), this.list);
    textarea.addEventListener('scroll', () => this.position());
    textarea.addEventListener('input', () => this.renderGutter());
    new ResizeObserver(() => this.position()).observe(textarea);
  }

  show(errors) {
    const text = this.textarea.value;
    this.errors = errors.map((e) => ({...e, line: e.line ?? yamlLineOf(text, e.field)}));
    this.textarea.setAttribute('aria-invalid', errors.length ? 'true' : 'false');
    replace(this.list, this.errors.map((e) => h('li', {class: 'field-error'},
      h('button', {type: 'button', class: 'link yaml-goto', onclick: () => this.goTo(e.line)},
        e.line ? `Line ${e.line}` : 'Config'),
      e.field ? [': ', h('code', {}, e.field)] : null, ` — ${e.message}`)));
    replace(this.overlay, this.errors.filter((e) => e.line).map((e) => h('div', {class: 'yaml-line-error',
      dataset: {line: e.line}}, `line ${e.line}${e.field ? ` · ${e.field}` : ''}: ${e.message}`)));
    this.renderGutter();
  }

  renderGutter() {
    const lines = this.textarea.value.split('\n').length;
    const bad = new Set(this.errors.map((e) => e.line));
    replace(this.gutter, Array.from({length: lines}, (_, i) =>
      [bad.has(i + 1) ? h('span', {class: 'bad'}, String(i + 1)) : String(i + 1), '\n']));
    this.position();
  }

  /** Line metrics come from the textarea's own style, so the marks follow its font and padding. */
  position() {
    const style = getComputedStyle(this.textarea);
    const lineHeight = parseFloat(style.lineHeight) || 18;
    const top = parseFloat(style.paddingTop) + parseFloat(style.borderTopWidth) - this.textarea.scrollTop;
    this.gutter.style.paddingTop = `${parseFloat(style.paddingTop) + parseFloat(style.borderTopWidth)}px`;
    this.gutter.style.lineHeight = `${lineHeight}px`;
    this.gutter.scrollTop = this.textarea.scrollTop;
    for (const el of this.overlay.children) {
      const y = top + (Number(el.dataset.line) - 1) * lineHeight;
      el.style.top = `${y}px`;
      el.style.minHeight = `${lineHeight}px`;
      el.hidden = y < 0 || y > this.textarea.clientHeight - lineHeight / 2;
    }
  }

  /** Put the cursor at the start of `line` and scroll it into the middle of the editor. */
  goTo(line) {
    if (!line) return;
    const lines = this.textarea.value.split('\n');
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    this.textarea.focus();
    this.textarea.setSelectionRange(start, start + lines[line - 1].length);
    const lineHeight = parseFloat(getComputedStyle(this.textarea).lineHeight) || 18;
    this.textarea.scrollTop = Math.max(0, (line - 1) * lineHeight - this.textarea.clientHeight / 2);
  }
}
