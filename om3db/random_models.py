"""Randomly initialised SigLIP / DINOv2 / SAM checkpoints in their real on-disk formats.

The real loaders (`om3db.embed.load_siglip`, `load_dinov2`, `om3db.sam.load_sam`) read what these
functions write, offline. Tiny sizes make tests fast; full sizes (SigLIP-SO400M/14@384, DINOv2-L/14,
SAM ViT-H / ViT-B) are for GPU benchmarks of the real architectures (weights are random: the vectors
mean nothing, only their shapes and costs are real).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from om3db.errors import ConfigError

__all__ = [
    "write_random_siglip",
    "write_random_dinov2",
    "write_random_sam",
    "write_random_sam_hf",
    "write_random_models",
    "siglip_config",
    "dinov2_config",
    "TINY_VOCAB",
]

TINY_VOCAB = (
    "a an the of in on at with and or photo picture scene room object thing "
    "red green blue yellow orange purple pink brown black white gray grey "
    "chair table sofa couch bed lamp mug cup bottle book box shelf door window plant tv monitor "
    "keyboard desk cabinet sink toilet pillow bag shoe"
).split()
"""Words of the tiny word-level SigLIP tokenizer (anything else becomes <unk>)."""

_SIGLIP_SIZES = {
    # vision / text towers: hidden, intermediate, layers, heads; vision image size and patch
    "tiny": dict(hidden=32, inter=64, layers=2, heads=2, image=32, patch=8, max_pos=16, vocab=len(TINY_VOCAB) + 3),
    "base": dict(hidden=768, inter=3072, layers=12, heads=12, image=224, patch=16, max_pos=64, vocab=32000),
    "so400m": dict(hidden=1152, inter=4304, layers=27, heads=16, image=384, patch=14, max_pos=64, vocab=32000),
}
_DINOV2_SIZES = {
    "tiny": dict(hidden=32, layers=2, heads=2, patch=14, image=56, resize=64, crop=56),
    "small": dict(hidden=384, layers=12, heads=6, patch=14, image=518, resize=256, crop=224),
    "base": dict(hidden=768, layers=12, heads=12, patch=14, image=518, resize=256, crop=224),
    "large": dict(hidden=1024, layers=24, heads=16, patch=14, image=518, resize=256, crop=224),
}


def _check_size(size: str, sizes, what: str) -> None:
    if size not in sizes:
        raise ConfigError(f"unknown {what} size {size!r}; choose one of {sorted(sizes)}")


def _tiny_tokenizer(max_length: int):
    """A word-level fast tokenizer (lower-cased, whitespace split, ``</s>`` appended) for tiny SigLIP."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in TINY_VOCAB:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=max_length
    )


def siglip_config(size: Literal["tiny", "base", "so400m"] = "tiny"):
    """The transformers SiglipConfig of a size ("so400m" = google/siglip-so400m-patch14-384's architecture,
    "base" = google/siglip-base-patch16-224's)."""
    _check_size(size, _SIGLIP_SIZES, "SigLIP")
    from transformers import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

    s = _SIGLIP_SIZES[size]
    tower = dict(
        hidden_size=s["hidden"],
        intermediate_size=s["inter"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
    )
    return SiglipConfig(
        text_config=SiglipTextConfig(
            **tower,
            vocab_size=s["vocab"],
            max_position_embeddings=s["max_pos"],
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
        ),
        vision_config=SiglipVisionConfig(**tower, image_size=s["image"], patch_size=s["patch"]),
    )


def dinov2_config(size: Literal["tiny", "small", "base", "large"] = "tiny"):
    """The transformers Dinov2Config of a size ("small" / "base" / "large" = facebook/dinov2-*'s architectures)."""
    _check_size(size, _DINOV2_SIZES, "DINOv2")
    from transformers import Dinov2Config

    s = _DINOV2_SIZES[size]
    return Dinov2Config(
        hidden_size=s["hidden"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        patch_size=s["patch"],
        image_size=s["image"],
        mlp_ratio=4,
    )


def write_random_siglip(out_dir: str | Path, size: Literal["tiny", "base", "so400m"] = "tiny", seed: int = 0) -> Path:
    """Write a random SigLIP (model + image processor + tokenizer) into ``out_dir``; return it.

    "so400m" has the architecture of google/siglip-so400m-patch14-384 (1152-d) with a word-level
    tokenizer (the real sentencepiece vocabulary cannot be downloaded here).
    """
    import torch
    from transformers import SiglipImageProcessorPil, SiglipModel

    from .embed import quiet_transformers

    _check_size(size, _SIGLIP_SIZES, "SigLIP")  # before anything is written
    s = _SIGLIP_SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        config = siglip_config(size)
        torch.manual_seed(seed)
        model = SiglipModel(config).eval()
        model.save_pretrained(out)
        SiglipImageProcessorPil(size={"height": s["image"], "width": s["image"]}).save_pretrained(out)
        _tiny_tokenizer(s["max_pos"]).save_pretrained(out)
    return out


def write_random_dinov2(
    out_dir: str | Path, size: Literal["tiny", "small", "base", "large"] = "tiny", seed: int = 0
) -> Path:
    """Write a random DINOv2 (model + BiT image processor as facebook/dinov2-*) into ``out_dir``; return it."""
    import torch
    from transformers import BitImageProcessorPil, Dinov2Model

    from .embed import quiet_transformers

    config = dinov2_config(size)  # validates size first
    s = _DINOV2_SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        torch.manual_seed(seed)
        model = Dinov2Model(config).eval()
        model.save_pretrained(out)
    BitImageProcessorPil(
        size={"shortest_edge": s["resize"]},
        crop_size={"height": s["crop"], "width": s["crop"]},
        do_center_crop=True,
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    ).save_pretrained(out)
    return out


def write_random_sam(
    out_path: str | Path, size: Literal["tiny", "vit_h", "vit_l", "vit_b"] = "tiny", seed: int = 0
) -> Path:
    """Write a random SAM state dict in the original segment-anything format (``sam_vit_h_4b8939.pth``'s)."""
    from om3db.sam import SAM_CONFIGS, TINY_SAM_CONFIG, build_sam_model

    if size != "tiny" and size not in SAM_CONFIGS:
        raise ConfigError(f"unknown SAM size {size!r}; choose one of ['tiny', 'vit_b', 'vit_h', 'vit_l']")
    import torch

    config = TINY_SAM_CONFIG if size == "tiny" else SAM_CONFIGS[size]
    torch.manual_seed(seed)
    model = build_sam_model(config)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return out


_SAM_HF_SIZES = {
    # vision: hidden, layers, heads, global attention blocks, input side, window; prompt / decoder width
    "tiny": dict(hidden=32, layers=2, heads=2, glob=(1,), image=128, window=4, out=32, mlp=64),
    "vit_b": dict(hidden=768, layers=12, heads=12, glob=(2, 5, 8, 11), image=1024, window=14, out=256, mlp=2048),
    "vit_h": dict(hidden=1280, layers=32, heads=16, glob=(7, 15, 23, 31), image=1024, window=14, out=256, mlp=2048),
}


def sam_hf_config(size: Literal["tiny", "vit_b", "vit_h"] = "tiny"):
    """The transformers SamConfig of a size ("vit_b" / "vit_h" = facebook/sam-vit-base / -huge's architectures)."""
    _check_size(size, _SAM_HF_SIZES, "transformers SAM")
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    s = _SAM_HF_SIZES[size]
    return SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            global_attn_indexes=list(s["glob"]),
            image_size=s["image"],
            window_size=s["window"],
            output_channels=s["out"],
            mlp_dim=4 * s["hidden"],
            num_pos_feats=s["out"] // 2,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=s["out"], image_size=s["image"], mask_input_channels=16 if s["out"] == 256 else 8
        ),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=s["out"], mlp_dim=s["mlp"], iou_head_hidden_dim=s["out"]),
    )


def write_random_sam_hf(out_dir: str | Path, size: Literal["tiny", "vit_b", "vit_h"] = "tiny", seed: int = 0) -> Path:
    """Write a random transformers ``SamModel`` (model + image processor, as facebook/sam-vit-*) into ``out_dir``."""
    import torch
    from transformers import SamImageProcessorPil, SamModel

    from .embed import quiet_transformers

    config = sam_hf_config(size)  # validates size first
    side = _SAM_HF_SIZES[size]["image"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        torch.manual_seed(seed)
        model = SamModel(config).eval()
        with torch.no_grad():  # SAM's config initialises the vision encoder with std 1e-10: give it signal
            for name, p in model.named_parameters():
                if (p.dim() > 1 or "rel_pos" in name) and float(p.std()) < 1e-6:
                    p.normal_(std=0.02)
        model.save_pretrained(out)
        SamImageProcessorPil(
            size={"longest_edge": side},
            pad_size={"height": side, "width": side},
            mask_size={"longest_edge": side // 4},
            mask_pad_size={"height": side // 4, "width": side // 4},
        ).save_pretrained(out)
    return out


def write_random_models(
    out_dir: str | Path, size: Literal["tiny", "full", "cpu"] = "tiny", seed: int = 0
) -> dict[str, Path]:
    """All three demo checkpoints under ``out_dir``: ``siglip/``, ``dinov2/``, ``sam.pth``.

    "full" = SigLIP-SO400M/14@384, DINOv2-L/14 and SAM ViT-H architectures (~4.5 GB on disk);
    "cpu" = the "cpu" preset's SigLIP-B/16@224 and DINOv2-S/14, with SAM ViT-B.
    Returns {"siglip": dir, "dinov2": dir, "sam": file}.
    """
    sizes = {"tiny": ("tiny", "tiny", "tiny"), "full": ("so400m", "large", "vit_h"), "cpu": ("base", "small", "vit_b")}
    if size not in sizes:
        raise ConfigError(f"unknown random model size {size!r}; choose one of {sorted(sizes)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    out = Path(out_dir)
    check_models_dir(out)
    siglip, dinov2, sam = sizes[size]
    written = {
        "siglip": write_random_siglip(out / "siglip", siglip, seed),
        "dinov2": write_random_dinov2(out / "dinov2", dinov2, seed),
        "sam": write_random_sam(out / "sam.pth", sam, seed),
    }
    (out / MARKER).write_text(json.dumps({"generator": "om3db.random_models", "size": size, "seed": seed}) + "\n")
    return written


MAX_SEED = 2**63 - 1
"""torch.manual_seed's largest seed."""
MARKER = "om3db_random_models.json"
"""Written into the output folder: a later run may replace what is there (nothing else is ever replaced)."""
_OURS = {"siglip", "dinov2", "sam.pth", MARKER}


def check_models_dir(out: str | Path) -> Path:
    """Refuse, before anything is written, an output folder that is a file, lies under a file, or holds anything
    but an earlier ``write_random_models`` output (real checkpoints there would be overwritten)."""
    out = Path(out)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        if existing == out:
            raise ConfigError(f"{out}: exists and is not a folder; give a new or empty folder for the checkpoints")
        raise ConfigError(f"{out}: cannot be created: {existing} is a file; give a folder path")
    if out.is_dir():
        entries = {p.name for p in out.iterdir()}
        if entries and not ((out / MARKER).is_file() and entries <= _OURS):
            shown = ", ".join(sorted(entries)[:5])
            raise ConfigError(
                f"{out}: is not empty ({shown}) and was not written by `om3db models random`; give a new or empty "
                "folder (nothing in it is replaced)"
            )
    return out
