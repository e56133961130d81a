"""SigLIP / DINOv2 encoders: tiny random checkpoints through the real transformers loading code."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from om3db.embed import load_dinov2, load_encoder, load_siglip, weights_hash
from om3db.errors import ConfigError, ModelLoadError
from om3db.random_models import write_random_dinov2


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (20 + 3 * i, 30 + 5 * (i % 3), 3), dtype=np.uint8) for i in range(n)]


def test_import_is_light():
    code = (
        "import sys, om3db.embed, om3db.sam, om3db.crops, om3db.random_models; "
        "print(sorted(m for m in ('torch', 'transformers', 'segment_anything', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_siglip_images_and_texts_are_unit_rows(tiny_siglip):
    vecs = tiny_siglip.encode_images(_images(6))
    assert vecs.shape == (6, 32) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    texts = tiny_siglip.encode_texts(["a red chair", "blue mug", "an unknown zebra", "lamp"])
    assert texts.shape == (4, 32) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert tiny_siglip.encode_images([]).shape == (0, 32)
    assert tiny_siglip.encode_texts([]).shape == (0, 32)


def test_siglip_batches_equal_single_and_are_deterministic(tiny_siglip):
    ims = _images(6)
    batched = tiny_siglip.encode_images(ims)  # batch_size 4: two batches
    single = np.concatenate([tiny_siglip.encode_images([im]) for im in ims])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_array_equal(batched, tiny_siglip.encode_images(ims))
    texts = ["a red chair", "a blue mug on the table", "lamp", "green plant", "sofa"]
    batched_t = tiny_siglip.encode_texts(texts)
    single_t = np.concatenate([tiny_siglip.encode_texts([t]) for t in texts])
    np.testing.assert_allclose(batched_t, single_t, atol=1e-5)
    assert not np.allclose(batched_t[0], batched_t[1])


def test_siglip_matches_transformers_by_hand(tiny_siglip):
    import torch

    ims = _images(3)
    from PIL import Image

    pixels = tiny_siglip.processor(images=[Image.fromarray(i) for i in ims], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (3, 3, 32, 32)
    with torch.no_grad():
        ref = tiny_siglip.model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        ids = tiny_siglip.tokenizer(["a red chair"], padding="max_length", max_length=16, return_tensors="pt")
        ref_t = tiny_siglip.model.get_text_features(input_ids=ids["input_ids"]).pooler_output.numpy()
    np.testing.assert_allclose(
        tiny_siglip.encode_images(ims), ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5
    )
    np.testing.assert_allclose(tiny_siglip.encode_texts(["a red chair"]), ref_t / np.linalg.norm(ref_t), atol=1e-5)


def test_dinov2_feature_is_cls_concat_mean_patch(tiny_dinov2):
    import torch
    from PIL import Image

    ims = _images(5, seed=3)
    vecs = tiny_dinov2.encode_images(ims)
    assert vecs.shape == (5, 64) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    pixels = tiny_dinov2.processor(images=[Image.fromarray(i) for i in ims], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (5, 3, 56, 56)  # shortest edge 64, centre crop 56
    with torch.no_grad():
        tokens = tiny_dinov2.model(pixel_values=pixels).last_hidden_state.numpy()
    assert tokens.shape == (5, 1 + 16, 32)  # CLS + (56/14)^2 patches
    ref = np.concatenate([tokens[:, 0], tokens[:, 1:].mean(axis=1)], axis=1)
    np.testing.assert_allclose(vecs, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(vecs, np.concatenate([tiny_dinov2.encode_images([i]) for i in ims]), atol=1e-5)


def test_identity_content(tiny_siglip, tiny_dinov2, tiny_siglip_dir, tiny_dinov2_dir):
    sid, did = tiny_siglip.identity, tiny_dinov2.identity
    assert sid.model_id == str(tiny_siglip_dir) and did.model_id == str(tiny_dinov2_dir)
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", sid.revision) and sid.revision == weights_hash(tiny_siglip_dir)
    assert did.revision == weights_hash(tiny_dinov2_dir) and did.revision != sid.revision
    assert (sid.dim, did.dim, sid.normalization, did.normalization) == (32, 64, "l2", "l2")
    assert sid.preprocessing == (
        "siglip image features; 32x32, bicubic, mean [0.5, 0.5, 0.5] std [0.5, 0.5, 0.5] (PIL); text padded to 16"
    )
    assert did.preprocessing == (
        "cls+meanpatch; shortest edge 64, centre crop 56x56, bicubic, "
        "mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225] (PIL)"
    )


def test_revision_hash_follows_weights(tmp_path, tiny_dinov2_dir):
    same = write_random_dinov2(tmp_path / "same", seed=0)
    other = write_random_dinov2(tmp_path / "other", seed=1)
    assert weights_hash(same) == weights_hash(tiny_dinov2_dir)
    enc = load_dinov2(other, device="cpu")
    assert enc.identity.revision == weights_hash(other) != weights_hash(tiny_dinov2_dir)
    assert not np.allclose(enc.encode_images(_images(1)), load_dinov2(same, device="cpu").encode_images(_images(1)))


def test_registry_and_dtype(tiny_siglip_dir, tiny_dinov2_dir, fake_cpu):
    import torch

    fake_cpu(bf16=True)

    enc = load_encoder("dinov2", tiny_dinov2_dir, device="cpu", dtype="bfloat16")
    assert enc.model.dtype == torch.bfloat16
    vec = enc.encode_images(_images(2))
    assert vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    assert load_encoder("siglip", tiny_siglip_dir, device="cpu").identity.dim == 32
    with pytest.raises(ConfigError, match=r"^unknown encoder kind 'clip'; choose one of \['dinov2', 'siglip'\]$"):
        load_encoder("clip", tiny_siglip_dir)
    with pytest.raises(ConfigError, match=r"^unknown dtype 'int8': use 'auto', 'float32', 'bfloat16' or 'float16'$"):
        load_dinov2(tiny_dinov2_dir, dtype="int8")
    with pytest.raises(ConfigError, match=r"^batch_size must be >= 1, got 0$"):
        load_dinov2(tiny_dinov2_dir, device="cpu", batch_size=0)


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError) as err:
        load_siglip(missing)
    assert str(err.value) == (
        f"{missing}: model directory not found. Pass an existing directory written by "
        "save_pretrained, a Hugging Face hub id, or write a random demo checkpoint with "
        "`om3db models random DIR`"
    )


def test_offline_uncached_hub_id():
    with pytest.raises(ModelLoadError) as err:
        load_dinov2("om3db-test/not-a-cached-model")
    assert str(err.value) == (
        "om3db-test/not-a-cached-model: weights cannot be downloaded (HF_HUB_OFFLINE=1) and "
        "are not in the Hugging Face cache. Pass a local directory with the weights, run once "
        "online to cache them, or write a random demo checkpoint with `om3db models random DIR`"
    )


def test_directory_without_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ModelLoadError,
        match=re.escape(f"{tmp_path / 'empty'}: cannot load a SigLIP checkpoint from this directory (OSError: "),
    ) as err:
        load_siglip(tmp_path / "empty")
    assert str(err.value).endswith(
        "Pass a directory written by save_pretrained (config.json, weights, processor "
        "files), or write a random demo checkpoint with `om3db models random DIR`"
    )


def test_bad_inputs(tiny_siglip, tiny_dinov2):
    with pytest.raises(ConfigError, match=r"^image 1 must be a non-empty \(H, W, 3\) uint8 array, got \(4, 4\) uint8$"):
        tiny_dinov2.encode_images([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)])
    with pytest.raises(ConfigError, match=r"^image 0 must be .* got \(4, 4, 3\) float32$"):
        tiny_siglip.encode_images([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ConfigError, match=r"^encode_texts takes a sequence of strings"):
        tiny_siglip.encode_texts("a chair")


def test_write_random_models_round_trip(tmp_path):
    from om3db.random_models import write_random_models
    from om3db.sam import load_sam

    paths = write_random_models(tmp_path / "demo", seed=2)
    assert paths == {
        "siglip": tmp_path / "demo" / "siglip",
        "dinov2": tmp_path / "demo" / "dinov2",
        "sam": tmp_path / "demo" / "sam.pth",
    }
    assert load_siglip(paths["siglip"], device="cpu").encode_texts(["red"]).shape == (1, 32)
    assert load_sam(paths["sam"], device="cpu").model_type == "custom"
    with pytest.raises(
        ConfigError, match=r"^unknown random model size 'huge'; choose one of \['cpu', 'full', 'tiny'\]$"
    ):
        write_random_models(tmp_path, size="huge")
    with pytest.raises(ConfigError, match=r"^unknown SigLIP size 'huge'; choose one of \['base', 'so400m', 'tiny'\]$"):
        from om3db.random_models import write_random_siglip

        write_random_siglip(tmp_path / "x", size="huge")


def test_full_size_configs_match_the_hub_models():
    """The full-size random architectures are google/siglip-so400m-patch14-384 and facebook/dinov2-large
    (never written in tests; built on the meta device they have 877,960,498 and 304,368,640 parameters)."""
    from om3db.random_models import dinov2_config, siglip_config

    sig = siglip_config("so400m")
    for tower in (sig.vision_config, sig.text_config):
        assert (tower.hidden_size, tower.intermediate_size, tower.num_hidden_layers, tower.num_attention_heads) == (
            1152,
            4304,
            27,
            16,
        )
    assert (sig.vision_config.image_size, sig.vision_config.patch_size) == (384, 14)
    assert (sig.text_config.vocab_size, sig.text_config.max_position_embeddings) == (32000, 64)
    dino = dinov2_config("large")
    assert (dino.hidden_size, dino.num_hidden_layers, dino.num_attention_heads, dino.patch_size, dino.mlp_ratio) == (
        1024,
        24,
        16,
        14,
        4,
    )


def test_corrupt_weights_file(tmp_path, tiny_dinov2_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dinov2_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(
        ModelLoadError, match=re.escape(f"{broken}: cannot load a DINOv2 checkpoint from this directory (")
    ) as err:
        load_dinov2(broken, device="cpu")
    assert str(err.value).endswith("or write a random demo checkpoint with `om3db models random DIR`")


def _object_views(objects: int, views: int) -> list[np.ndarray]:
    """``views`` crops (shifted, resized windows plus noise) of each of ``objects`` textured objects, object-major."""
    out = []
    for o in range(objects):
        rng = np.random.default_rng(o)
        texture = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 50, (120, 120, 3)), 0, 255)
        for v in range(views):
            r = np.random.default_rng([o, v])
            (y, x), (h, w) = r.integers(0, 30, 2), r.integers(60, 90, 2)
            out.append(np.clip(texture[y : y + h, x : x + w] + r.normal(0, 5, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("kind", ["siglip", "dinov2"])
def test_bfloat16_vectors_agree_with_float32(kind, tiny_siglip_dir, tiny_dinov2_dir, fake_cpu):
    """Cosine >= 0.99 per vector; same top-5 on a synthetic database of 16 objects x 5 views, queried with a
    6th view of each, for every query whose float32 ranks 5 and 6 are further apart than twice the largest
    score change bfloat16 made in that query's row (closer ones are ties that any rounding may swap)."""
    fake_cpu(bf16=True)
    path = tiny_siglip_dir if kind == "siglip" else tiny_dinov2_dir
    images = _object_views(16, 6)
    enc16 = load_encoder(kind, path, device="cpu")  # auto on a native-bf16 CPU
    assert enc16.dtype_name == "bfloat16" and enc16.dtype_reason.startswith("auto: bfloat16")
    v32 = load_encoder(kind, path, device="cpu", dtype="float32").encode_images(images)
    v16 = enc16.encode_images(images)
    assert v16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v16, axis=1), 1.0, atol=1e-5)
    assert (v32 * v16).sum(axis=1).min() >= 0.99
    index = np.arange(96).reshape(16, 6)
    queries, database = v32[index[:, 0]], index[:, 1:].ravel()
    s32, s16 = queries @ v32[database].T, queries @ v16[database].T
    top32, top16 = np.argsort(-s32, axis=1)[:, :5], np.argsort(-s16, axis=1)[:, :5]
    ranked = np.sort(s32, axis=1)
    decided = ranked[:, -5] - ranked[:, -6] > 2 * np.abs(s32 - s16).max(axis=1)
    assert decided.sum() >= 10, "the synthetic database should separate most neighbourhoods"
    assert [set(r) for r in top32[decided]] == [set(r) for r in top16[decided]]
    if kind == "siglip":  # the same for text queries against the bfloat16 database
        t32 = load_encoder(kind, path, device="cpu", dtype="float32").encode_texts(["red chair", "a blue mug"])
        assert [set(r) for r in np.argsort(-(t32 @ v32.T), axis=1)[:, :5]] == [
            set(r) for r in np.argsort(-(t32 @ v16.T), axis=1)[:, :5]
        ]


def test_dtype_policy_branches_in_the_loaders(tiny_dinov2_dir, tiny_siglip_dir, fake_cpu, tmp_path):
    fake_cpu(bf16=False)
    enc = load_dinov2(tiny_dinov2_dir, device="cpu")
    assert enc.dtype_name == "float32" and "no native bfloat16" in enc.dtype_reason
    with pytest.raises(ConfigError, match=r"^dtype 'bfloat16' refused: this CPU, Fake AMD EPYC"):
        load_siglip(tiny_siglip_dir, device="cpu", dtype="bfloat16")
    with pytest.raises(ConfigError, match=r"^dtype 'bfloat16' refused"):  # before the (missing) model is looked at
        load_siglip(tmp_path / "missing", device="cpu", dtype="bfloat16")
    fake_cpu(bf16=True)
    assert load_siglip(tiny_siglip_dir, device="cpu").dtype_name == "bfloat16"
    assert load_siglip(tiny_siglip_dir, device="cpu", dtype="float32").dtype_reason == "float32 requested"


@pytest.mark.parametrize("kind", ["siglip", "dinov2"])
def test_fused_linears_equal_the_plain_model(kind, tiny_siglip_dir, tiny_dinov2_dir, fake_cpu):
    """bfloat16: every linear through oneDNN, MLP GELUs folded in; float32 on an AVX-512 Xeon: only the tanh-GELU
    MLPs (SigLIP), MKL's float32 GEMM being faster than oneDNN's; float32 on an AVX-512 EPYC: every linear;
    float32 on AVX2: nothing. Same vectors either way."""
    import torch

    from om3db.fused import FusedLinear, fused_linear_available

    fake_cpu(bf16=True)
    path = tiny_siglip_dir if kind == "siglip" else tiny_dinov2_dir
    images = _images(5)
    for dtype in ("float32", "bfloat16"):
        fused = load_encoder(kind, path, device="cpu", dtype=dtype)
        plain = load_encoder(kind, path, device="cpu", dtype=dtype, fuse=False)
        assert plain.fused_linears == 0
        if not fused_linear_available(getattr(torch, dtype)):
            # no oneDNN linear in this dtype here (bfloat16 on an AVX2-only CPU): the model is left plain
            assert fused.fused_linears == 0
            assert not any(isinstance(m, FusedLinear) for m in fused.model.modules())
            np.testing.assert_array_equal(fused.encode_images(images), plain.encode_images(images))
            continue
        assert fused.model.state_dict().keys() == plain.model.state_dict().keys()
        swapped = [m for m in fused.model.modules() if isinstance(m, FusedLinear)]
        gelus = {m.algorithm for m in swapped if m.attr == "gelu"}
        if dtype == "float32":
            # SigLIP: 2 vision + 2 text layers + the vision head's MLP; DINOv2 (exact GELU): nothing
            assert fused.fused_linears == len(swapped) == (5 if kind == "siglip" else 0)
            assert gelus == ({"tanh"} if kind == "siglip" else set())
            np.testing.assert_allclose(fused.encode_images(images), plain.encode_images(images), atol=2e-6)
        else:
            per_layer = 4 + 1  # q, k, v, o and the fused fc1 + GELU (fc2 stays a plain fused linear)
            assert fused.fused_linears >= 2 * (per_layer + 1)
            assert gelus == ({"tanh"} if kind == "siglip" else {"none"})
            a, b = fused.encode_images(images), plain.encode_images(images)
            assert (a * b).sum(axis=1).min() > 0.9999
        if kind == "siglip" and dtype == "float32":
            np.testing.assert_allclose(fused.encode_texts(["red mug"]), plain.encode_texts(["red mug"]), atol=2e-6)
    fake_cpu(bf16=False)  # AVX2 only: oneDNN's float32 linear was slower than MKL's everywhere, nothing fused
    fused = load_encoder(kind, path, device="cpu", dtype="float32")
    assert fused.fused_linears == 0 and not any(isinstance(m, FusedLinear) for m in fused.model.modules())
    if fused_linear_available(torch.float32):
        # an AVX-512 EPYC (Zen 4): oneDNN's float32 linear beat MKL's on every shape, so every linear is fused
        fake_cpu(bf16=True, vendor="AuthenticAMD")
        fused = load_encoder(kind, path, device="cpu", dtype="float32")
        plain = load_encoder(kind, path, device="cpu", dtype="float32", fuse=False)
        linears = sum(type(m) is torch.nn.Linear for m in plain.model.modules())  # not MultiheadAttention's out_proj
        swapped = [m for m in fused.model.modules() if isinstance(m, FusedLinear)]
        assert fused.fused_linears == len(swapped) == linears  # each Linear swapped once
        assert not any(type(m) is torch.nn.Linear for m in fused.model.modules())
        assert {m.algorithm for m in swapped if m.attr == "gelu"} == ({"tanh"} if kind == "siglip" else {"none"})
        np.testing.assert_allclose(fused.encode_images(images), plain.encode_images(images), atol=2e-6)


def test_model_presets():
    from om3db.embed import MODEL_PRESETS, model_preset

    assert model_preset("full") == {
        "siglip": "google/siglip-so400m-patch14-384",
        "dinov2": "facebook/dinov2-large",
        "sam": "facebook/sam-vit-huge",
    }
    assert model_preset("cpu") == {
        "siglip": "google/siglip-base-patch16-224",
        "dinov2": "facebook/dinov2-small",
        "sam": None,
    }
    model_preset("cpu")["siglip"] = "changed"  # a copy
    assert MODEL_PRESETS["cpu"]["siglip"] == "google/siglip-base-patch16-224"
    with pytest.raises(ConfigError, match=r"^unknown model preset 'gpu'; choose one of \['cpu', 'full'\]$"):
        model_preset("gpu")
    with pytest.raises(ModelLoadError, match=r"^google/siglip-base-patch16-224: weights cannot be downloaded"):
        load_encoder("siglip", preset="cpu", device="cpu", dtype="float32")


def test_light_random_architectures():
    """The "cpu" preset's architectures (google/siglip-base-patch16-224, facebook/dinov2-small / -base)."""
    from om3db.random_models import dinov2_config, sam_hf_config, siglip_config

    v = siglip_config("base").vision_config
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads) == (768, 3072, 12, 12)
    assert (v.image_size, v.patch_size) == (224, 16)
    assert [
        (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) for c in map(dinov2_config, ("small", "base"))
    ] == [
        (384, 12, 6),
        (768, 12, 12),
    ]
    h = sam_hf_config("vit_h").vision_config
    assert (h.hidden_size, h.num_hidden_layers, h.num_attention_heads, list(h.global_attn_indexes)) == (
        1280,
        32,
        16,
        [7, 15, 23, 31],
    )


def test_compute_settings_for_reports(tiny_siglip, tiny_dinov2, tiny_sam):
    from om3db.embed import compute_settings

    got = compute_settings({"siglip": tiny_siglip, "dinov2": tiny_dinov2}, tiny_sam)
    assert set(got) == {"cpu", "siglip", "dinov2", "sam"} and "bf16_native" in got["cpu"]
    assert got["siglip"] == {
        "dtype": "float32",
        "reason": "float32 requested",
        "device": "cpu",
        "fused": tiny_siglip.fused_linears,
    }
    assert got["sam"]["dtype"] == "float32" and got["sam"]["model_type"] == "custom"
    assert compute_settings({"fake": object()})["fake"]["dtype"] is None
    assert compute_settings({})["sam"] is None
    import json

    json.dumps(got)
