"""A run's metric series as one CSV download (GET /api/runs/{id}/metrics.csv), streamed page by page.

Long ("tidy") form, one row per stored value: `step,time,metric,value`, ordered by metric name, then step, then
seq, exactly the points the charts have (a resume's superseded points were dropped at ingest). A value that
was NaN or infinite is an empty `value` cell: the store keeps it as null and does not tell the two apart.
Every page of PAGE_ROWS rows is one short read session (store.series_rows_after, a keyset on (step, seq)), so
a 1,000,000-point series never sits in memory and no transaction stays open while the client downloads.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from typing import TYPE_CHECKING, Any, Iterator, Sequence
from urllib.parse import quote

from backend import store
from backend.errors import Invalid
from backend.models import Run
from backend.services import metrics

if TYPE_CHECKING:
    from backend.services.container import Services

HEADER = "step,time,metric,value\n"
PAGE_ROWS = 10_000  # ~0.5 MB of CSV a page: ~10 MB of server memory, as fast as larger pages
MAX_STEM_BYTES = 120  # of the run name in the file name (UTF-8; file names stop at 255 bytes)
_NOT_IN_NAME = re.compile(r"(?:[^\w.-]|_)+")  # \w: letters and digits of any script, and _
_NOT_ASCII_NAME = re.compile(r"[^A-Za-z0-9.-]+")


def export_names(run: Run, values: list[str] | None) -> list[str]:
    """The series an export writes, sorted: those `values` name (as GET /series reads `names`), or all of the
    run's when none is named; Invalid (422, field `names`) names any the run did not log."""
    wanted = metrics.wanted_names(values, run.metric_names)
    if not wanted:
        return sorted(run.metric_names)
    known = set(run.metric_names)
    unknown = [name for name in dict.fromkeys(wanted) if name not in known]
    if unknown:
        has = f"its metrics are {_some(run.metric_names)}" if run.metric_names else "it has logged none yet"
        raise Invalid.one("names", f"run {run.id!r} has no metric {_some(unknown)}; {has} "
                                   f"(GET /api/runs/{run.id}/metrics lists them)")
    return sorted(set(wanted))


def _some(names: list[str], shown: int = 20) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(name) for name in names[:shown]) + more


def csv_chunks(svc: "Services", run_id: str, names: list[str]) -> Iterator[bytes]:
    """The CSV of the series `names` of `run_id`: the header, then one chunk per keyset page of a series."""
    yield HEADER.encode()
    for name in names:
        yield from _series_chunks(svc, run_id, name)


def _series_chunks(svc: "Services", run_id: str, name: str) -> Iterator[bytes]:
    metric = csv_field(name)
    after = (-1, -1)  # steps and seqs are >= 0
    while True:
        rows = svc.read(store.series_rows_after, run_id, name, after, PAGE_ROWS)
        if rows:
            yield _csv_rows(rows, metric)
        if len(rows) < PAGE_ROWS:
            return
        after = (rows[-1][0], rows[-1][1])


def _csv_rows(rows: Sequence[Any], metric: str) -> bytes:
    # f-strings rather than csv.writer: half the time, same text (str of a float is its shortest round trip).
    return "".join([f"{step},{time!r},{metric},{'' if value is None else repr(value)}\n"
                    for step, _seq, time, value in rows]).encode()


def csv_field(text: str) -> str:
    """`text` as one CSV field: quoted (quotes doubled) when it holds a comma, quote or line break."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([text])  # the writer quotes what its line terminator holds
    return out.getvalue()[:-2]


def attachment(run: Run) -> str:
    """The Content-Disposition of a run's export: `<run name>-<id>-metrics.csv`, the name cut to letters, digits,
    `.`, `_` and `-`: ASCII in `filename` (accents dropped), any script in `filename*` when that differs."""
    run_id = _file_stem(run.id, _NOT_ASCII_NAME) or "run"
    ascii_name = f"{_file_stem(_without_accents(run.name), _NOT_ASCII_NAME) or 'run'}-{run_id}-metrics.csv"
    unicode_name = f"{_file_stem(run.name, _NOT_IN_NAME) or 'run'}-{run_id}-metrics.csv"
    header = f'attachment; filename="{ascii_name}"'
    return header if unicode_name == ascii_name else f"{header}; filename*=UTF-8''{quote(unicode_name, safe='')}"


def _without_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _file_stem(text: str, unsafe: re.Pattern) -> str:
    # Runs of other characters become one `_`; no leading dot (a hidden file) or dash (an option to a shell tool).
    return unsafe.sub("_", text).encode()[:MAX_STEM_BYTES].decode("utf-8", "ignore").strip("._-")
