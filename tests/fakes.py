"""Test doubles and hand-built inputs (TEST-ONLY; nothing here is used by the library).

- :class:`FakeColorEncoder`: a deterministic encoder that maps an image to the histogram of its
  pixels' nearest named palette colour, and a text to the colour word it contains. With it a
  crop of the red object is nearest to the text "red", which checks end to end that the pipeline
  crops the right pixels without any real model.
- :func:`write_scan`: write a tiny scan folder in the ScanNet layout from arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from om3db.records import EncoderIdentity

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 40),
    "cyan": (40, 210, 220),
    "magenta": (210, 40, 200),
    "orange": (240, 140, 20),
    "white": (235, 235, 235),
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
}


def _palette() -> dict[str, tuple[int, int, int]]:
    """The synthetic generator's palette when it names one, else ours."""
    try:
        from om3db import synth

        pal = getattr(synth, "PALETTE", None)
        if isinstance(pal, dict) and pal:
            return {str(k): tuple(int(c) for c in v) for k, v in pal.items()}
    except ImportError:
        pass
    return dict(PALETTE)


class FakeColorEncoder:
    """FAKE encoder for tests: an image is the histogram of its pixels' nearest palette colour.

    ``encode_images``: every pixel votes for its nearest colour (up to a shading factor in
    [0.35, 1], as om3db.synth shades surfaces) among the palette plus three
    achromatic "background" colours (white, gray, black: walls and floors vote there); the vector is
    the vote fraction per colour, L2-normalised. ``encode_texts``: one-hot on the first palette word
    in the text (uniform when none). So the text "red" is most similar to the crops with the
    largest share of red pixels: the crops of the red object.
    """

    BACKGROUND = {"white": (230, 230, 230), "gray": (128, 128, 128), "black": (15, 15, 15)}

    def __init__(self, palette: dict[str, tuple[int, int, int]] | None = None) -> None:
        self.palette = dict(palette) if palette is not None else _palette()
        self.names = list(self.palette) + [n for n in self.BACKGROUND if n not in self.palette]
        colours = {**self.BACKGROUND, **self.palette}
        self._colors = np.array([colours[n] for n in self.names], dtype=np.float64)
        self.identity = EncoderIdentity(
            model_id="fake-color", revision="test", dim=len(self.names), preprocessing="nearest-palette histogram"
        )
        self.image_calls = 0
        self.images_seen = 0

    def _histogram(self, image: np.ndarray) -> np.ndarray:
        px = np.asarray(image, dtype=np.float64).reshape(-1, 3)
        # nearest palette colour up to the renderer's shading factor s in [0.35, 1] (om3db.synth)
        pp = (self._colors**2).sum(axis=1)
        dot = px @ self._colors.T
        s = np.clip(dot / pp, 0.35, 1.0)
        nearest = np.argmin(-2 * s * dot + s**2 * pp, axis=1)
        v = np.bincount(nearest, minlength=len(self.names)).astype(np.float64)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        self.image_calls += 1
        self.images_seen += len(images)
        if not images:
            return np.zeros((0, len(self.names)), dtype=np.float32)
        return np.stack([self._histogram(im) for im in images])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            words = t.lower().replace(",", " ").split()
            hit = next((w for w in words if w in self.palette), None)
            v = (
                np.ones(len(self.names), dtype=np.float32)
                if hit is None
                else np.eye(len(self.names), dtype=np.float32)[self.names.index(hit)]
            )
            out.append(v / np.linalg.norm(v))
        return np.stack(out) if out else np.zeros((0, len(self.names)), dtype=np.float32)


def write_scan(
    root: Path,
    *,
    points: np.ndarray,
    depths: list[np.ndarray],
    poses: list[np.ndarray],
    k_depth: np.ndarray,
    colors: list[np.ndarray] | None = None,
    k_color: np.ndarray | None = None,
    point_colors: np.ndarray | None = None,
    masks: np.ndarray | None = None,
) -> Path:
    """Write a scan folder: depth in metres (h, w) float -> uint16 mm PNG; poses camera-to-world."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for sub in ("color", "depth", "pose", "intrinsic"):
        (root / sub).mkdir(exist_ok=True)
    h, w = depths[0].shape
    if colors is None:
        colors = [np.full((h, w, 3), 128, np.uint8) for _ in depths]
    k_color = k_depth if k_color is None else k_color
    for i, (d, c, p) in enumerate(zip(depths, colors, poses, strict=True)):
        Image.fromarray(np.rint(np.asarray(d) * 1000).astype(np.uint16)).save(root / "depth" / f"{i}.png")
        Image.fromarray(np.asarray(c, np.uint8)).save(root / "color" / f"{i}.png")
        np.savetxt(root / "pose" / f"{i}.txt", p)
    for name, k in (("intrinsic_color.txt", k_color), ("intrinsic_depth.txt", k_depth)):
        k4 = np.eye(4)
        k4[:3, :3] = k
        np.savetxt(root / "intrinsic" / name, k4)
    pc = np.full((len(points), 3), 128, np.uint8) if point_colors is None else point_colors
    lines = [
        "ply",
        "format ascii 1.0",
        f"element vertex {len(points)}",
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
        "end_header",
    ]
    lines += [f"{x:.6f} {y:.6f} {z:.6f} {r} {g} {b}" for (x, y, z), (r, g, b) in zip(points, pc, strict=True)]
    (root / f"{root.name}.ply").write_text("\n".join(lines) + "\n")
    if masks is not None:
        np.save(root / f"{root.name}_masks.npy", masks.astype(np.float32))
    return root
