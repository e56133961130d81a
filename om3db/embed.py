"""SigLIP (image + text) and DINOv2 (image) encoders through transformers; unit float32 vectors.

Preprocessing is the checkpoint's own image processor (``preprocessor_config.json``) run with
transformers' PIL backend (``backend="pil"``), so it needs no torchvision and gives the same pixels
on every machine: SigLIP-SO400M resizes to 384x384 bicubic, mean/std 0.5; DINOv2 resizes the
shortest edge to 256 bicubic, centre-crops 224, ImageNet mean/std.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from om3db.errors import ConfigError, ModelLoadError
from om3db.hardware import CpuInfo, detect_cpu, resolve_device, resolve_dtype
from om3db.records import EncoderIdentity

__all__ = [
    "SiglipEncoder",
    "Dinov2Encoder",
    "load_siglip",
    "load_dinov2",
    "load_encoder",
    "ENCODERS",
    "MODEL_PRESETS",
    "model_preset",
    "compute_settings",
    "weights_hash",
    "resolve_dtype",
    "detect_cpu",
    "CpuInfo",
]

MODEL_PRESETS: dict[str, dict[str, str | None]] = {
    "full": {
        "siglip": "google/siglip-so400m-patch14-384",
        "dinov2": "facebook/dinov2-large",
        "sam": "facebook/sam-vit-huge",
    },
    "cpu": {
        "siglip": "google/siglip-base-patch16-224",
        "dinov2": "facebook/dinov2-small",
        "sam": None,
    },
}
"""Model sets by name. "full": OpenMask3D++'s models (SigLIP-SO400M/14@384, DINOv2-L/14, SAM ViT-H);
"cpu": what a CPU can afford on every crop (SigLIP-B/16@224, DINOv2-S/14, box crops without SAM),
measured ~25x cheaper per crop (docs/models.md, "Presets"). ``sam`` None means box crops."""

_RANDOM_HINT = "or write a random demo checkpoint with `om3db models random DIR`"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def weights_hash(model_dir: str | Path) -> str:
    """``sha256:<16 hex>`` over a local checkpoint's weight files (safetensors / bin, sorted by name)."""
    files = sorted(
        p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")
    )
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def _resolve_source(model: str | Path) -> tuple[str, bool]:
    """(what to pass to from_pretrained, is a local directory); a path-like string that is not a directory raises."""
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path), True
    looks_like_path = (
        isinstance(model, Path)
        or text.startswith((".", "/", "~"))
        or text.count("/") > 1
        or os.sep != "/"
        and os.sep in text
        or path.exists()
    )
    if looks_like_path:
        raise ModelLoadError(
            f"{text}: model directory not found. Pass an existing directory written by "
            f"save_pretrained, a Hugging Face hub id, {_RANDOM_HINT}"
        )
    return text, False


def _device_dtype(device, dtype):
    """(torch device, torch dtype, dtype name, reason) from the hardware policy (om3db.hardware)."""
    import torch

    dev = resolve_device(device)
    name, reason = resolve_dtype(dtype, dev)
    return dev, getattr(torch, name), name, reason


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' warnings and progress bars (library code never prints)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load(kind: str, model: str | Path, revision: str | None, loader):
    """Run ``loader(source, kwargs)``; turn transformers' OSError / ValueError into ModelLoadError."""
    source, local = _resolve_source(model)
    kwargs = {"local_files_only": True} if (local or _offline()) else {}
    if revision is not None and not local:
        kwargs["revision"] = revision
    try:
        with quiet_transformers():
            loaded = loader(source, kwargs)
    except Exception as exc:  # transformers / hub / safetensors raise many types; all mean "cannot load"
        if local:
            raise ModelLoadError(
                f"{source}: cannot load a {kind} checkpoint from this directory "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                f"Pass a directory written by save_pretrained (config.json, weights, processor "
                f"files), {_RANDOM_HINT}"
            ) from exc
        if _offline():
            raise ModelLoadError(
                f"{source}: weights cannot be downloaded (HF_HUB_OFFLINE=1) and are not in the "
                f"Hugging Face cache. Pass a local directory with the weights, run once online to "
                f"cache them, {_RANDOM_HINT}"
            ) from exc
        raise ModelLoadError(
            f"{source}: cannot load {kind} from the Hugging Face hub ({type(exc).__name__}). "
            f"Check the model id and network, pass a local directory, {_RANDOM_HINT}"
        ) from exc
    return source, local, loaded


def _identity_revision(source: str, local: bool, revision: str | None, config) -> str:
    if local:
        return weights_hash(source)
    return getattr(config, "_commit_hash", None) or revision or "main"


def _check_images(images: Sequence[np.ndarray]) -> None:
    for i, im in enumerate(images):
        if not (
            isinstance(im, np.ndarray)
            and im.ndim == 3
            and im.shape[2] == 3
            and im.dtype == np.uint8
            and im.shape[0] > 0
            and im.shape[1] > 0
        ):
            raise ConfigError(
                f"image {i} must be a non-empty (H, W, 3) uint8 array, got "
                f"{getattr(im, 'shape', None)} {getattr(im, 'dtype', type(im).__name__)}"
            )


def _unit(x) -> np.ndarray:
    """float32 rows of unit length (computed in float32 whatever the model dtype)."""
    import torch

    x = x.float()
    return torch.nn.functional.normalize(x, dim=-1).cpu().numpy().astype(np.float32)


def _describe_processor(proc) -> str:
    size = getattr(proc, "size", None) or {}
    crop = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
    parts = []
    if "shortest_edge" in size:
        parts.append(f"shortest edge {size['shortest_edge']}")
    elif size:
        parts.append(f"{size.get('height')}x{size.get('width')}")
    if crop:
        parts.append(f"centre crop {crop.get('height')}x{crop.get('width')}")
    resample = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}.get(
        int(getattr(proc, "resample", 3) or 3), str(getattr(proc, "resample", ""))
    )
    parts.append(resample)
    mean = [round(float(v), 3) for v in getattr(proc, "image_mean", [])]
    std = [round(float(v), 3) for v in getattr(proc, "image_std", [])]
    parts.append(f"mean {mean} std {std} (PIL)")
    return ", ".join(parts)


class _ImageEncoder:
    """Shared batching / device logic; subclasses implement `_features(pixel_values) -> (b, D)` tensors."""

    identity: EncoderIdentity
    """Model id, revision (hub) or weights hash (local dir), dim, "l2", preprocessing recipe."""

    dtype_reason: str = ""
    """Why the model runs in its dtype (om3db.hardware.resolve_dtype), e.g. "auto: bfloat16, the CPU ..."."""
    fused_linears: int = 0
    """Linear layers running through the fused oneDNN path (om3db.fused; 0 on GPU or when disabled)."""

    def __init__(self, model, processor, *, device, dtype, batch_size: int, dtype_reason: str = "", fuse=True) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.processor = processor
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.dtype_reason = dtype_reason
        if fuse:
            from om3db.fused import contiguous_embeddings, fuse_linears_for

            contiguous_embeddings(self.model)
            if self.device.type == "cpu":
                self.fused_linears = fuse_linears_for(self.model, dtype)

    @property
    def dtype_name(self) -> str:
        """ "float32" | "bfloat16" | "float16": the compute dtype (vectors are float32 whatever it is)."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def dim(self) -> int:
        return self.identity.dim

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, D) float32 unit rows for n (H, W, 3) uint8 RGB images, in ``batch_size`` batches."""
        import torch
        from PIL import Image

        _check_images(images)
        out = [np.zeros((0, self.dim), np.float32)]
        for s in range(0, len(images), self.batch_size):
            pil = [Image.fromarray(im) for im in images[s : s + self.batch_size]]
            pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                out.append(_unit(self._features(pixels.to(device=self.device, dtype=self.dtype))))
        return np.concatenate(out)


class SiglipEncoder(_ImageEncoder):
    """SigLIP image tower (``get_image_features``) and text tower (``get_text_features``), unit vectors."""

    def __init__(self, model, processor, tokenizer, *, model_id: str, revision: str, **kw) -> None:
        super().__init__(model, processor, **kw)
        self.tokenizer = tokenizer
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.identity = EncoderIdentity(
            model_id=model_id,
            revision=revision,
            dim=int(model.config.vision_config.hidden_size),
            normalization="l2",
            preprocessing=f"siglip image features; {_describe_processor(processor)}; text padded to {self.max_length}",
        )

    def _features(self, pixels):
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) float32 unit rows; texts are padded to the model's max length, as SigLIP was trained."""
        import torch

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ConfigError("encode_texts takes a sequence of strings (wrap a single text in a list)")
        for t in texts:  # the model reads max_length tokens: a longer text would be cut without a word
            n = len(self.tokenizer(t, truncation=False, verbose=False)["input_ids"])
            if n > self.max_length:
                raise ConfigError(
                    f"the text {t[:60]!r}{'...' if len(t) > 60 else ''} is {n} tokens; the "
                    f"{self.identity.model_id} text encoder reads at most {self.max_length}. Shorten it"
                )
        out = [np.zeros((0, self.dim), np.float32)]
        for s in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(
                list(texts[s : s + self.batch_size]),
                padding="max_length",
                max_length=self.max_length,
                truncation=True,
                return_tensors="pt",
            )
            with torch.inference_mode():
                out.append(_unit(_pooled(self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device)))))
        return np.concatenate(out)


class Dinov2Encoder(_ImageEncoder):
    """DINOv2 image features: concat(CLS token, mean of patch tokens) of the final layer norm, 2 x hidden."""

    def __init__(self, model, processor, *, model_id: str, revision: str, **kw) -> None:
        super().__init__(model, processor, **kw)
        self.identity = EncoderIdentity(
            model_id=model_id,
            revision=revision,
            dim=2 * int(model.config.hidden_size),
            normalization="l2",
            preprocessing=f"cls+meanpatch; {_describe_processor(processor)}",
        )

    def _features(self, pixels):
        import torch

        tokens = self.model(pixel_values=pixels).last_hidden_state
        return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)


def _pooled(output):
    """transformers 5 returns an output object (``.pooler_output``); 4.x returned the tensor."""
    return output if hasattr(output, "shape") else output.pooler_output


def load_siglip(
    model: str | Path = "google/siglip-so400m-patch14-384",
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype=None,
    batch_size: int = 32,
    fuse: bool = True,
) -> SiglipEncoder:
    """SigLIP from a hub id or a local ``save_pretrained`` directory (model, image processor, tokenizer).

    ``dtype``: None / "auto" picks it from the hardware (`resolve_dtype`: bfloat16 on CUDA and on CPUs
    with AMX / AVX512-BF16, float32 elsewhere); "float32" | "bfloat16" | "float16" force it (refused
    on a CPU that would only emulate it). ``fuse``: run linear layers through oneDNN on CPU (om3db.fused).
    """
    dev, dt, _, reason = _device_dtype(device, dtype)

    def loader(source, kw):
        from transformers import AutoImageProcessor, AutoTokenizer, SiglipModel

        net = SiglipModel.from_pretrained(source, **kw)
        return (
            net,
            AutoImageProcessor.from_pretrained(source, backend="pil", **kw),
            AutoTokenizer.from_pretrained(source, **kw),
        )

    source, local, (net, proc, tok) = _load("SigLIP", model, revision, loader)
    return SiglipEncoder(
        net,
        proc,
        tok,
        model_id=str(model),
        device=dev,
        dtype=dt,
        dtype_reason=reason,
        fuse=fuse,
        batch_size=batch_size,
        revision=_identity_revision(source, local, revision, net.config),
    )


def load_dinov2(
    model: str | Path = "facebook/dinov2-large",
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype=None,
    batch_size: int = 32,
    fuse: bool = True,
) -> Dinov2Encoder:
    """DINOv2 from a hub id or a local ``save_pretrained`` directory (model and image processor).

    ``dtype`` and ``fuse`` as in `load_siglip`.
    """
    dev, dt, _, reason = _device_dtype(device, dtype)

    def loader(source, kw):
        from transformers import AutoImageProcessor, Dinov2Model

        return Dinov2Model.from_pretrained(source, **kw), AutoImageProcessor.from_pretrained(
            source, backend="pil", **kw
        )

    source, local, (net, proc) = _load("DINOv2", model, revision, loader)
    return Dinov2Encoder(
        net,
        proc,
        model_id=str(model),
        device=dev,
        dtype=dt,
        dtype_reason=reason,
        fuse=fuse,
        batch_size=batch_size,
        revision=_identity_revision(source, local, revision, net.config),
    )


ENCODERS = {"siglip": load_siglip, "dinov2": load_dinov2}
"""Encoder kind -> loader."""


def model_preset(name: str) -> dict[str, str | None]:
    """The model ids of a preset in `MODEL_PRESETS` ("full" | "cpu"): {"siglip": id, "dinov2": id, "sam": id or None}."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return dict(MODEL_PRESETS[name])


def compute_settings(encoders: Mapping[str, object], sam=None) -> dict:
    """What ran in which dtype and why, for an ingest report / ``om3db info``; JSON-able.

    ``{"cpu": {...detect_cpu().to_dict()}, "siglip": {"dtype": "bfloat16", "reason": "auto: ...",
    "device": "cpu", "fused_linears": 329}, "dinov2": {...}, "sam": {...} or None}``; entries for objects
    without these attributes (fakes in tests) say ``"dtype": None``.
    """

    def entry(model) -> dict:
        return {
            "dtype": getattr(model, "dtype_name", None)
            or (model.dtype if isinstance(getattr(model, "dtype", None), str) else None),
            "reason": getattr(model, "dtype_reason", None),
            "device": str(getattr(model, "device", "")) or None,
            "fused": getattr(model, "fused_linears", getattr(model, "fused", None)),
        }

    out: dict = {"cpu": detect_cpu().to_dict()}
    out.update({name: entry(enc) for name, enc in encoders.items()})
    out["sam"] = None if sam is None else {**entry(sam), "model_type": getattr(sam, "model_type", None)}
    return out


def load_encoder(
    kind: Literal["siglip", "dinov2"], model: str | Path | None = None, *, preset: str | None = None, **kw
):
    """Load an encoder by kind ("siglip" | "dinov2").

    ``model`` defaults to the kind's model in ``preset`` (`MODEL_PRESETS`) when one is named, else to
    the kind's default hub id. Other keywords (device, dtype, batch_size, revision, fuse) go to the loader.
    """
    if kind not in ENCODERS:
        raise ConfigError(f"unknown encoder kind {kind!r}; choose one of {sorted(ENCODERS)}")
    if model is None and preset is not None:
        model = model_preset(preset)[kind]
    return ENCODERS[kind](model, **kw) if model is not None else ENCODERS[kind](**kw)
