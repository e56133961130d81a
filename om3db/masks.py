"""Class-agnostic 3D mask files: OpenMask3D's ``<scan>_masks.pt`` (a torch-saved numpy array,
points x masks), ``.npy`` or ``.npz``. Pickles are loaded without executing code."""

from __future__ import annotations

import threading
import tokenize
import zipfile
from pathlib import Path

import numpy as np

from .errors import MaskFileError

__all__ = ["find_mask_file", "load_masks", "save_masks", "mask_files"]

_SAVE_FIX = "Save the masks as a points x masks 0/1 array with numpy.save (.npy)"


def find_mask_file(root: Path) -> Path | None:
    """``<name>_masks.pt|.npy|.npz`` in the scan folder, else the only ``*_masks.*`` there, else None."""
    for ext in (".pt", ".npy", ".npz"):
        p = root / f"{root.name}_masks{ext}"
        if p.is_file():
            return p
    found = sorted(p for p in root.glob("*_masks.*") if p.suffix in (".pt", ".npy", ".npz"))
    if len(found) > 1:
        raise MaskFileError(root, f"several mask files: {[p.name for p in found]}", "Pass masks=PATH to choose one")
    return found[0] if found else None


def mask_files(root: Path) -> list[Path]:
    """Every ``*_masks.pt|.npy|.npz`` in a scan folder, sorted (to report the ones not used)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*_masks.*") if p.suffix in (".pt", ".npy", ".npz") and p.is_file())


_TORCH_LOAD_LOCK = threading.Lock()


def _load_torch(path: Path) -> object:
    import pickle

    import torch

    # numpy arrays in a weights_only pickle need these reconstructors allow-listed; nothing else runs.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    allowed = [np.ndarray, np.dtype, _reconstruct]
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "bool", "uint8", "int32", "int64")]
    try:
        # safe_globals edits one process-wide list: two threads loading at once could each remove the other's
        # entries and refuse a valid file as malicious; one load at a time keeps the list intact
        with _TORCH_LOAD_LOCK, torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False; name only the blocked global instead.
        blocked = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln), "unsupported pickle content")
        raise MaskFileError(
            path,
            f"refused to load: the pickle asks to run code or build objects that are not arrays ({blocked})",
            _SAVE_FIX,
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise MaskFileError(path, f"not a readable torch file ({exc})", _SAVE_FIX) from exc
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler runs no code: any other failure is damage
        # (bytes flipped inside the pickle fail as IndexError, struct.error, LookupError (an encoding), ...)
        raise MaskFileError(
            path, f"not a readable torch file (damaged: {type(exc).__name__}: {exc})", _SAVE_FIX
        ) from exc


def load_masks(path: str | Path, *, num_points: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a mask file. Returns (N, M) bool masks and (M,) float32 scores (None when absent)."""
    path = Path(path)
    if not path.is_file():
        raise MaskFileError(path, "mask file not found", _SAVE_FIX)
    if path.stat().st_size == 0:
        raise MaskFileError(path, "mask file is empty (0 bytes)", _SAVE_FIX)
    scores = None
    try:
        if path.suffix == ".pt":
            arr = _tensor_to_numpy(path, _load_torch(path))
        elif path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = "masks" if "masks" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise MaskFileError(
                        path, f"npz holds {keys} and no 'masks' array", "Store the masks under the key 'masks'"
                    )
                arr = z[key]
                if "scores" in keys:
                    scores = z["scores"]
        else:
            raise MaskFileError(path, f"unknown mask file type {path.suffix!r}", "Use .pt, .npy or .npz")
    except (ValueError, SyntaxError, tokenize.TokenError) as exc:  # an object array refused, or a corrupt
        # header (numpy tokenizes and literal_evals the .npy header dict: damage there is a syntax error)
        raise MaskFileError(path, f"cannot be read as a plain array ({exc})", _SAVE_FIX) from exc
    except (EOFError, OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:  # empty, truncated,
        # or a zip member whose header was damaged into an unsupported method / version / encryption
        raise MaskFileError(
            path, f"mask file is truncated or damaged ({exc or type(exc).__name__})", _SAVE_FIX
        ) from exc
    if not isinstance(arr, np.ndarray):
        raise MaskFileError(path, f"holds a {type(arr).__name__}, not an array", _SAVE_FIX)
    if arr.dtype.kind not in "biuf":  # strings, structured records, complex, datetimes: not 0/1 values
        raise MaskFileError(path, f"masks have dtype {arr.dtype}, not numbers (0/1)", _SAVE_FIX)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise MaskFileError(path, f"masks must be 2-D (points x masks), got shape {arr.shape}", _SAVE_FIX)
    if arr.shape[0] != num_points:
        hint = " (it looks transposed: masks x points)" if arr.shape[1] == num_points else ""
        raise MaskFileError(
            path,
            f"mask rows ({arr.shape[0]}) do not match the point count of the scene PLY ({num_points}){hint}",
            "Masks must have one row per PLY vertex, in file order",
        )
    if arr.dtype != bool:
        if not np.all(np.isfinite(arr)) or not np.isin(arr, (0, 1)).all():
            raise MaskFileError(path, "masks must hold only 0 and 1", _SAVE_FIX)
        arr = arr.astype(bool)
    if scores is not None:
        scores = _scores(path, scores, arr.shape[1])
    return arr, scores


def _scores(path: Path, raw: np.ndarray, num_masks: int) -> np.ndarray:
    """(M,) float32 finite proposal scores, or MaskFileError (a NaN score cannot be stored or ranked)."""
    fix = "Store one finite score per mask under 'scores'"
    if raw.dtype.kind not in "biuf":
        raise MaskFileError(path, f"scores have dtype {raw.dtype}, not numbers", fix)
    if raw.shape != (num_masks,):
        raise MaskFileError(
            path, f"scores shape {raw.shape} does not match {num_masks} masks", "Store one score per mask"
        )
    with np.errstate(over="ignore"):
        scores = raw.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise MaskFileError(
            path,
            f"scores must be finite: {bad.size} of {num_masks} are nan or inf (or beyond float32), "
            f"e.g. scores[{bad[0]}] = {raw[bad[0]]}",
            fix,
        )
    return scores


def _tensor_to_numpy(path: Path, obj):
    """A loaded torch tensor as a numpy array (detached, dense, bf16 as float32); anything else unchanged."""
    import torch

    if not isinstance(obj, torch.Tensor):
        return obj
    if obj.is_meta:
        raise MaskFileError(path, "holds a meta tensor (a shape without data)", _SAVE_FIX)
    try:
        t = obj.detach()
        if t.layout != torch.strided:  # sparse COO / CSR
            t = t.to_dense()
        if t.is_quantized or t.is_complex():
            raise MaskFileError(path, f"holds a {t.dtype} tensor, not 0/1 numbers", _SAVE_FIX)
        try:
            return t.cpu().numpy()
        except TypeError:  # a dtype numpy lacks (bfloat16, float8): its 0/1 values are exact in float32
            return t.float().cpu().numpy()
    except (RuntimeError, TypeError) as exc:
        raise MaskFileError(path, f"holds a tensor that cannot be read as an array ({exc})", _SAVE_FIX) from exc


def save_masks(path: str | Path, masks: np.ndarray) -> None:
    """Write masks in OpenMask3D's format: ``torch.save`` of a float16 points x masks numpy array."""
    import torch

    torch.save(np.ascontiguousarray(masks, dtype=np.float16), Path(path))
