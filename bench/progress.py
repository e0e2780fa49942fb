"""Rich progress for sweeps. Rendering happens between samples only (auto_refresh off), so no
background thread competes with the timed decode loop for a core."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichProgress:
    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, auto_refresh=False, transient=False,
        )
        self.all = None
        self.cur = None
        self.cell_line = None  # executors: cells queued / running (where) / done / failed

    def message(self, text: str) -> None:
        self.progress.console.print(f"[dim]{text}[/dim]")
        self.progress.refresh()

    def start(self, total_rows: int, done_rows: int) -> None:
        self.progress.start()
        self.all = self.progress.add_task("all samples", total=total_rows, completed=done_rows,
                                          info=f"{done_rows} already done" if done_rows else "")
        self.progress.refresh()

    def cell(self, model: str, suite: str, n_rows: int) -> None:
        if self.cur is not None:
            self.progress.remove_task(self.cur)
        self.cur = self.progress.add_task(f"{model} / {suite}", total=n_rows, info="")
        self.progress.refresh()

    def row_done(self, row: dict[str, Any]) -> None:
        tps = row.get("tokens_per_s") or 0.0
        info = f"{row['method']}: {tps:6.1f} tok/s"
        if self.cur is not None:
            self.progress.update(self.cur, advance=1, info=info)
        self.progress.update(self.all, advance=1, info="" if self.cur is not None else info)
        self.progress.refresh()

    def cells(self, queued: int, running: dict[str, str], done: int, failed: int) -> None:
        where = "; ".join(f"{label} @ {w}" for label, w in running.items())
        text = (f"groups: {queued} queued, {len(running)} running, {done} done, "
                + (f"[red]{failed} failed[/red]" if failed else "0 failed") + (f"  [dim]{where}[/dim]" if where else ""))
        if self.cell_line is None:
            self.cell_line = self.progress.add_task(text, total=None, info="")
        else:
            self.progress.update(self.cell_line, description=text)
        self.progress.refresh()

    def stop(self) -> None:
        self.progress.stop()
