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


# -- shared capture fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory, tiny_scan_path) -> Path:
    """The tiny synthetic scan cut to 4 frames."""
    import shutil

    root = tmp_path_factory.mktemp("small") / "synth"
    shutil.copytree(tiny_scan_path, root, ignore=shutil.ignore_patterns("*_masks.pt", "masks2d"))
    for sub in ("color", "depth", "pose"):
        for p in (root / sub).iterdir():
            if int(p.stem) >= 4:
                p.unlink()
    return root


@pytest.fixture()
def r3d(small_scan, tmp_path) -> Path:
    from tests.test_captures import write_record3d

    return write_record3d(small_scan, tmp_path / "rec.r3d")


def _edit_r3d_meta(path: Path, fn=None, raw: bytes | None = None) -> Path:
    import json
    import zipfile

    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    if raw is None:
        meta = json.loads(members["metadata"])
        fn(meta)
        raw = json.dumps(meta).encode()
    members["metadata"] = raw
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return path


# -- 4. intrinsics that are not a plain pinhole K -----------------------------------------------------------


def test_intrinsics_with_skew_and_a_scaled_bottom_row(scan_dir: Path) -> None:
    path = scan_dir / "intrinsic" / "intrinsic_color.txt"
    path.write_text("292.5 80.0 160.9 0\n0 291.3 119.9 0\n0 0 7 0\n0 0 0 1\n")
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir)
    assert str(err.value) == (
        f"{path}: camera matrix is not a pinhole [[fx 0 cx] [0 fy cy] [0 0 1]]: K[0,1] (skew) is 80, expected 0; "
        "K[2,2] is 7, expected 1. Write the camera as 4 rows: fx 0 cx 0 / 0 fy cy 0 / 0 0 1 0 / 0 0 0 1 (om3db "
        "reads a pinhole camera without skew)"
    )


def test_transposed_depth_intrinsics(scan_dir: Path) -> None:
    path = scan_dir / "intrinsic" / "intrinsic_depth.txt"
    path.write_text("30 0 0 0\n0 32 0 0\n19.5 14.5 1 0\n0 0 0 1\n")
    with pytest.raises(ScanError, match=r"intrinsic_depth.txt: camera matrix is not a pinhole .*K\[2,0\] is 19.5"):
        read_scan(scan_dir)


def test_record3d_k_written_row_major(r3d: Path) -> None:
    def row_major(meta):
        k = meta["K"]  # column-major: [fx 0 0 0 fy 0 cx cy 1]
        meta["K"] = [k[0], k[3], k[6], k[1], k[4], k[7], k[2], k[5], k[8]]

    _edit_r3d_meta(r3d, row_major)
    with pytest.raises(ScanError) as err:
        read_scan(r3d)
    msg = str(err.value)
    assert msg.startswith(
        f"{r3d}/metadata: K: camera matrix is not a pinhole [[fx 0 cx] [0 fy cy] [0 0 1]]: K[2,0] is "
    )
    assert "K may be transposed: cx, cy are in its bottom row (K must be column-major). Re-export" in msg


# -- 5. depth that is not a 16-bit PNG ------------------------------------------------------------------------


def test_int32_tiff_named_png_is_refused_as_depth(scan_dir: Path) -> None:
    path = scan_dir / "depth" / "1.png"
    Image.fromarray(np.full((30, 40), -2000, np.int32)).save(path, format="TIFF")
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir)
    assert str(err.value) == (
        f"{path}: depth is a TIFF image of 32-bit integers (PIL mode I), not a 16-bit PNG. "
        "Depth must be a single-channel 16-bit PNG (mode I;16) holding depth_scale units per metre"
    )


def test_depth_replaced_after_reading_is_refused_when_decoded(scan_dir: Path) -> None:
    scan = read_scan(scan_dir)
    path = scan_dir / "depth" / "2.png"
    Image.fromarray(np.full((30, 40), -2000, np.int32)).save(path, format="TIFF")
    with pytest.raises(ScanError, match=r"2.png: depth is a TIFF image of 32-bit integers"):
        scan.frame(2).depth()


def test_capture_depth_int32_tiff_is_refused(small_scan, tmp_path) -> None:
    from tests.test_captures import write_nerfstudio

    ns = write_nerfstudio(small_scan, tmp_path / "ns")
    first = ns / "depth" / "frame_00000.png"
    Image.fromarray(np.full((120, 160), 7, np.int32)).save(first, format="TIFF")
    with pytest.raises(ScanError) as err:
        read_scan(ns)
    assert err.value.path == first
    assert "depth is a TIFF image of 32-bit integers (PIL mode I), not a 16-bit PNG: its units are unknown" in str(
        err.value
    )


# -- 7. frame ids beyond int32 ------------------------------------------------------------------------------


@pytest.mark.parametrize("big", ["3000000000", "100000000000000000000000"])
def test_frame_id_above_int32_is_refused_while_reading(scan_dir: Path, big: str) -> None:
    for sub, ext in (("color", "png"), ("depth", "png"), ("pose", "txt")):
        (scan_dir / sub / f"3.{ext}").rename(scan_dir / sub / f"{big}.{ext}")
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir)
    assert str(err.value).endswith(
        f"{big}.png: frame id {big} is larger than om3db's limit of 2147483647 (2^31-1). "
        "Renumber the frames (a frame's id is the integer in its file name)"
    )


def test_nerfstudio_timestamp_names_fall_back_to_positions() -> None:
    from om3db.captures.base import trailing_ids

    assert trailing_ids(["a/frame_3.png", "a/frame_7.png"]) == [3, 7]
    assert trailing_ids(["a/1690000000123.png", "a/1690000000456.png"]) is None  # ids = positions


def test_scanner3d_duplicate_frame_ids(small_scan, tmp_path) -> None:
    from tests.test_captures import write_scanner3d

    cap = write_scanner3d(small_scan, tmp_path / "s3d")
    (cap / "frame_1.json").write_bytes((cap / "frame_00001.json").read_bytes())
    with pytest.raises(ScanError, match=r"frame_0*1\.json: frame id 1 appears twice \(also frame_0*1\.json\)"):
        read_scan(cap)


# -- 10. Record3D metadata and archive members -------------------------------------------------------------


def test_record3d_metadata_not_an_object(r3d: Path) -> None:
    _edit_r3d_meta(r3d, raw=b'"K w h dw dh poses"')
    with pytest.raises(ScanError) as err:
        read_scan(r3d)
    assert str(err.value) == (
        f"{r3d}/metadata: is a JSON str, not an object with K, w, h, dw, dh, poses. "
        "Re-export the recording from Record3D (Share > Export > .r3d)"
    )


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda m: m.__setitem__("K", ["a"] * 9), "K is not a numeric matrix (['a', 'a', 'a', 'a', 'a'"),
        (
            lambda m: m.__setitem__("K", [[1, 2, 3], [4, 5], [6]]),
            "K is not a numeric matrix ([[1, 2, 3], [4, 5], [6]])",
        ),
        (lambda m: m.__setitem__("K", [1.0] * 8), "K has 8 numbers, expected 3x3"),
        (lambda m: m["poses"].__setitem__(1, ["x"] * 7), "poses[1] (qx qy qz qw tx ty tz) is not a numeric matrix"),
        (lambda m: m["poses"].__setitem__(1, [0, 0, 0, 1, 0, 0]), "poses[1] (qx qy qz qw tx ty tz) has 6 numbers"),
        (lambda m: m.__setitem__("w", "wide"), "w is not a number ('wide')"),
        (lambda m: m.__setitem__("h", 10**400), "h is not a number (1000000000"),
        (lambda m: m.__setitem__("dw", 2.5), "dw is not a whole number of pixels >= 1 (2.5)"),
    ],
)
def test_record3d_metadata_values(r3d: Path, edit, problem: str) -> None:
    _edit_r3d_meta(r3d, edit)
    with pytest.raises(ScanError) as err:
        read_scan(r3d)
    assert str(err.value).startswith(f"{r3d}/metadata: {problem}")


def _patch_member_header(path: Path, member: bytes, field: str, value: int) -> None:
    import struct

    b = bytearray(path.read_bytes())
    # (signature, flag offset, compression offset, name length offset, name offset): local and central headers
    for sig, off_flag, off_method, off_nlen, off_name in (
        (b"PK\x03\x04", 6, 8, 26, 30),
        (b"PK\x01\x02", 8, 10, 28, 46),
    ):
        i = 0
        while (i := b.find(sig, i)) >= 0:
            n = struct.unpack_from("<H", b, i + off_nlen)[0]
            if bytes(b[i + off_name : i + off_name + n]) == member:
                off = off_flag if field == "flag" else off_method
                old = struct.unpack_from("<H", b, i + off)[0]
                struct.pack_into("<H", b, i + off, old | value if field == "flag" else value)
            i += 4
    path.write_bytes(bytes(b))


def test_record3d_encrypted_member(r3d: Path) -> None:
    _patch_member_header(r3d, b"rgbd/2.depth", "flag", 1)
    with pytest.raises(ScanError) as err:
        read_scan(r3d)
    assert str(err.value).startswith(f"{r3d}/rgbd/2.depth: cannot be read from the archive (File 'rgbd/2.depth' is")
    assert "encrypted" in str(err.value)


def test_record3d_unsupported_compression(r3d: Path) -> None:
    _patch_member_header(r3d, b"metadata", "method", 99)
    with pytest.raises(ScanError) as err:
        read_scan(r3d)
    assert str(err.value).startswith(f"{r3d}/metadata: cannot be read from the archive (")


# -- 14. a format forced on a folder that is not one ---------------------------------------------------------


def test_scanner3d_forced_on_a_scannet_folder(scan_dir: Path) -> None:
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir, format="scanner3d")
    assert str(err.value) == (
        f"{scan_dir}: no frame_<i>.json files: not a 3D Scanner App 'All Data' export. "
        "Export the scan from 3D Scanner App with 'All Data'"
    )


def test_check_sizes_without_frames_raises_not_asserts() -> None:
    from om3db.captures.base import check_sizes

    with pytest.raises(ScanError, match="the capture has no frames"):
        check_sizes([], True, depth_fix="")


# -- 6 and 11. mask files: non-finite scores, non-numeric dtypes, tensors numpy cannot take directly ---------------


def _masks(n_points: int = 357, n_masks: int = 3) -> np.ndarray:
    m = np.zeros((n_points, n_masks), bool)
    for j in range(n_masks):
        m[j * 10 : j * 10 + 20, j] = True
    return m


@pytest.mark.parametrize(
    ("scores", "shown"), [(np.array([0.5, np.nan, 0.1]), "nan"), (np.array([np.inf, 0.5, 0.1]), "inf"),
                          (np.array([0.5, 0.2, 1e300]), "1e+300")]
)  # fmt: skip
def test_non_finite_mask_scores(tmp_path: Path, scores, shown: str) -> None:
    from om3db.masks import load_masks

    path = tmp_path / "s_masks.npz"
    np.savez(path, masks=_masks(), scores=scores)
    bad = int(np.flatnonzero(~np.isfinite(scores.astype(np.float32)))[0])
    with pytest.raises(ScanError) as err:
        load_masks(path, num_points=357)
    assert str(err.value) == (
        f"{path}: scores must be finite: 1 of 3 are nan or inf (or beyond float32), e.g. scores[{bad}] = {shown}. "
        "Store one finite score per mask under 'scores'"
    )


def test_non_numeric_scores(tmp_path: Path) -> None:
    from om3db.errors import MaskFileError
    from om3db.masks import load_masks

    path = tmp_path / "s_masks.npz"
    np.savez(path, masks=_masks(), scores=np.array(["0.5", "nan", "1"]))
    with pytest.raises(MaskFileError, match=r"scores have dtype <U3, not numbers"):
        load_masks(path, num_points=357)


@pytest.mark.parametrize(
    ("array", "dtype"),
    [
        (_masks().astype(int).astype(str), "<U21"),
        (np.zeros((357, 2), dtype=[("a", "f4"), ("b", "i4")]), "[('a', '<f4'), ('b', '<i4')]"),
        (_masks().astype(np.complex64), "complex64"),
    ],
)
def test_mask_npy_that_is_not_numbers(tmp_path: Path, array, dtype: str) -> None:
    from om3db.errors import MaskFileError
    from om3db.masks import load_masks

    path = tmp_path / "m_masks.npy"
    np.save(path, array)
    with pytest.raises(MaskFileError) as err:
        load_masks(path, num_points=357)
    assert str(err.value).startswith(f"{path}: masks have dtype {dtype}, not numbers (0/1). ")


@pytest.mark.parametrize("kind", ["bf16", "grad", "sparse", "int8"])
def test_mask_tensors_are_read(tmp_path: Path, kind: str) -> None:
    import torch

    from om3db.masks import load_masks

    t = torch.from_numpy(_masks().astype(np.float32))
    t = {"bf16": t.bfloat16(), "grad": t.requires_grad_(), "sparse": t.to_sparse(), "int8": t.to(torch.int8)}[kind]
    path = tmp_path / "m_masks.pt"
    torch.save(t, path)
    masks, scores = load_masks(path, num_points=357)
    assert masks.dtype == bool and (masks == _masks()).all() and scores is None


def test_meta_tensor_masks_are_refused(tmp_path: Path) -> None:
    import torch

    from om3db.errors import MaskFileError
    from om3db.masks import load_masks

    path = tmp_path / "m_masks.pt"
    torch.save(torch.empty((357, 3), device="meta"), path)
    with pytest.raises(MaskFileError) as err:
        load_masks(path, num_points=357)
    assert str(err.value).startswith(f"{path}: holds a meta tensor (a shape without data). ")


# -- 9. nerfstudio transforms.json values of the wrong type ---------------------------------------------------

_NS_FIX = "Re-export transforms.json (nerfstudio format: fl_x, fl_y, cx, cy, w, h and frames[].transform_matrix)"


@pytest.fixture()
def ns(small_scan, tmp_path) -> Path:
    from tests.test_captures import write_nerfstudio

    return write_nerfstudio(small_scan, tmp_path / "ns")


def _edit_ns(ns: Path, fn) -> Path:
    import json

    path = ns / "transforms.json"
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize(
    ("edit", "problem", "fix"),
    [
        (lambda m: m["frames"][0].update(file_path=5), "frames[0].file_path is not a file path (5)", None),
        (lambda m: m["frames"][1].update(depth_file_path=None), "frames[1].depth_file_path is not a file path (None)",
         None),
        (lambda m: m.update(ply_file_path=["a.ply"]), "ply_file_path is not a file path (['a.ply'])", None),
        (lambda m: m.update(k1="none"), "k1 is not a number ('none')", _NS_FIX),
        (lambda m: m.update(k1=float("nan")), "k1 is not finite (nan)", _NS_FIX),
        (lambda m: m.update(p2=True), "p2 is not a number (True)", _NS_FIX),
        (lambda m: m.update(w=10**400), "w is not a number (1" + "0" * 56 + "...)",
         _NS_FIX),
        (lambda m: m.update(h=120.5), "h is not a whole number of pixels >= 1 (120.5)", _NS_FIX),
        (lambda m: m["frames"][0].update(transform_matrix=[["1"] * 4] * 4),
         "frames[0] transform_matrix is not a numeric matrix ([['1', '1', '1', '1'], ['1', '1', '1', '1'], ['1', '1', '...)",
         _NS_FIX),
    ],
)  # fmt: skip
def test_nerfstudio_values_of_the_wrong_type(ns: Path, edit, problem: str, fix: str | None) -> None:
    path = _edit_ns(ns, edit)
    with pytest.raises(ScanError) as err:
        read_scan(ns)
    fix = fix or "Write file paths as strings relative to transforms.json"
    assert str(err.value) == f"{path}: {problem}. {fix}"


def test_nerfstudio_json_nested_too_deeply(ns: Path) -> None:
    path = ns / "transforms.json"
    text = path.read_text()
    path.write_text(text[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ScanError) as err:
        read_scan(ns)
    assert str(err.value) == f"{path}: is not valid JSON (nested too deeply to parse). {_NS_FIX}"


# -- 12. masks2d: a decompression bomb header, the same frame twice ---------------------------------------------


def _masks2d_scan(tmp_path: Path):
    from types import SimpleNamespace

    from om3db.camera import Intrinsics

    intr = Intrinsics(30.0, 30.0, 19.5, 14.5, 40, 30)
    (tmp_path / "masks2d").mkdir()
    return SimpleNamespace(path=tmp_path, color_intrinsics=intr, depth_intrinsics=intr)


def test_masks2d_png_whose_header_claims_400_megapixels(tmp_path: Path) -> None:
    import struct
    import zlib
    from types import SimpleNamespace

    from om3db.proposals.masks2d import DiskMasks

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    scan = _masks2d_scan(tmp_path)
    path = tmp_path / "masks2d" / "5.png"
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)))
    with pytest.raises(ScanError) as err:
        DiskMasks().masks(scan, SimpleNamespace(frame_id=5))
    assert err.value.path == path
    assert "image is more than om3db's limit of" in str(err.value) or "pixels, more than om3db's limit" in str(
        err.value
    )


def test_masks2d_same_frame_twice(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from om3db.proposals.masks2d import DiskMasks

    scan = _masks2d_scan(tmp_path)
    for name in ("5.png", "005.png", "15.png"):
        Image.fromarray(np.ones((30, 40), np.uint8)).save(tmp_path / "masks2d" / name)
    with pytest.raises(ScanError) as err:
        DiskMasks().masks(scan, SimpleNamespace(frame_id=5))
    assert str(err.value) == (
        f"{tmp_path / 'masks2d' / '5.png'}: 2D masks of frame 5 appear twice (also 005.png). Keep one file per frame id"
    )
    (tmp_path / "masks2d" / "005.png").unlink()
    assert DiskMasks().masks(scan, SimpleNamespace(frame_id=5)).sum() == 1200
