"""SAM from original-format checkpoints without torchvision: loading, type detection, cached-embedding prompting."""

from __future__ import annotations

import importlib.util
import sys

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
    pred = load_sam(tiny_sam_path, device="cpu")
    assert pred.model_type == "custom" and pred.image_size == 128 and pred.checkpoint == str(tiny_sam_path)
    if importlib.util.find_spec("torchvision") is None:  # here: the package __init__ could not have run
        assert "torchvision" not in sys.modules and "segment_anything" not in sys.modules
    assert type(pred.model).__module__.endswith(".sam") and type(pred.model).__name__ == "Sam"
    assert infer_sam_config(pred.model.state_dict()) == TINY_SAM_CONFIG
    again = load_sam(tiny_sam_path, "auto", config=TINY_SAM_CONFIG, device="cpu")
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
        f"{missing}: SAM checkpoint not found. Download an original checkpoint "
        "(sam_vit_h_4b8939.pth) or write a random one with `om3db models random DIR`"
    )
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        ModelLoadError,
        match=r"^.*garbage\.pth: not a readable torch checkpoint \(\w+\)\. Pass an "
        r"original segment-anything \.pth state dict$",
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


def test_bfloat16_autocast_is_close_to_float32(tiny_sam_path):
    image, (coords, labels) = _image(seed=8), _prompts(8, 5, seed=9)
    results = {}
    for dtype in ("float32", "bfloat16"):
        pred = load_sam(tiny_sam_path, device="cpu", dtype=dtype)
        assert pred.dtype == dtype
        pred.set_image(image)
        results[dtype] = pred.predict_batch(coords, labels)
    (m32, iou32), (m16, iou16) = results["float32"], results["bfloat16"]
    assert iou16.dtype == np.float32 and np.abs(iou32 - iou16).max() < 0.02 and (m32 != m16).mean() < 0.02
    assert load_sam(tiny_sam_path, device="cpu").dtype == "float32"  # auto: float32 on CPU
    with pytest.raises(ConfigError, match=r"^unknown SAM dtype 'int8': use 'float32', 'bfloat16' or 'float16'$"):
        load_sam(tiny_sam_path, device="cpu", dtype="int8")
