"""Listings on the console: a rich table when stdout is a terminal, plain lines for scripts and pipes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def is_terminal() -> bool:
    """Whether stdout is a terminal a person reads (rather than a pipe or a file a script reads)."""
    return sys.stdout.isatty()


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], plain: Callable[[Sequence[str]], str]) -> None:
    """``rows`` under ``columns`` as a rich table on a terminal; otherwise one ``plain(row)`` line each.

    Args:
        columns: the column headings (the table's only).
        rows: one list of cell texts per row, in ``columns``' order.
        plain: the line a row prints as when stdout is not a terminal.
    """
    if not is_terminal():
        for row in rows:
            print(plain(row))
        return
    from rich.console import Console  # delayed: only a terminal needs rich (start-up time)
    from rich.table import Table

    table = Table()
    for at, column in enumerate(columns):  # the first column names the row: kept on one line; no cell is cut short
        table.add_column(column, no_wrap=at == 0, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(file=sys.stdout).print(table)
