"""Opening images safely: every image om3db reads (colour, depth, 2D masks, query photos) goes through
``open_image``, which reads only the header first and refuses an image larger than ``MAX_IMAGE_PIXELS``
before anything is decoded (a 20000x20000 PNG header costs 1.6 GB once decoded), by name and with
the limit, instead of PIL's DecompressionBombError or an exhausted memory."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import Om3dbError, ScanError

__all__ = ["MAX_IMAGE_PIXELS", "open_image", "DECODE_ERRORS", "DEPTH_MODES", "depth_mode_problem"]

MAX_IMAGE_PIXELS = int(os.environ.get("OM3DB_MAX_IMAGE_PIXELS", 64_000_000))
"""Largest image (width x height) om3db decodes: 64 MP, above every RGB-D camera's frames (a 48 MP
phone photo passes). ``$OM3DB_MAX_IMAGE_PIXELS`` changes it."""


def _default_error(path, problem: str, fix: str) -> Om3dbError:
    return ScanError(path, problem, fix)


def open_image(source, *, name: str | Path | None = None, error=_default_error, fix: str = ""):
    """``PIL.Image.open(source)`` with its size checked from the header.

    source: a path or a binary file object; name: how messages name it (default: the path);
    error(path, problem, fix) makes the exception (default ScanError)."""
    from PIL import Image, UnidentifiedImageError

    label = Path(name if name is not None else source if isinstance(source, (str, Path)) else "<image>")
    try:
        img = Image.open(source)
    except FileNotFoundError as exc:
        raise error(label, "file not found", fix) from exc
    except Image.DecompressionBombError as exc:
        raise error(label, f"image is more than om3db's limit of {MAX_IMAGE_PIXELS} pixels ({exc})", _BIG) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise error(label, f"not a readable image ({exc})", fix) from exc
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        img.close()
        raise error(label, f"image is {w}x{h} pixels, more than om3db's limit of {MAX_IMAGE_PIXELS}", _BIG)
    if w < 1 or h < 1:
        img.close()
        raise error(label, f"image is {w}x{h} pixels (empty)", fix)
    return img


DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
"""What PIL raises while it decodes the pixels of a damaged image (after ``open_image`` read its header): a
truncated or corrupt stream is an OSError, a broken PNG chunk a SyntaxError, a bad tile offset a ValueError."""

_BIG = "Resize it, or raise the limit with OM3DB_MAX_IMAGE_PIXELS if it is really meant"


DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")
"""PIL modes of a 16-bit depth image ("I" only when the file is a PNG: PNG stores at most 16 bits)."""


def depth_mode_problem(mode: str, fmt: str | None) -> str | None:
    """Why an image header (PIL ``mode``, ``format``) is not 16-bit depth, or None. PIL's mode "I" is 32-bit
    signed: from a PNG it holds 16-bit values, from a TIFF (even one named ``.png``) anything, negative too."""
    if mode not in DEPTH_MODES:
        return f"depth is not 16-bit (PIL mode {mode})"
    if mode == "I" and fmt != "PNG":
        return f"depth is a {fmt or 'non-PNG'} image of 32-bit integers (PIL mode I), not a 16-bit PNG"
    return None
