"""SAM without torchvision; one image encoding, many prompts.

Two checkpoint formats give the same `SamPredictor` interface (`load_sam`): original
segment-anything state dicts (``sam_vit_h_4b8939.pth``, here) and transformers ``SamModel``
directories / hub ids (``facebook/sam-vit-base``, SlimSAM; om3db.sam_hf).

segment-anything's package ``__init__`` imports torchvision (only for its image resize and the
automatic mask generator's NMS); its ``modeling`` subpackage is pure torch. We load that subpackage
from the installed segment-anything under a private module name, so neither ``segment_anything`` nor
``torchvision`` is touched in ``sys.modules`` (a fake torchvision would break transformers), and do
ResizeLongestSide ourselves with PIL bilinear, which is what segment-anything's
``ResizeLongestSide.apply_image`` does (torchvision's resize of a PIL image).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from om3db.errors import ConfigError, ModelLoadError

__all__ = [
    "SamConfig",
    "SAM_CONFIGS",
    "TINY_SAM_CONFIG",
    "SamPredictor",
    "load_sam",
    "build_sam_model",
    "infer_sam_config",
]

_PRIVATE = "_om3db_segment_anything_modeling"


@dataclass(frozen=True)
class SamConfig:
    """Architecture of a segment-anything ``Sam`` (defaults: ViT-H)."""

    encoder_embed_dim: int = 1280
    """Image encoder ViT width."""
    encoder_depth: int = 32
    """Number of ViT blocks."""
    encoder_num_heads: int = 16
    """Attention heads per block."""
    encoder_global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    """Blocks with global (not windowed) attention."""
    image_size: int = 1024
    """Square input side in pixels (longest image side is resized to it)."""
    window_size: int = 14
    """Windowed attention size in patches."""
    mlp_ratio: float = 4.0
    """ViT MLP width / embed dim."""
    prompt_embed_dim: int = 256
    """Image embedding channels and prompt token width."""
    decoder_mlp_dim: int = 2048
    """Two-way transformer MLP width."""
    decoder_depth: int = 2
    """Two-way transformer layers."""
    decoder_num_heads: int = 8
    """Two-way transformer heads (not recoverable from a state dict; SAM uses 8)."""
    iou_head_hidden_dim: int = 256
    """IoU prediction head width."""
    mask_in_chans: int = 16
    """Mask prompt downscaling channels."""
    patch_size: int = 16
    """ViT patch side in pixels."""


SAM_CONFIGS: dict[str, SamConfig] = {
    "vit_h": SamConfig(),
    "vit_l": SamConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_b": SamConfig(
        encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=(2, 5, 8, 11)
    ),
}
"""The three original SAM checkpoints' architectures (sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth, sam_vit_b_01ec64.pth)."""

TINY_SAM_CONFIG = SamConfig(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    image_size=128,
    window_size=4,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=8,
    iou_head_hidden_dim=32,
    mask_in_chans=8,
)
"""A tiny SAM for tests (128 px input, 8x8 image embedding)."""


def _modeling():
    """segment_anything.modeling, imported without running segment_anything/__init__ (torchvision)."""
    loaded = sys.modules.get("segment_anything.modeling") or sys.modules.get(_PRIVATE)
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("segment_anything: package not installed. Install it with `pip install segment-anything`")
    pkg_dir = Path(list(spec.submodule_search_locations)[0]) / "modeling"
    mspec = importlib.util.spec_from_file_location(
        _PRIVATE, pkg_dir / "__init__.py", submodule_search_locations=[str(pkg_dir)]
    )
    module = importlib.util.module_from_spec(mspec)
    sys.modules[_PRIVATE] = module
    try:
        mspec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(_PRIVATE, None)
        raise
    return module


def build_sam_model(config: SamConfig):
    """A randomly initialised segment-anything ``Sam`` of this architecture (eval mode, CPU, float32)."""
    from functools import partial

    import torch

    m = _modeling()
    emb = config.image_size // config.patch_size
    sam = m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.image_size,
            mlp_ratio=config.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(config.encoder_global_attn_indexes),
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def infer_sam_config(state_dict: dict, *, decoder_num_heads: int = 8) -> SamConfig:
    """Read a SAM architecture off an original-format state dict's tensor shapes (raises KeyError if not SAM)."""
    sd = state_dict
    embed = sd["image_encoder.patch_embed.proj.weight"].shape[0]
    patch = sd["image_encoder.patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("image_encoder.blocks."))
    grid = sd["image_encoder.pos_embed"].shape[1]
    rel = [sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
    head_dim = rel[0][1]
    global_idx = tuple(i for i in range(depth) if rel[i][0] == 2 * grid - 1)
    windowed = [rel[i][0] for i in range(depth) if i not in global_idx]
    window = (windowed[0] + 1) // 2 if windowed else 14
    dec_depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("mask_decoder.transformer.layers."))
    return SamConfig(
        encoder_embed_dim=embed,
        encoder_depth=depth,
        encoder_num_heads=embed // head_dim,
        encoder_global_attn_indexes=global_idx,
        image_size=grid * patch,
        window_size=window,
        mlp_ratio=sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed,
        prompt_embed_dim=sd["image_encoder.neck.0.weight"].shape[0],
        decoder_mlp_dim=sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        decoder_depth=dec_depth,
        decoder_num_heads=decoder_num_heads,
        iou_head_hidden_dim=sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
        mask_in_chans=sd["prompt_encoder.mask_downscaling.0.weight"].shape[0] * 4,
        patch_size=patch,
    )


def _config_name(config: SamConfig) -> str:
    return next((name for name, c in SAM_CONFIGS.items() if c == config), "custom")


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or text.lower().endswith((".pth", ".pt", ".bin"))


def load_sam(
    checkpoint: str | Path,
    model_type: Literal["vit_h", "vit_l", "vit_b", "auto"] = "auto",
    *,
    config: SamConfig | None = None,
    device: str = "auto",
    dtype: str | None = None,
    revision: str | None = None,
    fuse: bool = True,
) -> SamPredictor:
    """Load SAM into a `SamPredictor` (one image encoding, many batched point prompts).

    ``checkpoint`` is either an original segment-anything state dict (``sam_vit_h_4b8939.pth``), or a
    transformers ``SamModel``: a local ``save_pretrained`` directory or a Hugging Face hub id
    (``facebook/sam-vit-base``, a SlimSAM checkpoint); both give the same predictor interface. A str or
    Path that is no existing file or directory is tried as a hub id unless it looks like a file path
    (absolute, ``./``, ``~``, two or more ``/``, or a ``.pth`` / ``.pt`` / ``.bin`` name).

    ``model_type`` / ``config`` (.pth only): "auto" reads the architecture off the tensor shapes; a
    named type must match them; ``config`` sets a custom one. ``device="auto"``: CUDA when available,
    else CPU. ``dtype``: None / "auto" from the hardware (om3db.hardware.resolve_dtype: bfloat16 on
    CUDA and on CPUs with AMX / AVX512-BF16, else float32); the image encoder's weights are cast to it,
    the prompt encoder and mask decoder keep float32 weights and run under autocast. ``fuse``: on CPU,
    run the image encoder's linear layers and attention through the fused paths (om3db.fused).
    """
    from om3db.hardware import resolve_device, resolve_dtype

    if model_type not in (*SAM_CONFIGS, "auto"):
        raise ConfigError(f"unknown SAM model_type {model_type!r}; choose one of 'auto', 'vit_b', 'vit_h', 'vit_l'")
    dev = resolve_device(device)
    dtype, reason = resolve_dtype(dtype, dev)  # before any weights are read
    text = str(checkpoint)
    path = Path(text).expanduser()
    if not path.is_file():
        if path.is_dir() or not (_looks_like_path(text) or path.exists()):
            from om3db.sam_hf import load_hf_sam

            return load_hf_sam(text, device=dev, dtype=dtype, dtype_reason=reason, revision=revision, fuse=fuse)
        raise ModelLoadError(
            f"{path}: SAM checkpoint not found. Pass an original checkpoint (sam_vit_h_4b8939.pth), a "
            "transformers SAM directory or hub id (facebook/sam-vit-base), or write a random one with "
            "`om3db models random DIR`"
        )
    model, config = _load_pth(path, model_type, config)
    return SamPredictor(
        model.to(dev), model_type=_config_name(config), checkpoint=str(path), dtype=dtype, dtype_reason=reason
    ).prepare(fuse=fuse)


def _load_pth(path: Path, model_type: str, config: SamConfig | None):
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / non-torch files
        raise ModelLoadError(
            f"{path}: not a readable torch checkpoint ({type(exc).__name__}). "
            "Pass an original segment-anything .pth state dict, or a transformers SAM directory"
        ) from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        found = infer_sam_config(state)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        raise ModelLoadError(
            f"{path}: not a segment-anything SAM state dict (missing {exc}). "
            "Pass an original SAM checkpoint such as sam_vit_h_4b8939.pth"
        ) from exc
    if config is None:
        if model_type != "auto" and SAM_CONFIGS[model_type] != found:
            raise ModelLoadError(
                f"{path}: checkpoint is {_config_name(found)} (embed dim {found.encoder_embed_dim}, depth "
                f"{found.encoder_depth}) but model_type={model_type!r} was asked. "
                f"Pass model_type={_config_name(found)!r} or 'auto'"
                if _config_name(found) != "custom"
                else f"{path}: checkpoint is a custom SAM (embed dim {found.encoder_embed_dim}, depth "
                f"{found.encoder_depth}) but model_type={model_type!r} was asked. Pass model_type='auto'"
            )
        config = found
    model = build_sam_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{path}: weights do not fit the SAM architecture {asdict(config)} ({exc}). "
            "Pass model_type='auto' or the matching config"
        ) from exc
    return model, config


def _resize_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass
class SamPredictor:
    """Encodes one image once, then decodes any number of point prompts against the cached embedding.

    Mirrors segment-anything's ``SamPredictor`` (same resize, normalisation, padding and mask
    post-processing) with batched point prompts and ``multimask_output=False``.
    """

    model: object
    """segment-anything ``Sam`` module (eval mode, on its device); `HfSamPredictor`: transformers ``SamModel``."""
    model_type: str = "custom"
    """"vit_h" / "vit_l" / "vit_b" / "custom" (.pth); "transformers" for a transformers SamModel."""
    checkpoint: str = ""
    """Path (or hub id) the weights were read from."""
    dtype: str = "float32"
    """Compute dtype of the image encoder (its weights are cast to it); the prompt encoder and mask
    decoder keep float32 weights and run under autocast in this dtype."""
    dtype_reason: str = ""
    """Why this dtype (om3db.hardware.resolve_dtype)."""
    encoder_calls: int = 0
    """How many times the image encoder ran (once per `set_image`)."""
    decoder_calls: int = 0
    """How many batched mask-decoder calls ran."""
    fused: int = 0
    """Image-encoder linear layers and attention blocks on the fused CPU paths (om3db.fused)."""
    _features: object = field(default=None, repr=False)
    _original_size: tuple[int, int] = (0, 0)
    _input_size: tuple[int, int] = (0, 0)

    @property
    def encoder(self):
        """The image encoder module (ViT)."""
        return self.model.image_encoder

    @property
    def image_size(self) -> int:
        return self.model.image_encoder.img_size

    @property
    def device(self):
        return self.model.pixel_mean.device

    @property
    def decode_chunk(self) -> int:
        """Prompts per decoder call in `predict_best` by default: 256 on CUDA, 4 on CPU (cache-sized)."""
        return 256 if self.device.type == "cuda" else 4

    def prepare(self, *, fuse: bool = True) -> SamPredictor:
        """Cast the image encoder to ``dtype`` and, on CPU, swap in the fused paths; returns self."""
        import torch

        self.model.eval()
        self.encoder.to(getattr(torch, self.dtype))
        if fuse:
            from om3db.fused import contiguous_embeddings, fuse_linears_for, fuse_sam_attention, fuse_sam_decoder

            contiguous_embeddings(self.encoder)
            if self.device.type == "cpu":
                dt = getattr(torch, self.dtype)
                self.fused = fuse_linears_for(self.encoder, dt) + fuse_sam_attention(self.encoder)
                fuse_sam_decoder(self.model)
        return self

    def _autocast(self):
        import contextlib

        import torch

        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.dtype))

    def _embed(self, x):
        """Image embedding (1, C, h, w) float32 of a resized (1, 3, nh, nw) float 0..255 image tensor."""
        import torch

        dt = getattr(torch, self.dtype)
        return self.model.image_encoder(self.model.preprocess(x).to(dt)).float()

    def set_image(self, image: np.ndarray) -> None:
        """Encode an (H, W, 3) uint8 RGB image; later prompts are in its pixel coordinates (x, y)."""
        import torch
        from PIL import Image

        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
            raise ConfigError(
                f"SAM image must be an (H, W, 3) uint8 array, got {getattr(image, 'shape', None)} "
                f"{getattr(image, 'dtype', type(image).__name__)}"
            )
        h, w = image.shape[:2]
        nh, nw = _resize_shape(h, w, self.image_size)
        resized = np.array(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None].float()
        with torch.inference_mode():
            self._features = self._embed(x)
        self._original_size, self._input_size = (h, w), (nh, nw)
        self.encoder_calls += 1

    def _decode(self, point_coords: np.ndarray, point_labels: np.ndarray):
        """Low-resolution mask logits (B, 1, h, w) and IoU predictions (B,) for prompts in image pixels."""
        import torch

        if self._features is None:
            raise ConfigError("SamPredictor: call set_image(image) before predicting masks")
        coords = np.asarray(point_coords, dtype=np.float64)
        labels = np.asarray(point_labels)
        if coords.ndim != 3 or coords.shape[2] != 2 or labels.shape != coords.shape[:2]:
            raise ConfigError(
                f"SAM prompts must be point_coords (B, P, 2) and point_labels (B, P); got "
                f"{coords.shape} and {labels.shape}"
            )
        (h, w), (nh, nw) = self._original_size, self._input_size
        scaled = coords.copy()
        scaled[..., 0] *= nw / w
        scaled[..., 1] *= nh / h
        pc = torch.as_tensor(scaled, dtype=torch.float32, device=self.device)
        pl = torch.as_tensor(labels, dtype=torch.int64, device=self.device)
        with torch.inference_mode(), self._autocast():
            low, iou = self._run_decoder(pc, pl)
        self.decoder_calls += 1
        return low, iou

    def _run_decoder(self, pc, pl):
        """(B, 1, h, w) low-res logits and (B,) IoU for prompts (B, P, 2) in resized-image px, labels (B, P)."""
        sparse, dense = self.model.prompt_encoder(points=(pc, pl), boxes=None, masks=None)
        low, iou = self.model.mask_decoder(
            image_embeddings=self._features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low, iou[:, 0]

    def _upscale(self, low):
        """Binary masks (B, H, W) at the original image size from low-res logits (B, 1, h, w)."""
        import torch

        with torch.inference_mode():
            masks = self.model.postprocess_masks(low.float(), self._input_size, self._original_size)
            return (masks[:, 0] > self.model.mask_threshold).cpu().numpy()

    def predict_batch(
        self, point_coords: np.ndarray, point_labels: np.ndarray, *, chunk: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks for B prompt sets: ``point_coords`` (B, P, 2) float image px (x, y), ``point_labels`` (B, P)
        (1 foreground, 0 background) -> masks (B, H, W) bool, predicted IoU (B,) float32."""
        coords = np.asarray(point_coords, dtype=np.float64)
        labels = np.asarray(point_labels)
        masks, ious = [], []
        for s in range(0, max(len(coords), 1), chunk):
            low, iou = self._decode(coords[s : s + chunk], labels[s : s + chunk])
            masks.append(self._upscale(low))
            ious.append(iou.float().cpu().numpy())
        return np.concatenate(masks), np.concatenate(ious).astype(np.float32)

    def predict_best(
        self, point_coords: np.ndarray, point_labels: np.ndarray, *, chunk: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best of R rounds per prompt group: ``point_coords`` (M, R, P, 2), ``point_labels`` (M, R, P) ->
        masks (M, H, W) bool of the round with the highest predicted IoU, that IoU (M,) float32 and
        the round index (M,) int64. Only the M winning masks are upscaled to full resolution. ``chunk``: prompts
        per decoder call (default 4 on CPU, 256 on CUDA)."""
        import torch

        coords = np.asarray(point_coords, dtype=np.float64)
        labels = np.asarray(point_labels)
        if coords.ndim != 4 or labels.shape != coords.shape[:3]:
            raise ConfigError(
                f"grouped SAM prompts must be (M, R, P, 2) and (M, R, P); got {coords.shape} and {labels.shape}"
            )
        m, r, p = labels.shape
        if m == 0:
            h, w = self._original_size
            return np.zeros((0, h, w), bool), np.zeros(0, np.float32), np.zeros(0, np.int64)
        if r == 0 or p == 0:
            raise ConfigError(f"grouped SAM prompts need at least one round and one point, got shape {coords.shape}")
        flat_c, flat_l = coords.reshape(m * r, p, 2), labels.reshape(m * r, p)
        lows, ious = [], []
        # the decoder repeats the (256, 64, 64) image embedding per prompt: 256 prompts hold 1 GB per
        # intermediate, which a GPU absorbs; on CPU 4 prompts (16 MB) stay in cache and ran 1.5x faster per
        # prompt than 32 and 2x faster than 256 (docs/benchmarks.md)
        chunk = chunk or self.decode_chunk
        for s in range(0, m * r, chunk):
            low, iou = self._decode(flat_c[s : s + chunk], flat_l[s : s + chunk])
            lows.append(low)
            ious.append(iou)
        low = torch.cat(lows).reshape(m, r, *lows[0].shape[1:])
        iou = torch.cat(ious).float().reshape(m, r)
        best = iou.argmax(dim=1)
        winners = low[torch.arange(m, device=low.device), best]
        # full-resolution float masks are large (a 1296x968 frame: 5 MB each): upscale a few at a time
        masks = np.concatenate([self._upscale(winners[s : s + 16]) for s in range(0, m, 16)])
        return masks, iou.max(dim=1).values.cpu().numpy().astype(np.float32), best.cpu().numpy()
