"""Damaged files that a fuzz of the readers found escaping as untyped errors (or read as silent garbage), each
now refused with an om3db error naming the file, or (derived index files) rebuilt from SQLite."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from om3db.errors import ScanError, StoreError
from om3db.ply import check_ply, write_ply
from om3db.scan import read_scan
from tests.test_scan import make_scan

# -- images: a PNG whose IDAT length byte is damaged makes PIL raise SyntaxError while decoding --------------


def _damaged_idat(path: Path) -> None:
    """Shorten the first IDAT chunk's length: the header still opens, the decoder then reads a chunk header
    from inside the compressed data (PIL: ``SyntaxError: broken PNG file``)."""
    raw = bytearray(path.read_bytes())
    at = raw.index(b"IDAT") - 4
    (n,) = struct.unpack(">I", raw[at : at + 4])
    raw[at : at + 4] = struct.pack(">I", n - 45)
    path.write_bytes(bytes(raw))


def _noise_png(path: Path, shape, dtype) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 250, shape).astype(dtype)).save(path)


@pytest.mark.parametrize("which", ["color", "depth"])
def test_png_with_a_damaged_chunk_length_is_a_scan_error_when_decoded(tmp_path, which):
    scan_dir = make_scan(tmp_path / "scene0000_00")
    path = scan_dir / which / "1.png"
    shape = Image.open(path).size[::-1]
    _noise_png(path, (*shape, 3) if which == "color" else shape, np.uint8 if which == "color" else np.uint16)
    _damaged_idat(path)
    frame = read_scan(scan_dir, masks=False).frame(1)  # headers are fine: decoding is lazy
    with pytest.raises(ScanError) as err:
        frame.color() if which == "color" else frame.depth()
    assert str(err.value).startswith(f"{path}: image is truncated or corrupt (broken PNG file")


def test_2d_mask_png_with_a_damaged_chunk_length_is_a_scan_error(tmp_path):
    from om3db.proposals.masks2d import DiskMasks

    scan_dir = make_scan(tmp_path / "scene0000_00")
    scan = read_scan(scan_dir, masks=False)
    (scan_dir / "masks2d").mkdir()
    path = scan_dir / "masks2d" / "1.png"
    _noise_png(path, (scan.depth_intrinsics.height, scan.depth_intrinsics.width), np.uint8)
    _damaged_idat(path)
    with pytest.raises(ScanError) as err:
        DiskMasks().masks(scan, scan.frame(1))
    assert str(err.value).startswith(f"{path}: not a readable image (broken PNG file")


# -- PLY: open3d stops at a value it cannot parse (or a missing coordinate) and fills the rest silently ------

_HEAD = (
    "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    "property uchar red\nproperty uchar green\nproperty uchar blue\nelement face 1\n"
    "property list uchar int vertex_indices\nend_header\n"
)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("0.6 -0.3 0.51161, 30 170 60", "holds '0.51161,' where a float is declared"),
        ("0.6 -0.355e44 0.3 30 170 60", "holds '-0.355e44' where a float is declared"),  # beyond float32
        ("0.6 -0.3 0.3 30.0 170 60", "holds '30.0' where a uchar is declared"),
        ("0.6 -0.3 0.3 30 170 600", "holds '600' where a uchar is declared"),
        ("0.6 -0.3", "has 2 values, fewer than the header's properties need"),
    ],
)
def test_ascii_ply_with_a_damaged_value_is_refused(tmp_path, line, problem):
    ply = tmp_path / "s.ply"
    ply.write_text(_HEAD + f"0 0 0 1 2 3\n{line}\n0 1 0 1 2 3\n3 0 1 2\n")
    with pytest.raises(ScanError) as err:
        check_ply(ply)
    assert str(err.value) == (
        f"{ply}: the PLY's vertex 1 ({line!r}) {problem}: damaged (open3d would read zeros from there on). "
        "Re-export the point cloud"
    )


def test_ascii_ply_with_a_damaged_face_is_refused_and_a_whole_one_passes(tmp_path):
    ply = tmp_path / "s.ply"
    body = "0 0 0 1 2 3\n1 0 0 1 2 3\n0 1 0 1 2 3\n"
    ply.write_text(_HEAD + body + "3 0 1 2\n")
    check_ply(ply)
    ply.write_text(_HEAD + body + "3 0 1\n")
    with pytest.raises(ScanError, match=r"the PLY's face 0 \('3 0 1'\) has 3 values, fewer than the header's"):
        check_ply(ply)


def test_ply_whose_z_property_name_is_damaged_is_refused(tmp_path):
    ply = tmp_path / "s.ply"
    write_ply(ply, np.eye(3, dtype=np.float32), np.zeros((3, 3), np.uint8))
    ply.write_bytes(ply.read_bytes().replace(b"property float z\n", b"property float q\n"))
    with pytest.raises(ScanError) as err:  # open3d fills z from uninitialised memory, without a warning
        check_ply(ply)
    assert str(err.value) == (
        f"{ply}: PLY vertices have no z property. Export the scene as a PLY with x, y, z vertex properties"
    )


# -- capture formats ---------------------------------------------------------------------------------------


def test_arkitscenes_trajectory_that_is_not_text(tiny_scan_path, tmp_path):
    from tests.test_captures import write_arkitscenes

    cap = write_arkitscenes(tiny_scan_path, tmp_path / "41069025")
    traj = cap / "lowres_wide.traj"
    traj.write_bytes(traj.read_bytes()[:4] + b"\x9f" + traj.read_bytes()[5:])
    with pytest.raises(ScanError) as err:
        read_scan(cap, format="arkitscenes", masks=False, ply=tiny_scan_path / f"{tiny_scan_path.name}.ply")
    assert str(err.value).startswith(f"{traj}: trajectory cannot be read as text ('utf-8' codec can't decode")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("v 0 0 0\nv 1 0\nv 0 1 0\n", 2),  # a vertex cut short: numpy's ragged-array ValueError
        ("v 0\nv 1\nv 2\n", 1),  # every vertex one number: an (N, 1) array, IndexError when written
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", 4),  # OBJ counts from 1
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 99999999999999999999\n", 4),  # past int64: OverflowError
    ],
)
def test_damaged_obj_records_are_refused(tmp_path, text, line):
    from om3db.fusion import read_obj

    obj = tmp_path / "export.obj"
    obj.write_text(text)
    with pytest.raises(ScanError, match=rf"^{obj}: line {line} is not a valid OBJ record"):
        read_obj(obj)


def test_obj_with_nan_colours_is_refused(tmp_path):
    from om3db.fusion import read_obj

    obj = tmp_path / "export.obj"
    obj.write_text("v 0 0 0 nan 0 0\nv 1 0 0 0 0 0\nv 0 1 0 0 0 0\nf 1 2 3\n")
    with pytest.raises(ScanError, match="mesh has non-finite vertex colours"):
        read_obj(obj)


# -- vector index files: a damaged header or body is rebuilt from SQLite on open, and named by check --------


def _saved_store(root: Path):
    from om3db.store import Store
    from tests.test_store import make_result

    s = Store(root)
    s.write_scan(make_result("a", 6), settings={})
    s.close()
    return root / "indexes" / "siglip.instance.faiss"


def _header_and_body(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[8:16])
    return json.loads(raw[16 : 16 + n]), raw[16 + n :]


def _write(path: Path, head: dict | bytes, body: bytes) -> None:
    head = head if isinstance(head, bytes) else json.dumps(head).encode()
    path.write_bytes(b"OM3DBIDX" + struct.pack("<Q", len(head)) + head + body)


def _renamed_generation(path: Path) -> None:
    head, body = _header_and_body(path)
    head["g_neration"] = head.pop("generation")
    _write(path, head, body)


def _huge_header_length(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[8:16] = struct.pack("<Q", 2**62)  # read() of this many bytes: MemoryError / OverflowError
    path.write_bytes(bytes(raw))


def _header_not_an_object(path: Path) -> None:
    _, body = _header_and_body(path)
    _write(path, b"[1, 2]", body)


def _faiss_dim_changed(path: Path) -> None:
    # FAISS reads an index whose d differs from the header's: its search asserts (AssertionError)
    head, body = _header_and_body(path)
    b = bytearray(body)
    at = 4  # after the IndexIDMap2 fourcc: int d
    (d,) = struct.unpack("<i", b[at : at + 4])
    assert d == head["dim"]
    b[at : at + 4] = struct.pack("<i", d * 2)
    _write(path, head, bytes(b))


@pytest.mark.parametrize(
    "damage", [_renamed_generation, _huge_header_length, _header_not_an_object, _faiss_dim_changed]
)
def test_damaged_index_file_is_named_by_check_and_rebuilt_on_open(tmp_path, damage):
    from om3db.store import Store, VectorIndex
    from tests.test_indexlog import assert_matches_sqlite

    root = tmp_path / "db"
    path = _saved_store(root)
    damage(path)
    if damage is not _renamed_generation:  # a header without a generation is a plain VectorIndex's (the
        # store's open then rebuilds it: it escaped there as a KeyError)
        with pytest.raises(StoreError) as err:
            VectorIndex.load(path)
        assert str(err.value).startswith(f"{path}: damaged vector index (")
    looking = Store(root, repair=False)
    (problem,) = [p for p in looking.check().problems if p.where == "index siglip.instance"]
    assert "reindex" in problem.repair
    assert looking.index("siglip", "instance").ntotal == 6  # rebuilt in memory
    looking.close()
    healed = Store(root)
    assert "siglip.instance" in " ".join(healed.rebuilt)
    assert_matches_sqlite(healed)
    assert not healed.check().problems
    healed.close()


def test_a_query_photo_with_a_damaged_chunk_is_refused_by_search_and_by_the_viewer(tmp_path):
    """The same broken PNG chunk in a query photo: `search --image` (Database) and the viewer's upload refuse
    it with a ConfigError naming it, not PIL's SyntaxError."""
    import om3db
    from om3db.errors import ConfigError
    from om3db.viewer.app import _decode_image
    from tests.fakes import FakeColorEncoder

    photo = tmp_path / "mug.png"
    _noise_png(photo, (40, 50, 3), np.uint8)
    _damaged_idat(photo)
    from om3db.ingest import IngestConfig
    from om3db.synth import write_scans

    (scan,) = write_scans(tmp_path / "scans", scans=1, seed=0)
    enc = FakeColorEncoder()
    with om3db.connect(ephemeral=True) as db:
        db.ingest(scan, config=IngestConfig(frame_step=5), siglip=enc, dinov2=False)
        with pytest.raises(ConfigError) as err:
            db.search(image=photo, encoder=enc, space="siglip")
    assert str(err.value).startswith(f"{photo}: the query image: cannot be decoded (broken PNG file")
    with pytest.raises(ConfigError, match="mug.png: not an image this page can read \\(SyntaxError\\)"):
        _decode_image("mug.png", photo.read_bytes())
