"""The console tables are printed on: the terminal's own width, or a wide one when piped.

rich falls back to 80 columns when stdout is not a terminal, which would cut or squeeze the
tables' columns in a log file or a pipe; a pipe has no width, so tables keep all their columns.
"""

from __future__ import annotations

from rich.console import Console

PIPE_WIDTH = 200


def table_console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=PIPE_WIDTH)
