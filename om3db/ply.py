"""The one PLY writer: binary little-endian, float xyz, optional uchar rgb, extra per-vertex columns
and triangle faces (what ScanNet's ``_vh_clean_2.ply`` holds). Vertex order is kept: mask and
ground-truth indices refer to it."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

__all__ = ["write_ply"]

_PLY_TYPES = {"<f4": "float", "<f8": "double", "<i4": "int", "<u4": "uint", "u1": "uchar", "<i2": "short"}


def write_ply(
    path: str | Path,
    points: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    extra: dict[str, np.ndarray] | None = None,
    faces: np.ndarray | None = None,
    comment: str | None = None,
) -> Path:
    """Write (N, 3) points, (N, 3) uint8 colours (properties red green blue), ``extra`` name -> (N,)
    columns (int32 / float32 / ...) and (F, 3) int triangle faces."""
    points = np.asarray(points)
    n = len(points)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    extra = {k: np.asarray(v) for k, v in (extra or {}).items()}
    fields += [(k, v.dtype.newbyteorder("<").str if v.dtype.itemsize > 1 else v.dtype.str) for k, v in extra.items()]
    vertex = np.empty(n, dtype=fields)
    for i, a in enumerate("xyz"):
        vertex[a] = points[:, i]
    if colors is not None:
        for i, a in enumerate(("red", "green", "blue")):
            vertex[a] = colors[:, i]
    for k, v in extra.items():
        vertex[k] = v
    lines = ["ply", "format binary_little_endian 1.0"]
    if comment:
        lines.append(f"comment {comment}")
    lines.append(f"element vertex {n}")
    lines += [f"property {_PLY_TYPES[dt]} {name}" for name, dt in fields]
    if faces is not None:
        lines += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    lines.append("end_header")
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(("\n".join(lines) + "\n").encode("ascii"))
        fh.write(vertex.tobytes())
        if faces is not None:
            fa = np.empty(len(faces), np.dtype([("n", "u1"), ("i", "<i4", 3)]))
            fa["n"], fa["i"] = 3, faces
            fh.write(fa.tobytes())
    return path


# -- checking a PLY's body against its header (open3d's reader pads a short file with zeros) ----------

_SIZES = {
    "char": "i1", "uchar": "u1", "int8": "i1", "uint8": "u1",
    "short": "i2", "ushort": "u2", "int16": "i2", "uint16": "u2",
    "int": "i4", "uint": "u4", "int32": "i4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_REEXPORT = "Re-export the point cloud"


def check_ply(path: str | Path) -> None:
    """Refuse a PLY whose body is shorter than its header says: fewer ASCII lines, or fewer bytes, than the
    header's elements (vertices, faces, ...) need. open3d would pad the missing vertices with (0, 0, 0) and
    drop the missing faces, printing only a warning. Raises :class:`~om3db.errors.ScanError` naming the file.
    A layout this check cannot size (an unknown property type) is left to open3d."""
    from .errors import ScanError

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
        size = path.stat().st_size
    except OSError as exc:
        raise ScanError(path, f"cannot read the PLY ({exc.strerror})", "Check the file") from exc
    end = head.find(b"end_header\n")
    if not head.startswith(b"ply") or end < 0:
        raise ScanError(path, "not a PLY file (no 'ply' magic or no end_header)", "Export the scene as a PLY")
    start = end + len(b"end_header\n")
    fmt, elements = _parse_header(path, head[:end].decode("ascii", errors="replace").splitlines())
    if elements is None:
        return
    if fmt == "ascii":
        _check_ascii(path, start, elements)
    elif fmt.startswith("binary"):
        _check_binary(path, start, size, elements, "<" if fmt == "binary_little_endian" else ">")


def _parse_header(path: Path, lines: list[str]):
    """(format, [(element, count, [(kind, type, list item type)])]); elements None when a type is unknown."""
    from .errors import ScanError

    fmt = next((ln.split()[1] for ln in lines if ln.startswith("format ") and len(ln.split()) > 1), "")
    elements: list[tuple[str, int, list]] = []
    vertex_names: set[str] | None = None
    sizable = True
    for ln in lines:
        parts = ln.split()
        if parts[:1] == ["element"]:
            try:
                count = int(parts[2])
            except (IndexError, ValueError):
                raise ScanError(path, f"PLY header line {ln!r} has no element count", "Fix the header") from None
            if count < 0:
                raise ScanError(path, f"PLY header line {ln!r} has a negative element count", "Fix the header")
            elements.append((parts[1], count, []))
            if parts[1] == "vertex":
                vertex_names = set()
        elif parts[:1] == ["property"] and elements:
            if elements[-1][0] == "vertex" and len(parts) >= 3 and parts[1] != "list":
                vertex_names.add(parts[2])
            if len(parts) >= 5 and parts[1] == "list" and parts[2] in _SIZES and parts[3] in _SIZES:
                elements[-1][2].append(("list", _SIZES[parts[2]], _SIZES[parts[3]]))
            elif len(parts) >= 3 and parts[1] in _SIZES:
                elements[-1][2].append(("scalar", _SIZES[parts[1]], None))
            else:
                sizable = False
    missing = [a for a in "xyz" if vertex_names is not None and a not in vertex_names]
    if missing:  # open3d would fill the missing coordinate from uninitialised memory, without a warning
        raise ScanError(
            path,
            f"PLY vertices have no {' or '.join(missing)} property",
            "Export the scene as a PLY with x, y, z vertex properties",
        )
    return fmt, elements if sizable else None


def _truncated(path: Path, what: str):
    from .errors import ScanError

    return ScanError(path, f"{what}: truncated or a wrong header", _REEXPORT)


def _noun(name: str, count: int) -> str:
    return {"vertex": f"{count} vertices", "face": f"{count} faces"}.get(name, f"{count} '{name}' elements")


def _check_ascii(path: Path, start: int, elements) -> None:
    # One line per element record (the PLY ASCII layout open3d's reader expects), each holding the values its
    # properties declare: open3d stops at the first value it cannot parse and pads the rest with zeros.
    need = sum(count for _, count, _ in elements)
    have = 0
    with open(path, "rb") as fh:
        fh.seek(start)
        lines = (line for line in fh if line.strip())
        for name, count, props in elements:
            done = 0
            while done < count:
                chunk = list(itertools.islice(lines, min(count - done, _ASCII_CHUNK)))
                have += len(chunk)
                if not chunk:
                    have += sum(1 for _ in lines)  # none left: have is every record line of the file
                    declared = " and ".join(_noun(n, c) for n, c, _ in elements if c)
                    raise _truncated(
                        path,
                        f"the PLY header declares {declared} ({need} lines) but the file holds only {have} lines "
                        "after the header",
                    )
                _check_ascii_records(path, name, done, chunk, props)
                done += len(chunk)


_ASCII_CHUNK = 65536
_PLY_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint", "f4": "float",
              "f8": "double"}  # fmt: skip


def _check_ascii_records(path: Path, name: str, first: int, lines: list[bytes], props) -> None:
    """Each line is one ``name`` record whose values parse as its properties' types (integers in range)."""
    layout = _layout(lines[0].split(), props)
    tokens = b" ".join(lines).split()
    if not isinstance(layout, str) and len(tokens) == len(lines) * len(layout[0]):
        # as many values as records the length of the first (a point cloud, a triangle mesh): the value stream
        # the PLY reader sees, checked column by column in numpy; a refusal is located (and where numpy is
        # stricter than the PLY reader, forgiven) below
        types, counts = layout
        table = np.array(tokens, dtype=bytes).reshape(len(lines), len(types))
        try:
            if all((table[:, j] == table[0, j]).all() for j in counts) and _columns_ok(table, types):
                return
        except (ValueError, OverflowError):
            pass
    rows = [line.split() for line in lines]
    for i, row in enumerate(rows):
        layout = _layout(row, props)
        if isinstance(layout, str):
            problem = layout
        else:
            bad = next(((tok, t) for tok, t in zip(row, layout[0], strict=True) if not _value_ok(tok, t)), None)
            if bad is None:
                continue
            problem = f"holds {bad[0][:20].decode('ascii', 'replace')!r} where a {_PLY_NAMES[bad[1]]} is declared"
        text = lines[i].strip()[:60].decode("ascii", "replace")
        raise _damaged(path, f"the PLY's {name} {first + i} ({text!r}) {problem}")


def _layout(row: list[bytes], props) -> tuple[list[str], list[int]] | str:
    """The type of each value of one ASCII record and the positions of its list lengths, or why the record
    does not hold the properties' values."""
    types: list[str] = []
    counts: list[int] = []
    for kind, t, item in props:
        if kind == "list":
            at = len(types)
            if at >= len(row) or not _value_ok(row[at], t) or int(row[at]) < 0:
                return "has no list length where the header declares a list"
            counts.append(at)
            types += [t] + [item] * int(row[at])
        else:
            types.append(t)
        if len(types) > len(row):
            return f"has {len(row)} values, fewer than the header's properties need"
    if len(types) != len(row):
        return f"has {len(row)} values where the header's properties need {len(types)}"
    return types, counts


def _columns_ok(table: np.ndarray, types: list[str]) -> bool:
    for j, t in enumerate(types):
        if t[0] == "f":  # the PLY reader refuses a value beyond the type's range (inf too), reads nan
            if np.abs(table[:, j].astype(np.float64)).max(initial=0.0) > float(np.finfo(np.dtype(t)).max):
                return False
        else:
            values = table[:, j].astype(np.int64)
            info = np.iinfo(np.dtype(t))
            if values.min() < info.min or values.max() > info.max:
                return False
    return True


def _value_ok(token: bytes, t: str) -> bool:
    try:
        if t[0] == "f":
            return not abs(float(token)) > float(np.finfo(np.dtype(t)).max)
        value = int(token)
    except ValueError:
        return False
    info = np.iinfo(np.dtype(t))
    return info.min <= value <= info.max


def _damaged(path: Path, what: str):
    from .errors import ScanError

    return ScanError(path, f"{what}: damaged (open3d would read zeros from there on)", _REEXPORT)


def _check_binary(path: Path, start: int, size: int, elements, order: str) -> None:
    body = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(size - start,)) if size > start else b""
    offset = 0
    for name, count, props in elements:
        if count == 0:
            continue
        if all(kind == "scalar" for kind, _, _ in props):
            need = count * sum(np.dtype(t).itemsize for _, t, _ in props)
        else:
            need = _list_element_bytes(body, offset, count, props, order)
        if need is None or offset + need > len(body):
            size_note = f" ({need} bytes from byte {offset} of the data)" if need is not None else ""
            raise _truncated(
                path,
                f"the PLY header declares {_noun(name, count)}{size_note} but the file holds only {len(body)} "
                "bytes after the header" + (f", which end inside the {name} list" if need is None else ""),
            )
        offset += need


def _list_element_bytes(body, offset: int, count: int, props, order: str) -> int | None:
    """Bytes taken by ``count`` records holding list properties, or None when the body ends first."""

    def record_end(pos: int) -> tuple[int | None, list[int]]:
        """(where the record at ``pos`` ends, its list lengths); None when its list lengths cannot be read."""
        lengths = []
        for kind, t, item in props:
            dt = np.dtype(t).newbyteorder(order)
            if kind == "list":
                if pos + dt.itemsize > len(body):
                    return None, lengths
                n = int(np.frombuffer(body[pos : pos + dt.itemsize], dtype=dt)[0])
                if n < 0:
                    return None, lengths
                lengths.append(n)
                pos += n * np.dtype(item).itemsize
            pos += dt.itemsize
        return pos, lengths

    # Fast path: every record's lists as long as the first record's (triangle meshes): check all counts at once.
    end, first = record_end(offset)
    if end is None:
        return None
    stride = end - offset
    if offset + count * stride <= len(body):
        pos, uniform, j = offset, True, 0
        for kind, t, item in props:
            dt = np.dtype(t).newbyteorder(order)
            if kind == "list":
                cols = np.ndarray((count, dt.itemsize), np.uint8, body, pos, (stride, 1)) if count else None
                if cols is not None and not np.all(cols.copy().view(dt).ravel() == first[j]):
                    uniform = False
                    break
                pos += dt.itemsize + first[j] * np.dtype(item).itemsize
                j += 1
            else:
                pos += dt.itemsize
        if uniform:
            return count * stride
    # General case: walk the records (polygon meshes with mixed list lengths).
    pos = offset
    for _ in range(count):
        pos, _ = record_end(pos)
        if pos is None or pos > len(body):
            return None
    return pos - offset
