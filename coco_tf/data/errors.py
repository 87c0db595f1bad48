"""Errors and skip accounting for data readers.

Every reader reports a bad line as ``<file>:<line>: <what is wrong>``, or, when
``data.on_bad_line=skip``, counts it in a :class:`SkipReport` that the trainer
prints at the end of loading. Nothing is dropped silently.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Dict, List, Optional


class DataError(ValueError):
    """Bad input data; the message names the file and, where there is one, the line."""

    def __init__(self, path: str, message: str, line: Optional[int] = None):
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


@dataclasses.dataclass
class SkipReport:
    """Counts of skipped lines per (file, reason), with the first few line numbers."""

    counts: Dict[str, int] = dataclasses.field(default_factory=collections.Counter)
    examples: Dict[str, List[int]] = dataclasses.field(default_factory=dict)

    def add(self, path: str, line: Optional[int], reason: str) -> None:
        key = f"{path}: {reason}"
        self.counts[key] += 1
        if line is not None:
            self.examples.setdefault(key, [])
            if len(self.examples[key]) < 5:
                self.examples[key].append(line)

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))

    def summary(self) -> str:
        if not self.total:
            return "no lines skipped"
        rows = []
        for key, n in sorted(self.counts.items()):
            lines = self.examples.get(key)
            at = f" (lines {', '.join(map(str, lines))}{', ...' if n > len(lines) else ''})" if lines else ""
            rows.append(f"  skipped {n}: {key}{at}")
        return f"{self.total} input lines skipped:\n" + "\n".join(rows)


class LineHandler:
    """Raises a DataError or records a skip, according to ``on_bad_line``."""

    def __init__(self, on_bad_line: str = "error", report: Optional[SkipReport] = None):
        if on_bad_line not in ("error", "skip"):
            raise ValueError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
        self.on_bad_line = on_bad_line
        self.report = report if report is not None else SkipReport()

    def bad(self, path: str, line: Optional[int], reason: str, detail: str = "") -> None:
        if self.on_bad_line == "error":
            raise DataError(path, reason + (f": {detail}" if detail else ""), line)
        self.report.add(path, line, reason)

    def good_lines(self, lines, path: str):
        """Yields ``(line_number, text)`` from :func:`read_lines`, reporting bad UTF-8 and empty lines."""
        for n, line in lines:
            if isinstance(line, DecodeFailure):
                self.bad(path, n, "not UTF-8", line)
            elif not line.strip():
                self.bad(path, n, "empty line")
            else:
                yield n, line


def read_lines(path: str):
    """Yields ``(line_number, text)`` for a UTF-8 text file (``.gz`` transparently).

    Bad UTF-8 is reported with its line number rather than as a decode error
    from deep inside Python's I/O layer.
    """
    import gzip
    import os

    if not os.path.exists(path):
        raise DataError(path, "file not found")
    opener = gzip.open if path.endswith(".gz") else open
    n = 0
    with opener(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, DecodeFailure(f"invalid UTF-8 at byte {e.start}")
                continue
            yield n, text.rstrip("\r\n")
    if n == 0:
        raise DataError(path, "file is empty")


class DecodeFailure(str):
    """Marker yielded by :func:`read_lines` in place of a line that is not UTF-8."""
