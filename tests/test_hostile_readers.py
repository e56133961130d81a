"""Hostile input to the readers (scan folders, PLYs, capture formats, mask files): each a typed error naming
the file, the problem and the fix, raised while the scan is read, before any work is done or stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from om3db.errors import ScanError
from om3db.ply import write_ply
from om3db.scan import read_scan
from tests.test_scan import make_scan


@pytest.fixture
def scan_dir(tmp_path: Path) -> Path:
    return make_scan(tmp_path / "scene0000_00")


# -- 1. truncated PLYs: open3d pads missing vertices with (0, 0, 0) and drops missing faces ----------------


def test_ascii_ply_with_fewer_lines_than_its_header_says(scan_dir: Path) -> None:
    ply = scan_dir / "scene0000_00.ply"
    lines = ply.read_text().splitlines()
    ply.write_text("\n".join(lines[:-10]) + "\n")  # header says 357 vertices, 347 lines follow
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir)
    assert str(err.value) == (
        f"{ply}: the PLY header declares 357 vertices (357 lines) but the file holds only 347 lines after the "
        "header: truncated or a wrong header. Re-export the point cloud"
    )


def test_ascii_ply_missing_face_lines(tmp_path: Path) -> None:
    ply = tmp_path / "tri.ply"
    ply.write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "element face 2\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"
    )
    from om3db.ply import check_ply

    with pytest.raises(ScanError, match=r"declares 3 vertices and 2 faces \(5 lines\) but the file holds only 4"):
        check_ply(ply)


def _mesh_ply(path: Path) -> tuple[Path, int]:
    pts = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    faces = np.array([[i, i + 1, i + 2] for i in range(48)], np.int32)
    write_ply(path, pts, np.zeros((50, 3), np.uint8), faces=faces)
    raw = path.read_bytes()
    return path, raw.find(b"end_header\n") + len(b"end_header\n")


def test_binary_ply_with_its_face_list_cut_off(scan_dir: Path) -> None:
    ply, start = _mesh_ply(scan_dir / "scene0000_00.ply")
    raw = ply.read_bytes()
    ply.write_bytes(raw[: start + 50 * 15 + 7 * 13 + 5])  # vertices complete, 7.4 of 48 faces
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir)
    assert str(err.value) == (
        f"{ply}: the PLY header declares 48 faces but the file holds only {50 * 15 + 7 * 13 + 5} bytes after the "
        "header, which end inside the face list: truncated or a wrong header. Re-export the point cloud"
    )


def test_binary_ply_with_truncated_vertices(scan_dir: Path) -> None:
    ply, start = _mesh_ply(scan_dir / "scene0000_00.ply")
    ply.write_bytes(ply.read_bytes()[: start + 40 * 15])
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir)
    assert str(err.value) == (
        f"{ply}: the PLY header declares 50 vertices (750 bytes from byte 0 of the data) but the file holds only "
        "600 bytes after the header: truncated or a wrong header. Re-export the point cloud"
    )


def test_complete_binary_meshes_pass_with_mixed_polygons(tmp_path: Path) -> None:
    from om3db.ply import check_ply

    ply, _ = _mesh_ply(tmp_path / "whole.ply")
    check_ply(ply)  # uniform triangles: the fast path
    header = (
        "ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
        "property float z\nelement face 2\nproperty list uchar int vertex_indices\nend_header\n"
    )
    verts = np.eye(4, 3, dtype="<f4").tobytes()
    tri = bytes([3]) + np.array([0, 1, 2], "<i4").tobytes()
    quad = bytes([4]) + np.array([0, 1, 2, 3], "<i4").tobytes()
    mixed = tmp_path / "mixed.ply"
    mixed.write_bytes(header.encode() + verts + tri + quad)
    check_ply(mixed)  # a triangle then a quad: walked record by record
    mixed.write_bytes(header.encode() + verts + tri + quad[:-1])
    with pytest.raises(ScanError, match="which end inside the face list"):
        check_ply(mixed)


# -- 13. fusion when no frame has depth ------------------------------------------------------------------


def test_fusion_with_no_depth_in_any_frame(scan_dir: Path, tmp_path: Path) -> None:
    (scan_dir / "scene0000_00.ply").unlink()
    for p in (scan_dir / "depth").iterdir():
        Image.fromarray(np.zeros((30, 40), np.uint16)).save(p)
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir, fused_dir=tmp_path / "fused")
    assert str(err.value) == (
        f"{scan_dir / 'color' / '0.png'}: fusing 4 frames gave no surface (4 had no depth in [0.1, 5.0] m). "
        "Check the depth units and poses, or widen FusionConfig.depth_min / depth_max"
    )
    assert not (tmp_path / "fused").exists() or not any((tmp_path / "fused").iterdir())


# -- 3. convert: skipped frames found by integer id; what was written is read back before success -------------


def test_convert_copies_a_skipped_frame_whose_colour_name_is_padded(scan_dir: Path, tmp_path: Path) -> None:
    from om3db.captures.convert import convert_capture

    for p in list((scan_dir / "color").iterdir()):
        p.rename(p.with_name(f"{int(p.stem):06d}{p.suffix}"))  # colour 000002.png, depth 2.png: both frame 2
    (scan_dir / "pose" / "2.txt").write_text("nan nan nan nan\n" * 4)
    result = convert_capture(scan_dir, tmp_path / "out")
    assert result.frames_written == 4 and [s["frame_id"] for s in result.frames_skipped] == [2]
    for sub in ("color", "depth", "pose"):
        assert sorted(int(p.stem) for p in (tmp_path / "out" / sub).iterdir()) == [0, 1, 2, 3], sub
    back = read_scan(tmp_path / "out")
    assert back.frames_on_disk == 4 and [s.frame_id for s in back.skipped] == [2]


def test_convert_refuses_to_report_a_folder_that_does_not_read_back(scan_dir, tmp_path, monkeypatch) -> None:
    from om3db.captures import convert

    (scan_dir / "pose" / "2.txt").write_text("nan nan nan nan\n" * 4)
    monkeypatch.setattr(convert, "_copy_skipped", lambda scan, out, sensor: len(scan.skipped))  # writes nothing
    with pytest.raises(ScanError) as err:
        convert.convert_capture(scan_dir, tmp_path / "out")
    assert str(err.value) == (
        f"{tmp_path / 'out'}: the converted folder does not match the capture (4 frames written; files found: "
        "color/ 3, pose/ 3, depth/ 3; 3 frames and 357 points read back, 357 points read). "
        "Report this as an om3db bug, with the capture"
    )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.converting-*"))
