"""How every command shows images: one table and one JSON shape for `process`, `upload`
and `status`, so the same record reads the same wherever it is printed.

A `Row` is one image: its record, or (an upload still waiting when time ran out) only
the record id it will have. Rendition addresses come from a `url` function, because
only the caller knows where renditions are served (a CDN, or the directory written).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from functions.core.records import ImageRecord, Status

RenditionUrl = Callable[[str], str]  # rendition key -> where it can be fetched
HEADER = ("KEY", "STATUS", "SIZE", "MS", "RENDITIONS / ERROR")
TIMEOUT = "TIMEOUT"  # the status shown for an image whose record was not final in time


@dataclass(frozen=True)
class Row:
    key: str
    record_id: str
    record: ImageRecord | None  # None: no final record before the command stopped waiting
    file: Path | None = None  # the local file it came from, when there was one
    stale: bool = False  # PROCESSING past its lease (`functions.core.service.is_stale_claim`)

    @classmethod
    def of(cls, record: ImageRecord, *, file: Path | None = None, stale: bool = False) -> Row:
        return cls(record.source.key, record.id, record, file, stale)

    @property
    def status(self) -> str:
        return TIMEOUT if self.record is None else self.record.status.value

    @property
    def milliseconds(self) -> float:
        return round(sum(self.record.stage_ms.values()), 1) if self.record else 0.0


def print_rows(rows: Sequence[Row], url: RenditionUrl, out: TextIO, *, as_json: bool) -> None:
    if as_json:
        for row in rows:
            out.write(json.dumps(row_json(row, url), sort_keys=True) + "\n")
    else:
        print_table(rows, url, out)


def row_json(row: Row, url: RenditionUrl) -> dict[str, Any]:
    """The record's own fields, plus what the table shows beside them (ms, URLs, staleness)."""
    data: dict[str, Any] = {"key": row.key, "id": row.record_id, "status": row.status}
    if row.file is not None:
        data["file"] = str(row.file)
    if row.record is not None:
        data.update(row.record.to_dict())
        data.update(
            ms=row.milliseconds,
            urls={r.name: url(r.key) for r in row.record.renditions},
            stale=row.stale,
        )
    return data


def print_table(rows: Sequence[Row], url: RenditionUrl, out: TextIO) -> None:
    lines = [HEADER]
    for row in rows:
        record = row.record
        size = f"{record.image.width}x{record.image.height}" if record and record.image else "-"
        ms = f"{row.milliseconds:.0f}" if record else "-"
        details = _details(row, url)
        lines.append((row.key, row.status, size, ms, details[0]))
        lines.extend(("", "", "", "", more) for more in details[1:])
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    for line in lines:
        cells = [
            line[0].ljust(widths[0]),
            line[1].ljust(widths[1]),
            line[2].ljust(widths[2]),
            line[3].rjust(widths[3]),
            line[4],
        ]
        print("  ".join(cells).rstrip(), file=out)


def _details(row: Row, url: RenditionUrl) -> list[str]:
    record = row.record
    if record is None:
        return [f"no final record yet (record id {row.record_id})"]
    if record.error is not None:
        return [f"{record.error.code}: {record.error.message}"]
    if record.status is Status.PROCESSING:
        if row.stale:
            lease = record.lease_expires_at
            ended = f"its lease ended {lease}" if lease else "it has no lease"
            return [f"stale claim: {ended}; the next delivery of its event takes it over"]
        return [f"claimed, lease until {record.lease_expires_at}"]
    return _rendition_lines(record, url) or ["-"]


def _rendition_lines(record: ImageRecord, url: RenditionUrl) -> list[str]:
    width = max((len(r.name) for r in record.renditions), default=0)
    return [f"{r.name:<{width}}  {url(r.key)}" for r in record.renditions]
