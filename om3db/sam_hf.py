"""SAM as a transformers ``SamModel`` (``facebook/sam-vit-*``, SlimSAM) behind om3db's `SamPredictor` interface.

Same pipeline as segment-anything's predictor and `om3db.sam.SamPredictor`: the longest side is
resized (PIL bilinear) to the processor's ``longest_edge``, normalised with its mean / std, padded
bottom-right to a square; point prompts are scaled to the resized image; low-resolution logits are
upsampled to the padded square, cropped to the resized image, resized to the original and
thresholded at 0. The processor settings come from the checkpoint's ``preprocessor_config.json``
(SamProcessor defaults when it has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from om3db.errors import ModelLoadError
from om3db.sam import SamPredictor

__all__ = ["HfSamPredictor", "load_hf_sam"]

_FIX = (
    "Pass an original segment-anything .pth (sam_vit_h_4b8939.pth), a directory written by "
    "transformers' SamModel.save_pretrained, or a hub id such as facebook/sam-vit-base"
)


@dataclass
class HfSamPredictor(SamPredictor):
    """`SamPredictor` over a transformers ``SamModel`` (``model``); see `om3db.sam.load_sam`."""

    longest_edge: int = 1024
    """Input side the longest image side is resized to (the processor's ``size["longest_edge"]``)."""
    pad_size: tuple[int, int] = (1024, 1024)
    """(height, width) the normalised image is padded to."""
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel mean of 0..1 pixels."""
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Per-channel std of 0..1 pixels."""

    @property
    def encoder(self):
        return self.model.vision_encoder

    @property
    def image_size(self) -> int:
        return self.longest_edge

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _embed(self, x):
        import torch

        mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1) * 255.0
        x = (x - mean) / std
        ph, pw = self.pad_size
        x = torch.nn.functional.pad(x, (0, pw - x.shape[-1], 0, ph - x.shape[-2]))
        return self.encoder(x.to(getattr(torch, self.dtype)))[0].float()

    def _run_decoder(self, pc, pl):
        out = self.model(
            image_embeddings=self._features, input_points=pc[None], input_labels=pl[None], multimask_output=False
        )
        return out.pred_masks[0], out.iou_scores[0][:, 0]

    def _upscale(self, low):
        import torch
        import torch.nn.functional as F  # noqa: N812

        with torch.inference_mode():
            up = F.interpolate(low.float(), self.pad_size, mode="bilinear", align_corners=False)
            up = up[..., : self._input_size[0], : self._input_size[1]]
            up = F.interpolate(up, self._original_size, mode="bilinear", align_corners=False)
            return (up[:, 0] > 0.0).cpu().numpy()


def _processor_settings(source: str, kw: dict) -> dict:
    """longest_edge / pad_size / mean / std from the checkpoint's image processor (defaults if it has none)."""
    from transformers import SamImageProcessorPil

    try:
        proc = SamImageProcessorPil.from_pretrained(source, **kw)
    except Exception:  # noqa: BLE001 - a checkpoint without preprocessor_config.json uses SAM's defaults
        proc = SamImageProcessorPil()
    pad = getattr(proc, "pad_size", None) or {}
    edge = int((getattr(proc, "size", None) or {}).get("longest_edge", 1024))
    return {
        "longest_edge": edge,
        "pad_size": (int(pad.get("height", edge)), int(pad.get("width", edge))),
        "image_mean": tuple(float(v) for v in proc.image_mean),
        "image_std": tuple(float(v) for v in proc.image_std),
    }


def load_hf_sam(
    model: str,
    *,
    device,
    dtype: str,
    dtype_reason: str = "",
    revision: str | None = None,
    fuse: bool = True,
) -> HfSamPredictor:
    """A transformers ``SamModel`` from a local directory or hub id (use `om3db.sam.load_sam`, which resolves
    device and dtype and also reads .pth checkpoints)."""
    from om3db.embed import _load

    def loader(source, kw):
        from transformers import AutoConfig, SamModel

        config = AutoConfig.from_pretrained(source, **kw)
        if getattr(config, "model_type", None) != "sam":
            raise ValueError(f"config model_type is {getattr(config, 'model_type', None)!r}, not 'sam'")
        return SamModel.from_pretrained(source, **kw), _processor_settings(source, kw)

    try:
        _, _, (net, settings) = _load("transformers SAM", model, revision, loader)
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"{model}: neither a SAM .pth checkpoint nor a loadable transformers SAM ({_why(model, exc)}). {_FIX}"
        ) from exc
    pred = HfSamPredictor(
        net.to(device),
        model_type="transformers",
        checkpoint=str(model),
        dtype=dtype,
        dtype_reason=dtype_reason,
        **settings,
    )
    return pred.prepare(fuse=fuse)


def _why(model: str, exc: ModelLoadError) -> str:
    from om3db.embed import _offline

    cause = exc.__cause__
    detail = f"{type(cause).__name__}: {str(cause).splitlines()[0]}" if cause is not None and str(cause) else ""
    if Path(model).expanduser().is_dir():
        return (
            f"the directory does not load as a transformers SamModel: {detail}"
            if detail
            else "the directory does not load as a transformers SamModel"
        )
    if _offline():
        return "not a file or directory, and as a hub id not in the Hugging Face cache with HF_HUB_OFFLINE=1"
    return f"not a file or directory, and the Hugging Face hub cannot serve it as a SamModel ({type(cause).__name__})"
