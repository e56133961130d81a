"""Options and rendering shared by the command modules (defined once)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from om3db.errors import ConfigError, StoreError

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
    """Print ``obj`` as strict JSON. A non-finite number (which JSON cannot hold: Python would print
    ``Infinity``) is refused with a ``StoreError`` naming the field and its instance / relation."""
    try:
        text = json.dumps(obj, indent=1, default=_jsonable, allow_nan=False)
    except ValueError:
        where, value = _non_finite(json.loads(json.dumps(obj, default=_jsonable)))
        raise StoreError(
            f"cannot print --json: {where} is {value}, which JSON cannot hold. The database holds a non-finite "
            "value there: run `om3db check` to list the damaged rows, then re-ingest (or remove) the scan"
        ) from None
    typer.echo(text)


def _non_finite(obj, path: str = "", context: tuple[str, ...] = ()) -> tuple[str, float] | None:
    """The first non-finite float in ``obj`` (plain JSON data) as ('<what holds it>: <field>', value); the
    field path is relative to the innermost object naming a scan, instance or relation."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return ", ".join([*context, path.lstrip(".") or "a value"]), obj
    if isinstance(obj, dict):
        named = dict(c.split(" ", 1) for c in context)  # what -> which, the innermost wins
        if isinstance(obj.get("scan"), str):
            named["scan"] = obj["scan"]
        for key in ("instance_id", "id"):
            if isinstance(obj.get(key), int) and not isinstance(obj.get(key), bool):
                named["instance"] = str(obj[key])
        if {"subject_id", "relation", "object_id"} <= obj.keys():
            named["relation"] = f"{obj['subject_id']} {obj['relation']} {obj['object_id']}"
        inner = tuple(f"{k} {v}" for k, v in named.items())
        path = "" if inner != context else path
        for k, v in obj.items():
            found = _non_finite(v, f"{path}.{k}", inner)
            if found:
                return found
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found = _non_finite(v, f"{path}[{i}]", context)
            if found:
                return found
    return None


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


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def local_path(value: str | None, option: str) -> Path | None:
    """A path option's value as a Path, refusing what ``Path()`` would silently turn into another path:
    an empty value (the current folder) and a URL (``http://a/b`` becomes ``http:/a/b``)."""
    if value is None:
        return None
    if not value.strip():
        raise ConfigError(f"{option} is empty: give a file or folder path ('.' for the current folder)")
    if _URL.match(value):
        raise ConfigError(
            f"{option} {value}: is a URL; om3db reads local files only. Download it and pass the local path"
        )
    return Path(value)
