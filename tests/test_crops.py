"""Crop boxes (0.1 expansion rule), box mode, SAM mode with one encoder call per frame, seeded prompting."""

from __future__ import annotations

import numpy as np
import pytest

from om3db.crops import CropConfig, crop_boxes, crop_frame, mask_box, points_box, prompt_rounds
from om3db.errors import ConfigError
from om3db.sam import load_sam


def _image(h=60, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


PROMPTS = [
    np.array([[10.0, 10.0], [20.5, 15.2], [12.0, 30.5], [15.0, 12.0], [18.0, 25.0], [11.0, 20.0]]),
    np.array([[50.0, 40.0], [70.9, 55.1]]),
    np.array([[79.5, 59.5]]),
]


def test_crop_boxes_hand_computed():
    np.testing.assert_array_equal(
        crop_boxes((10, 20, 40, 60), 100, 100), [[10, 20, 40, 60], [7, 16, 43, 64], [4, 12, 46, 68]]
    )
    # clipped at every image side: w 50 -> 5 px per level, h 20 -> 2 px per level
    boxes = crop_boxes((2, 1, 52, 21), 60, 30, levels=4)
    np.testing.assert_array_equal(boxes, [[2, 1, 52, 21], [0, 0, 57, 23], [0, 0, 60, 25], [0, 0, 60, 27]])
    assert boxes.dtype == np.int32 and boxes.shape == (4, 4)
    # int(0.1 * 5) = 0: a narrow box does not grow sideways
    np.testing.assert_array_equal(
        crop_boxes((3, 3, 8, 23), 50, 50, levels=2, expand=0.1), [[3, 3, 8, 23], [3, 1, 8, 25]]
    )
    np.testing.assert_array_equal(crop_boxes((0, 0, 10, 10), 10, 10, levels=1), [[0, 0, 10, 10]])


def test_crop_boxes_errors():
    with pytest.raises(ConfigError, match=r"^crop box \(5, 5, 5, 9\) is empty or outside the 10x10 image$"):
        crop_boxes((5, 5, 5, 9), 10, 10)
    with pytest.raises(ConfigError, match=r"^crop box \(0, 0, 11, 9\) is empty or outside the 10x10 image$"):
        crop_boxes((0, 0, 11, 9), 10, 10)
    with pytest.raises(ConfigError, match=r"^crop levels must be >= 1, got 0$"):
        crop_boxes((0, 0, 5, 5), 10, 10, levels=0)


def test_points_and_mask_boxes():
    pts = np.array([[10.2, 20.7], [30.9, 5.0]])
    assert points_box(pts, 100, 100) == (10, 5, 31, 21)
    # spacing sqrt(21 * 16 / 2) = 12.96; dilation 0.5 -> round(6.48) = 6 px per side, clipped at y = 0
    assert points_box(pts, 100, 100, dilation=0.5) == (4, 0, 37, 27)
    assert points_box(np.array([[5.5, 7.2]]), 100, 100, min_size=2) == (4, 6, 6, 8)
    assert points_box(np.array([[99.9, 0.0]]), 100, 100, min_size=4) == (97, 0, 100, 2)
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3] = mask[4, 7] = True
    assert mask_box(mask) == (3, 2, 8, 5)
    assert mask_box(np.zeros((4, 4), bool)) is None


def test_config_validation():
    with pytest.raises(ConfigError, match=r"^crop mode must be 'sam' or 'box', got 'grabcut'$"):
        CropConfig(mode="grabcut")
    with pytest.raises(ConfigError, match=r"^CropConfig.sam_rounds must be an integer >= 1, got 0$"):
        CropConfig(sam_rounds=0)
    with pytest.raises(ConfigError, match=r"^CropConfig.seed must be an integer >= 0, got -1$"):
        CropConfig(seed=-1)
    with pytest.raises(ConfigError, match=r"^CropConfig.expand and box_dilation must be >= 0, got -0.1, 0.0$"):
        CropConfig(expand=-0.1)


def test_box_mode_crops_contain_prompt_points():
    image = _image()
    crops = crop_frame(image, PROMPTS, config=CropConfig(mode="box"), frame_id=7, mask_ids=[4, 9, 2])
    assert [c.mask_id for c in crops] == [4, 9, 2]
    for c, pts in zip(crops, PROMPTS, strict=True):
        assert c.sam_iou is None and c.mask_pixels is None and c.boxes.shape == (3, 4) and c.boxes.dtype == np.int32
        x0, y0, x1, y1 = c.boxes[0]
        assert ((pts[:, 0] >= x0) & (pts[:, 0] < x1) & (pts[:, 1] >= y0) & (pts[:, 1] < y1)).all()
        for (bx0, by0, bx1, by1), im in zip(c.boxes, c.images, strict=True):
            np.testing.assert_array_equal(im, image[by0:by1, bx0:bx1])
        assert (c.boxes[1:, :2] <= c.boxes[:-1, :2]).all() and (c.boxes[1:, 2:] >= c.boxes[:-1, 2:]).all()
    np.testing.assert_array_equal(crops[0].boxes, crop_boxes((10, 10, 21, 31), 80, 60))
    np.testing.assert_array_equal(crops[2].boxes[0], (78, 58, 80, 60))  # corner point grown to min size 2, clipped


def test_prompt_rounds_are_seeded():
    pts = PROMPTS[0]
    a = prompt_rounds(pts, rounds=10, per_round=5, seed=0, frame_id=3, mask_id=1)
    assert a.shape == (10, 5, 2)
    np.testing.assert_array_equal(a, prompt_rounds(pts, rounds=10, per_round=5, seed=0, frame_id=3, mask_id=1))
    for other in (
        {"seed": 1, "frame_id": 3, "mask_id": 1},
        {"seed": 0, "frame_id": 4, "mask_id": 1},
        {"seed": 0, "frame_id": 3, "mask_id": 2},
    ):
        assert not np.array_equal(a, prompt_rounds(pts, rounds=10, per_round=5, **other))
    for r in a:  # without replacement within a round: 5 distinct prompt points
        assert len({tuple(p) for p in r}) == 5 and all(any((p == q).all() for q in pts) for p in r)
    few = prompt_rounds(PROMPTS[1], rounds=3, per_round=5, seed=0, frame_id=0, mask_id=0)
    assert few.shape == (3, 5, 2)  # 2 points: drawn with replacement


def test_sam_mode_one_encoder_call_per_frame(tiny_sam_path):
    sam = load_sam(tiny_sam_path, device="cpu")
    config = CropConfig(mode="sam", seed=3)
    image = _image(seed=1)
    crops = crop_frame(image, PROMPTS, config=config, sam=sam, frame_id=5)
    # 3 masks x 10 rounds against one image encoding, in batches of the predictor's decoder chunk
    assert sam.encoder_calls == 1 and sam.decoder_calls == -(-30 // sam.decode_chunk)
    crop_frame(_image(seed=2), PROMPTS[:2], config=config, sam=sam, frame_id=6)
    assert sam.encoder_calls == 2
    # level-0 box = tight box of the best-IoU mask over the same seeded rounds, recomputed by hand
    sam.set_image(image)
    rounds = np.stack(
        [prompt_rounds(p, rounds=10, per_round=5, seed=3, frame_id=5, mask_id=i) for i, p in enumerate(PROMPTS)]
    )
    masks, iou = sam.predict_batch(rounds.reshape(30, 5, 2), np.ones((30, 5), np.int64))
    best = iou.reshape(3, 10).argmax(axis=1)
    for k, c in enumerate(crops):
        mask = masks.reshape(3, 10, 60, 80)[k, best[k]]
        assert c.sam_iou == pytest.approx(float(iou.reshape(3, 10)[k, best[k]]), abs=1e-6)
        assert c.mask_pixels == int(mask.sum()) > 0
        np.testing.assert_array_equal(c.boxes, crop_boxes(mask_box(mask), 80, 60))
        assert [im.shape[:2] for im in c.images] == [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in c.boxes]


def test_sam_mode_is_reproducible(tiny_sam):
    image = _image(seed=4)
    a = crop_frame(image, PROMPTS, config=CropConfig(seed=0), sam=tiny_sam, frame_id=1)
    b = crop_frame(image, PROMPTS, config=CropConfig(seed=0), sam=tiny_sam, frame_id=1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.boxes, y.boxes)
        assert (x.sam_iou, x.mask_pixels) == (y.sam_iou, y.mask_pixels)


class FakeEmptySam:
    """A fake predictor whose masks are all empty: crops fall back to the prompt points' box."""

    encoder_calls = 0

    def set_image(self, image):
        self.shape = image.shape[:2]
        self.encoder_calls += 1

    def predict_best(self, coords, labels):
        m = coords.shape[0]
        return np.zeros((m, *self.shape), bool), np.full(m, 0.25, np.float32), np.zeros(m, np.int64)


def test_empty_sam_mask_falls_back_to_points_box():
    crops = crop_frame(_image(), PROMPTS[:2], config=CropConfig(mode="sam"), sam=FakeEmptySam())
    assert [c.mask_pixels for c in crops] == [0, 0] and [c.sam_iou for c in crops] == [0.25, 0.25]
    np.testing.assert_array_equal(crops[0].boxes[0], (10, 10, 21, 31))
    np.testing.assert_array_equal(crops[1].boxes[0], (50, 40, 71, 56))


def test_crop_frame_errors(tiny_sam):
    image = _image()
    with pytest.raises(ConfigError, match=r"^crop mode 'sam' needs a SAM predictor"):
        crop_frame(image, PROMPTS, config=CropConfig(mode="sam"))
    with pytest.raises(
        ConfigError,
        match=r"^prompts of mask 1 must be a non-empty \(P, 2\) finite array of \(x, y\) "
        r"px, got shape \(0, 2\)$",
    ):
        crop_frame(image, [PROMPTS[0], np.zeros((0, 2))], config=CropConfig(mode="box"))
    with pytest.raises(ConfigError, match=r"^3 prompt sets but 2 mask ids$"):
        crop_frame(image, PROMPTS, config=CropConfig(mode="box"), mask_ids=[0, 1])
    with pytest.raises(ConfigError, match=r"^frame image must be an \(H, W, 3\) uint8 array, got \(60, 80\) uint8$"):
        crop_frame(image[..., 0], PROMPTS, config=CropConfig(mode="box"))
    assert crop_frame(image, [], config=CropConfig(), sam=tiny_sam) == []
