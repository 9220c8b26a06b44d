// The run page's list of attempts: each launch of the trainer (the first start, then every resume), when it
// started and ended and why it ended. Rebuilt only when the Run record's attempts change.

import {h, replace, fmtDuration, statusBadge} from './util.js';

// With seconds: two attempts often start and end within the same minute.
const when = (t) => new Date(t * 1000).toLocaleString([], {month: 'short', day: 'numeric', hour: '2-digit',
  minute: '2-digit', second: '2-digit'});

export class AttemptsList {
  constructor(host) {
    this.body = h('div');
    this.section = h('section', {class: 'card', id: 'attempts', hidden: true},
      h('header', {class: 'card-head'}, h('h2', {}, 'Attempts')), this.body);
    host.append(this.section);
    this.key = null;
  }

  /** Show `run.attempts`; a run that has not started yet has none, and the card stays hidden. */
  update(run) {
    const attempts = run.attempts || [];
    const key = JSON.stringify([attempts, run.status]);
    if (key === this.key) return;
    this.key = key;
    this.section.hidden = !attempts.length;
    replace(this.body, h('div', {class: 'table-scroll'}, h('table', {class: 'table compact attempts-table'},
      h('thead', {}, h('tr', {}, ['#', 'Started', 'Ended', 'Ran for', 'How it ended'].map((t) => h('th', {scope: 'col'}, t)))),
      h('tbody', {}, attempts.map((a, i) => h('tr', {},
        h('td', {}, String(i + 1)),
        h('td', {}, when(a.started_at)),
        h('td', {}, a.ended_at ? when(a.ended_at) : '–'),
        h('td', {}, a.ended_at ? fmtDuration(a.ended_at - a.started_at) : '–'),
        h('td', {}, outcome(a, run))))))));
  }
}

function outcome(attempt, run) {
  if (attempt.ended_at == null) return statusBadge(run.status);
  const detail = [attempt.reason, attempt.exit_code != null && attempt.exit_code !== 0 ? `exit code ${attempt.exit_code}` : null]
    .filter(Boolean).join('; ');
  return [statusBadge(attempt.status), detail ? h('span', {class: 'muted'}, ` ${detail}`) : null];
}
