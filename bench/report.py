"""Figures, targets and the two renderings of a run: a text table and JSON.

A figure is the median over rounds of one measured quantity of the event
bus, optionally beside the same quantity of a baseline measured in the same
rounds; its target is checked against the median (or against the ratio of
the two medians).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

MEASURED = "measured"
SKIPPED = "skipped"
FAILED = "failed"


@dataclass
class Target:
    """``kind``: ``min``/``max`` bound the figure itself, ``ratio_min``/
    ``ratio_max`` bound figure / baseline."""

    kind: str
    limit: float
    unit: str = ""

    @property
    def text(self) -> str:
        sign = "≥" if self.kind.endswith("min") else "≤"
        if self.kind.startswith("ratio"):
            return f"{sign} {self.limit:g}×"
        return f"{sign} {self.limit:,g} {self.unit}".rstrip()

    def check(self, value: Optional[float], ratio: Optional[float]) -> Optional[bool]:
        subject = ratio if self.kind.startswith("ratio") else value
        if subject is None:
            return None
        return subject >= self.limit if self.kind.endswith("min") else subject <= self.limit


def median(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Figure:
    name: str
    unit: str
    rounds: Sequence[Optional[float]]
    baseline_name: Optional[str] = None
    baseline_rounds: Optional[Sequence[Optional[float]]] = None
    target: Optional[Target] = None
    note: str = ""

    @property
    def value(self) -> Optional[float]:
        return median(self.rounds)

    @property
    def baseline(self) -> Optional[float]:
        return median(self.baseline_rounds) if self.baseline_rounds is not None else None

    @property
    def ratio(self) -> Optional[float]:
        v, b = self.value, self.baseline
        if v is None or not b:
            return None
        return v / b

    @property
    def passed(self) -> Optional[bool]:
        return self.target.check(self.value, self.ratio) if self.target else None

    def as_json(self) -> dict[str, Any]:
        return {
            "figure": self.name,
            "unit": self.unit,
            "eventbus": self.value,
            "eventbus_rounds": self.rounds,
            "baseline_name": self.baseline_name,
            "baseline": self.baseline,
            "baseline_rounds": self.baseline_rounds,
            "ratio": self.ratio,
            "target": self.target.text if self.target else None,
            "pass": self.passed,
            "note": self.note or None,
        }


@dataclass
class Result:
    name: str
    title: str
    status: str = MEASURED
    reason: Optional[str] = None
    figures: list[Figure] = field(default_factory=list)
    #: Reference C (Nchan) and other context: no target.
    references: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def skip(self, reason: str) -> "Result":
        self.status = SKIPPED
        self.reason = reason
        return self

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "status": self.status,
            "reason": self.reason,
            "figures": [f.as_json() for f in self.figures],
            "references": [f.as_json() for f in self.references],
            "notes": self.notes,
            "details": self.details,
            "seconds": round(self.seconds, 1),
        }


def _fmt(value: Optional[float], unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def table(results: list[Result]) -> str:
    """The run as a fixed-width text table, one line per figure."""
    header = ("scenario", "figure", "eventbus", "beside", "ratio", "target", "result")
    rows: list[tuple[str, ...]] = []
    for res in results:
        if res.status != MEASURED:
            rows.append((res.name, f"{res.status}: {res.reason}", "", "", "", "", ""))
            continue
        for fig in res.figures + res.references:
            beside = ""
            if fig.baseline_name:
                beside = f"{_fmt(fig.baseline, fig.unit)} ({fig.baseline_name})"
            ratio = f"{fig.ratio:.3g}×" if fig.ratio is not None else ""
            result = {True: "pass", False: "MISS", None: ""}[fig.passed]
            if fig.target is None and fig in res.references:
                result = "(ref)"
            rows.append((res.name, fig.name, _fmt(fig.value, fig.unit), beside, ratio,
                         fig.target.text if fig.target else "", result))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    widths[1] = min(widths[1], 60)

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(header), line(tuple("-" * w for w in widths))]
    out += [line(r) for r in rows]
    notes = [f"  {res.name}: {n}" for res in results for n in res.notes]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)
