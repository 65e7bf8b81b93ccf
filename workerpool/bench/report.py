"""The bench's results: rows with goals, the text table, ``benchmarks.md`` and the plot."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from workerpool.bench.png import bar_chart

FIGURES = {1: "Idle latency", 2: "Throughput", 3: "Pool isolation", 4: "Fan-out", 5: "Scale",
           6: "Reference points", 7: "Trust boundaries", 8: "Pool operations",
           9: "Peers", 10: "Sentinel", 11: "Console"}
HEADERS = ["FIGURE", "METRIC", "MEASURED", "REFERENCE", "RATIO", "GOAL", "MET"]


@dataclass(frozen=True)
class Goal:
    """A bound from the issue, on a row's ratio (default) or on its measured value."""

    op: str  # "<=" or ">="
    limit: float
    on_ratio: bool = True

    def met(self, x: float) -> bool:
        return x <= self.limit if self.op == "<=" else x >= self.limit

    def budget(self, x: float) -> float:
        """Share of the allowed bound used: at most 1.0 when the goal is met."""
        if self.op == "<=":
            return x / self.limit
        return self.limit / x if x > 0 else float("inf")


@dataclass(frozen=True)
class Row:
    figure: int
    metric: str
    unit: str
    value: float | None
    reference: float | None = None
    ratio: float | None = None
    goal: Goal | None = None
    note: str = ""

    @property
    def judged(self) -> float | None:
        if self.goal is None:
            return None
        return self.ratio if self.goal.on_ratio else self.value

    @property
    def met(self) -> bool | None:
        judged = self.judged
        return None if judged is None or self.goal is None else self.goal.met(judged)

    def cells(self) -> list[str]:
        goal = ""
        if self.goal is not None:
            bound = f"{self.goal.limit:g}x" if self.goal.on_ratio else fmt(self.goal.limit,
                                                                           self.unit)
            goal = f"{'ratio ' if self.goal.on_ratio else ''}{self.goal.op} {bound}"
        met = {None: "", True: "yes", False: "NO"}[self.met]
        value = fmt(self.value, self.unit) if self.value is not None else self.note
        return [self.metric, value, fmt(self.reference, self.unit),
                "" if self.ratio is None else f"{self.ratio:.2f}x", goal, met]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit in ("steps/s", "jobs/s", "ops/s", "B", "steps"):
        number = f"{value:,.0f}"
    elif unit == "%":
        return f"{value:.1f}%"
    elif abs(value) >= 100:
        number = f"{value:.0f}"
    elif abs(value) >= 10:
        number = f"{value:.1f}"
    else:
        number = f"{value:.2f}"
    return f"{number} {unit}".strip()


@dataclass
class Report:
    plan: str
    runs: int
    machine: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def table_rows(self) -> list[list[str]]:
        out, last = [], 0
        for row in sorted(self.rows, key=lambda r: r.figure):
            label = f"{row.figure} {FIGURES[row.figure]}" if row.figure != last else ""
            last = row.figure
            out.append([label, *row.cells()])
        return out

    def goals(self) -> list[Row]:
        return [row for row in self.rows if row.met is not None]


def text_table(report: Report) -> str:
    cells = [HEADERS, *report.table_rows()]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine(redis_version: str) -> dict[str, str]:
    """What the figures were measured on."""
    import celery
    import redis

    model, memory = "unknown", "unknown"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo")
                     .read_text().splitlines() if line.startswith("model name"))
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                   .splitlines() if line.startswith("MemTotal"))
        memory = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {"date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "workerpool": _revision(), "CPU": model, "cores": str(os.cpu_count()), "memory": memory,
            "OS": f"{platform.system()} {platform.release()}",
            "Python": platform.python_version(), "Celery": celery.__version__,
            "Redis server": redis_version, "redis-py": redis.__version__,
            "load average at start": load_average()}


def load_average() -> str:
    """1, 5 and 15 minute load: other work on the machine shows here."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _revision() -> str:
    """The package version and, in a git checkout, the commit (marked when modified)."""
    from importlib.metadata import version

    here = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return version("workerpool")
    return f"{version('workerpool')} ({commit.stdout.strip()})"


def markdown(report: Report, image: str) -> str:
    command = {"full": "", "quick": " --quick"}.get(report.plan, f" --plan {report.plan}")
    md = ["# Benchmarks", "",
          f"Generated by `workerpool bench{command}` (each figure is the median of "
          f"{report.runs} run(s); the whole run took {report.seconds:.0f} s). Regenerate "
          "with `make bench`.", "",
          "## Machine", "", "| | |", "| --- | --- |"]
    md += [f"| {key} | {value} |" for key, value in report.machine.items()]
    md += ["", "## Results", "", "| " + " | ".join(HEADERS) + " |",
           "|" + "---|" * len(HEADERS)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
           for row in report.table_rows()]
    met = [r for r in report.goals() if r.met]
    missed = [r for r in report.goals() if not r.met]
    md += ["", f"Goals met: {len(met)} of {len(report.goals())}."
           + (" Missed: " + "; ".join(f"{FIGURES[r.figure].lower()}: {r.metric}"
                                      for r in missed) + "." if missed else ""),
           "", f"![Share of each goal's bound used]({image})", "",
           "The plot shows, for each goal, the share of its bound that was used: a bar "
           "that ends left of the line met its goal.", "", "## How it is measured", ""]
    md += [f"- {note}" for note in report.notes]
    return "\n".join(md) + "\n"


def write(report: Report, directory: Path) -> tuple[Path, Path]:
    """Write ``benchmarks.md`` and ``benchmarks.png`` into *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    bars = []
    for row in report.goals():
        judged = row.judged
        assert judged is not None and row.goal is not None
        shown = f"{row.ratio:.2f}X" if row.goal.on_ratio else fmt(judged, row.unit)
        bars.append((f"{row.figure} {row.metric.replace('`', '')}", row.goal.budget(judged),
                     shown))
    image = directory / "benchmarks.png"
    image.write_bytes(bar_chart("WORKERPOOL BENCH: SHARE OF EACH GOAL USED", bars))
    doc = directory / "benchmarks.md"
    doc.write_text(markdown(report, image.name))
    return doc, image
