"""SAM from original-format checkpoints without torchvision: loading, type detection, cached-embedding prompting."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from om3db.errors import ConfigError, ModelLoadError
from om3db.sam import SAM_CONFIGS, TINY_SAM_CONFIG, build_sam_model, infer_sam_config, load_sam


def _image(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _prompts(b, p, h=48, w=64, seed=1):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(0, w, (b, p)), rng.uniform(0, h, (b, p))], axis=-1), np.ones((b, p), np.int64)


def test_loads_without_torchvision_or_segment_anything_init(tiny_sam_path):
    pred = load_sam(tiny_sam_path, device="cpu", dtype="float32")
    assert pred.model_type == "custom" and pred.image_size == 128 and pred.checkpoint == str(tiny_sam_path)
    if importlib.util.find_spec("torchvision") is None:  # here: the package __init__ could not have run
        assert "torchvision" not in sys.modules and "segment_anything" not in sys.modules
    assert type(pred.model).__module__.endswith(".sam") and type(pred.model).__name__ == "Sam"
    assert infer_sam_config(pred.model.state_dict()) == TINY_SAM_CONFIG
    again = load_sam(tiny_sam_path, "auto", config=TINY_SAM_CONFIG, device="cpu", dtype="float32")
    for (k, a), b in zip(pred.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert np.array_equal(a.numpy(), b.numpy()), k


@pytest.mark.parametrize("name", ["vit_h", "vit_l", "vit_b"])
def test_named_architectures_are_detected(name):
    import torch

    with torch.device("meta"):  # shapes only: no memory, no time
        model = build_sam_model(SAM_CONFIGS[name])
    assert infer_sam_config(model.state_dict()) == SAM_CONFIGS[name]


def test_wrong_model_type(tiny_sam_path, tmp_path):
    import torch

    with pytest.raises(ModelLoadError) as err:
        load_sam(tiny_sam_path, "vit_h")
    assert str(err.value) == (
        f"{tiny_sam_path}: checkpoint is a custom SAM (embed dim 32, depth 2) but "
        "model_type='vit_h' was asked. Pass model_type='auto'"
    )
    with torch.device("meta"):
        vit_b = build_sam_model(SAM_CONFIGS["vit_b"])
    path = tmp_path / "sam_vit_b_shapes.pth"
    torch.save(vit_b.state_dict(), path)  # meta tensors: the shapes of a real vit_b checkpoint, 40 kB
    with pytest.raises(ModelLoadError) as err:
        load_sam(path, "vit_h")
    assert str(err.value) == (
        f"{path}: checkpoint is vit_b (embed dim 768, depth 12) but model_type='vit_h' was "
        "asked. Pass model_type='vit_b' or 'auto'"
    )
    with pytest.raises(ConfigError, match=r"^unknown SAM model_type 'vit_x'; choose one of"):
        load_sam(tiny_sam_path, "vit_x")


def test_missing_and_bad_checkpoints(tmp_path):
    import torch

    missing = tmp_path / "sam_vit_h_4b8939.pth"
    with pytest.raises(ModelLoadError) as err:
        load_sam(missing)
    assert str(err.value) == (
        f"{missing}: SAM checkpoint not found. Pass an original checkpoint (sam_vit_h_4b8939.pth), a "
        "transformers SAM directory or hub id (facebook/sam-vit-base), or write a random one with "
        "`om3db models random DIR`"
    )
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        ModelLoadError,
        match=r"^.*garbage\.pth: not a readable torch checkpoint \(\w+\)\. Pass an "
        r"original segment-anything \.pth state dict, or a transformers SAM directory$",
    ):
        load_sam(garbage)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ModelLoadError) as err:
        load_sam(other)
    assert str(err.value) == (
        f"{other}: not a segment-anything SAM state dict (missing "
        "'image_encoder.patch_embed.proj.weight'). Pass an original SAM checkpoint such as "
        "sam_vit_h_4b8939.pth"
    )


def test_one_encoder_call_for_many_masks(tiny_sam_path):
    pred = load_sam(tiny_sam_path, device="cpu")
    pred.set_image(_image())
    coords, labels = _prompts(40, 5)
    masks, iou = pred.predict_batch(coords, labels, chunk=16)
    assert masks.shape == (40, 48, 64) and masks.dtype == bool and iou.shape == (40,) and iou.dtype == np.float32
    assert pred.encoder_calls == 1 and pred.decoder_calls == 3
    pred.predict_batch(coords[:3], labels[:3])
    assert pred.encoder_calls == 1
    pred.set_image(_image(seed=5))
    assert pred.encoder_calls == 2


def test_batch_equals_sequential(tiny_sam):
    tiny_sam.set_image(_image(seed=2))
    coords, labels = _prompts(12, 5, seed=3)
    masks, iou = tiny_sam.predict_batch(coords, labels)
    for i in range(12):
        m1, iou1 = tiny_sam.predict_batch(coords[i : i + 1], labels[i : i + 1])
        np.testing.assert_array_equal(m1[0], masks[i])
        np.testing.assert_allclose(iou1[0], iou[i], atol=1e-5)
    assert 0 < masks.sum() < masks.size  # random weights still give non-trivial masks


def test_matches_segment_anything_forward(tiny_sam):
    """Our resize + prompt scaling + decoding = segment-anything's own Sam.forward on the resized image."""
    import torch
    from PIL import Image

    image = _image(seed=4)
    tiny_sam.set_image(image)
    coords, labels = _prompts(6, 5, seed=5)
    masks, iou = tiny_sam.predict_batch(coords, labels)
    resized = np.array(Image.fromarray(image).resize((128, 96), Image.BILINEAR))  # long side 64 -> 128
    scale = np.array([128 / 64, 96 / 48])
    with torch.no_grad():
        out = tiny_sam.model(
            [
                {
                    "image": torch.as_tensor(resized).permute(2, 0, 1).float(),
                    "original_size": (48, 64),
                    "point_coords": torch.as_tensor(coords * scale, dtype=torch.float32),
                    "point_labels": torch.as_tensor(labels),
                }
            ],
            multimask_output=False,
        )[0]
    np.testing.assert_array_equal(out["masks"][:, 0].numpy(), masks)
    np.testing.assert_allclose(out["iou_predictions"][:, 0].numpy(), iou, atol=1e-5)


def test_predict_best_keeps_highest_iou_round(tiny_sam):
    tiny_sam.set_image(_image(seed=6))
    coords, labels = _prompts(30, 5, seed=7)
    masks, iou = tiny_sam.predict_batch(coords, labels)
    best_masks, best_iou, best_round = tiny_sam.predict_best(coords.reshape(3, 10, 5, 2), labels.reshape(3, 10, 5))
    expect = iou.reshape(3, 10).argmax(axis=1)
    np.testing.assert_array_equal(best_round, expect)
    np.testing.assert_allclose(best_iou, iou.reshape(3, 10).max(axis=1), atol=1e-6)
    np.testing.assert_array_equal(best_masks, masks.reshape(3, 10, 48, 64)[np.arange(3), expect])


def test_predictor_input_errors(tiny_sam_path):
    pred = load_sam(tiny_sam_path, device="cpu")
    coords, labels = _prompts(2, 5)
    with pytest.raises(ConfigError, match=r"^SamPredictor: call set_image\(image\) before predicting masks$"):
        pred.predict_batch(coords, labels)
    with pytest.raises(ConfigError, match=r"^SAM image must be an \(H, W, 3\) uint8 array, got \(4, 4\) uint8$"):
        pred.set_image(np.zeros((4, 4), np.uint8))
    pred.set_image(_image())
    with pytest.raises(
        ConfigError,
        match=r"^SAM prompts must be point_coords \(B, P, 2\) and point_labels \(B, P\); "
        r"got \(2, 5, 2\) and \(2, 4\)$",
    ):
        pred.predict_batch(coords, labels[:, :4])


def test_bfloat16_is_close_to_float32(tiny_sam_path, fake_cpu):
    import torch

    fake_cpu(bf16=True)
    image, (coords, labels) = _image(seed=8), _prompts(8, 5, seed=9)
    results = {}
    for dtype in ("float32", None):  # None: auto, bfloat16 on this (faked) CPU
        pred = load_sam(tiny_sam_path, device="cpu", dtype=dtype)
        assert pred.dtype == (dtype or "bfloat16")
        pred.set_image(image)
        results[pred.dtype] = pred.predict_batch(coords, labels)
    assert pred.model.image_encoder.patch_embed.proj.weight.dtype == torch.bfloat16  # the encoder is cast
    assert pred.model.mask_decoder.iou_token.weight.dtype == torch.float32  # the decoder runs under autocast
    assert pred.dtype_reason.startswith("auto: bfloat16, the CPU computes it natively")
    (m32, iou32), (m16, iou16) = results["float32"], results["bfloat16"]
    assert iou16.dtype == np.float32 and np.abs(iou32 - iou16).max() < 0.02 and (m32 != m16).mean() < 0.02
    fake_cpu(bf16=False)
    assert load_sam(tiny_sam_path, device="cpu").dtype == "float32"  # auto without native bfloat16
    with pytest.raises(ConfigError, match=r"^dtype 'bfloat16' refused: this CPU, Fake AMD EPYC"):
        load_sam(tiny_sam_path, device="cpu", dtype="bfloat16")
    with pytest.raises(ConfigError, match=r"^unknown dtype 'int8': use 'auto', 'float32', 'bfloat16' or 'float16'$"):
        load_sam(tiny_sam_path, device="cpu", dtype="int8")


def _randomise_rel_pos(model, seed=0):
    """segment-anything zero-initialises the relative position tables: give them values so they matter."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_fused_attention_equals_segment_anything():
    """SDPA with the relative positions folded into q / k = segment-anything's attention, windowed (with
    padding: 8x8 patches in 3x3 windows) and global blocks."""
    import dataclasses

    import torch

    from om3db.fused import fuse_linears, fuse_sam_attention

    config = dataclasses.replace(TINY_SAM_CONFIG, window_size=3)
    torch.manual_seed(0)
    plain = build_sam_model(config)
    _randomise_rel_pos(plain)
    fused = build_sam_model(config)
    fused.load_state_dict(plain.state_dict())
    assert fuse_sam_attention(fused.image_encoder) == 2
    fuse_linears(fused.image_encoder)
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        a, b = plain.image_encoder(x), fused.image_encoder(x)
    torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)


def test_fused_attention_equals_transformers(tiny_sam_hf_dir):
    import torch

    plain = load_sam(tiny_sam_hf_dir, device="cpu", dtype="float32", fuse=False)
    fused = load_sam(tiny_sam_hf_dir, device="cpu", dtype="float32")
    assert plain.fused == 0 and fused.fused >= 2  # two attention blocks (+ linears where oneDNN runs them)
    x = torch.rand(1, 3, 96, 128) * 255
    with torch.inference_mode():
        torch.testing.assert_close(fused._embed(x), plain._embed(x), atol=2e-5, rtol=1e-4)


def test_transformers_sam_matches_samodel_pipeline(tiny_sam_hf_dir):
    """HfSamPredictor = transformers' own SamImageProcessor + SamModel forward + post_process_masks."""
    import torch
    from transformers import SamImageProcessorPil, SamModel

    from om3db.sam_hf import HfSamPredictor

    pred = load_sam(tiny_sam_hf_dir, device="cpu", dtype="float32", fuse=False)
    assert isinstance(pred, HfSamPredictor) and pred.model_type == "transformers"
    assert pred.checkpoint == str(tiny_sam_hf_dir) and pred.image_size == 128 and pred.pad_size == (128, 128)
    image = _image(seed=4)
    coords, labels = _prompts(6, 5, seed=5)
    pred.set_image(image)
    masks, iou = pred.predict_batch(coords, labels)
    proc = SamImageProcessorPil.from_pretrained(tiny_sam_hf_dir)
    inputs = proc(images=[image], return_tensors="pt")
    assert inputs["reshaped_input_sizes"][0].tolist() == [96, 128]
    model = SamModel.from_pretrained(tiny_sam_hf_dir).eval()
    scale = np.array([128 / 64, 96 / 48])
    with torch.no_grad():
        out = model(
            pixel_values=inputs["pixel_values"],
            input_points=torch.as_tensor(coords * scale, dtype=torch.float32)[None],
            input_labels=torch.as_tensor(labels)[None],
            multimask_output=False,
        )
    ref = proc.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])[0]
    assert ref.shape == (6, 1, 48, 64)
    np.testing.assert_array_equal(ref[:, 0].numpy(), masks)
    np.testing.assert_allclose(out.iou_scores[0, :, 0].numpy(), iou, atol=1e-5)
    assert 0 < masks.sum() < masks.size


def test_transformers_sam_predictor_interface(tiny_sam_hf_dir):
    pred = load_sam(tiny_sam_hf_dir, device="cpu", dtype="float32")
    pred.set_image(_image())
    coords, labels = _prompts(30, 5, seed=7)
    masks, iou = pred.predict_batch(coords, labels, chunk=16)
    assert masks.shape == (30, 48, 64) and iou.dtype == np.float32
    assert pred.encoder_calls == 1 and pred.decoder_calls == 2
    best_masks, best_iou, best_round = pred.predict_best(coords.reshape(3, 10, 5, 2), labels.reshape(3, 10, 5))
    expect = iou.reshape(3, 10).argmax(axis=1)
    np.testing.assert_array_equal(best_round, expect)
    np.testing.assert_array_equal(best_masks, masks.reshape(3, 10, 48, 64)[np.arange(3), expect])
    with pytest.raises(ConfigError, match=r"^SAM prompts must be point_coords"):
        pred.predict_batch(coords, labels[:, :4])


def test_transformers_sam_for_crops_and_automatic_masks(tiny_sam_hf_dir):
    from om3db.crops import CropConfig, crop_frame
    from om3db.proposals.masks2d import SamAutomaticMasks

    pred = load_sam(tiny_sam_hf_dir, device="cpu", dtype="float32")
    image = _image(seed=11)
    prompts = [np.array([[10.0, 10.0], [14.0, 12.0], [12.0, 16.0]]), np.array([[40.0, 30.0], [44.0, 33.0]])]
    crops = crop_frame(image, prompts, config=CropConfig(mode="sam", sam_rounds=3), sam=pred, frame_id=3)
    assert [c.mask_id for c in crops] == [0, 1] and all(c.sam_iou is not None for c in crops)
    assert pred.encoder_calls == 1

    class Frame:
        def color(self):
            return image

    labels = SamAutomaticMasks(pred, points_per_side=4, pred_iou_threshold=-1e9, min_area=1).masks(None, Frame())
    assert labels.shape == (48, 64) and labels.dtype == np.int32 and pred.encoder_calls == 2


def test_transformers_sam_errors(tmp_path, tiny_dinov2_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as err:
        load_sam(tmp_path / "empty", device="cpu")
    assert str(err.value).startswith(
        f"{tmp_path / 'empty'}: neither a SAM .pth checkpoint nor a loadable transformers SAM (the directory does "
        "not load as a transformers SamModel: ValueError: Unrecognized model in "
    )
    assert str(err.value).endswith(
        "Pass an original segment-anything .pth (sam_vit_h_4b8939.pth), a directory written by transformers' "
        "SamModel.save_pretrained, or a hub id such as facebook/sam-vit-base"
    )
    with pytest.raises(ModelLoadError, match=r"model_type is 'dinov2', not 'sam'"):
        load_sam(tiny_dinov2_dir, device="cpu")
    with pytest.raises(ModelLoadError) as err:
        load_sam("om3db-test/not-a-cached-sam", device="cpu")
    assert str(err.value) == (
        "om3db-test/not-a-cached-sam: neither a SAM .pth checkpoint nor a loadable transformers SAM (not a file "
        "or directory, and as a hub id not in the Hugging Face cache with HF_HUB_OFFLINE=1). Pass an original "
        "segment-anything .pth (sam_vit_h_4b8939.pth), a directory written by transformers' "
        "SamModel.save_pretrained, or a hub id such as facebook/sam-vit-base"
    )
    with pytest.raises(ModelLoadError, match=r"^om3db-test/not-a-cached-sam: neither a SAM \.pth"):
        load_sam(Path("om3db-test/not-a-cached-sam"), device="cpu")  # the CLI passes Paths
    with pytest.raises(ModelLoadError, match=r"sam_vit_b\.pth: SAM checkpoint not found"):
        load_sam("models/sam_vit_b.pth")  # a path, not a hub id


@pytest.mark.parametrize("fmt", ["pth", "transformers"])
def test_fused_predictor_equals_plain(fmt, tiny_sam_path, tiny_sam_hf_dir):
    """The CPU fast path (fused encoder linears and attention, channels-last decoder inputs) changes
    nothing but rounding: same decoder logits on the same embedding, same masks end to end."""
    import torch

    spec = tiny_sam_path if fmt == "pth" else tiny_sam_hf_dir
    plain = load_sam(spec, device="cpu", dtype="float32", fuse=False)
    fused = load_sam(spec, device="cpu", dtype="float32")
    assert plain.fused == 0 and fused.fused > 0
    assert getattr(fused.model.mask_decoder.transformer, "_om3db_channels_last", False)
    image, (coords, labels) = _image(seed=12), _prompts(20, 5, seed=13)
    for pred in (plain, fused):
        pred.set_image(image)
    torch.testing.assert_close(fused._features, plain._features, atol=2e-5, rtol=1e-4)
    fused._features = plain._features
    low_f, iou_f = fused._decode(coords, labels)
    low_p, iou_p = plain._decode(coords, labels)
    torch.testing.assert_close(low_f, low_p, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou_f, iou_p, atol=1e-6, rtol=1e-6)
    m_f, _, r_f = fused.predict_best(coords.reshape(4, 5, 5, 2), labels.reshape(4, 5, 5))
    m_p, _, r_p = plain.predict_best(coords.reshape(4, 5, 5, 2), labels.reshape(4, 5, 5), chunk=256)
    np.testing.assert_array_equal(r_f, r_p)
    assert (m_f != m_p).mean() < 1e-3
