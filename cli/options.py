"""Options and rendering shared by the command modules (defined once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

DbOpt = Annotated[
    Optional[str],  # a folder or a PostgreSQL URL: om3db.connect() tells them apart (a Path would mangle a URL)
    typer.Option(
        "--db",
        envvar="OM3DB_DB",
        show_envvar=True,
        help="Database folder (created on first ingest), or a PostgreSQL URL postgresql://USER:PASSWORD@HOST:PORT/DB "
        "(index files then in $OM3DB_VECTORS, else ~/.cache/om3db/HOST-PORT-DB). Default: ./om3db-data",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=1, default=_jsonable))


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    Console(width=160).print(t)
