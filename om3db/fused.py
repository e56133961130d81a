"""CPU inference fast path: every ``nn.Linear`` through oneDNN with the bias (and an MLP's GELU) fused.

Profiled on SigLIP-SO400M / DINOv2-L / SAM ViT-H (2-core Xeon with AMX, bfloat16; docs/benchmarks.md):

- ``F.linear`` on CPU is ``addmm``, which first copies the broadcast bias into the output: for the
  4304-wide MLP of SigLIP that copy cost as much as the matrix product itself;
- the MLP's GELU (tanh form in SigLIP) ran as a separate pass over the widest activation, at ~2/3
  of the cost of the product before it.

``torch.ops.mkldnn._linear_pointwise`` (the op torch.compile's CPU backend emits) computes
``act(x @ W.T + b)`` in one oneDNN call. `fuse_linears` swaps the modules in place; parameters keep
their names, so ``state_dict`` and ``.to(dtype)`` work as before. Outputs equal the unfused model's
to rounding (tested); the op is checked once per process and nothing is swapped where it is
missing or fails (another torch build, no oneDNN).
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F  # noqa: N812 - the usual name

__all__ = [
    "fuse_linears",
    "fuse_linears_for",
    "fuse_sam_attention",
    "fuse_sam_decoder",
    "contiguous_embeddings",
    "fused_linear_available",
    "FusedLinear",
]

# (module class name, first linear, activation attribute) of the MLPs whose forward is fc1 -> act -> fc2
_MLPS = {
    "SiglipMLP": ("fc1", "activation_fn"),
    "Dinov2MLP": ("fc1", "activation_fn"),
    "MLPBlock": ("lin1", "act"),  # segment-anything image encoder
    "SamMLPBlock": ("lin1", "act"),  # transformers SAM
}


@functools.lru_cache(maxsize=4)
def fused_linear_available(dtype: torch.dtype = torch.float32) -> bool:
    """True when this torch build runs ``mkldnn._linear_pointwise`` correctly in ``dtype`` on this CPU.

    Probed per dtype: oneDNN has no bfloat16 inner product on an AVX2-only CPU ("could not create a
    primitive descriptor"), where float32 works.
    """
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=g).to(dtype) for s in ((3, 5, 16), (24, 16), (24,)))
        with torch.inference_mode():
            out = op(x, w, b, "gelu", [], "tanh").float()
            ref = F.gelu(F.linear(x.float(), w.float(), b.float()), approximate="tanh")
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        return bool(torch.allclose(out, ref, atol=tol, rtol=tol))
    except Exception:  # noqa: BLE001 - any failure means "do not use it"
        return False


def _activation(act) -> tuple[str, str] | None:
    """oneDNN (attr, algorithm) computing the same function as ``act``, found by evaluating it; None if no match."""
    if isinstance(act, torch.nn.Identity):
        return None
    t = torch.linspace(-6, 6, 97)
    try:
        with torch.inference_mode():
            y = act(t)
    except Exception:  # noqa: BLE001 - an activation that cannot run on a plain tensor is not fused
        return None
    for attr, algorithm, ref in (
        ("gelu", "tanh", F.gelu(t, approximate="tanh")),
        ("gelu", "none", F.gelu(t)),
        ("relu", "", F.relu(t)),
    ):
        if y.shape == ref.shape and torch.allclose(y, ref, atol=1e-6, rtol=0):
            return attr, algorithm
    return None


class FusedLinear(torch.nn.Module):
    """``act(x @ weight.T + bias)`` in one oneDNN call; same parameters as the ``nn.Linear`` it replaces."""

    def __init__(self, linear: torch.nn.Linear, attr: str = "none", algorithm: str = "") -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.attr, self.algorithm = attr, algorithm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != self.weight.dtype or torch.is_grad_enabled():
            y = F.linear(x, self.weight, self.bias)
            return (
                F.gelu(y, approximate=self.algorithm)
                if self.attr == "gelu"
                else F.relu(y)
                if self.attr == "relu"
                else y
            )
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.attr, [], self.algorithm)

    def extra_repr(self) -> str:
        act = "" if self.attr == "none" else f", fused {self.attr}" + (f" ({self.algorithm})" if self.algorithm else "")
        return f"in_features={self.in_features}, out_features={self.out_features}{act}"


def fuse_linears(model, *, plain: bool = True, activations: tuple[str, ...] = ("tanh", "none", "relu")) -> int:
    """Swap ``model``'s ``nn.Linear`` modules for `FusedLinear` in place; returns how many now run fused.

    ``activations``: which MLP activations to fold into the first MLP linear ("tanh": GELU tanh form,
    "none": exact GELU, "relu"); ``plain``: also swap linears not followed by one. In float32 the
    loaders pass ``plain=False, activations=("tanh",)`` on AVX-512 Intel CPUs, the defaults on AVX-512
    AMD ones and nothing on AVX2 ones (`fuse_linears_for`). 0 when the op is unavailable: the model is
    untouched. The swapped model computes on CPU through oneDNN and falls back to ``F.linear`` elsewhere
    or when gradients are enabled.
    """
    param = next(model.parameters(), None)
    if param is None or not fused_linear_available(param.dtype):
        return 0
    count = 0
    for module in list(model.modules()):
        spec = _MLPS.get(type(module).__name__)
        if spec is not None:
            lin_name, act_name = spec
            lin, act = getattr(module, lin_name, None), getattr(module, act_name, None)
            found = _activation(act) if isinstance(lin, torch.nn.Linear) and act is not None else None
            if found is not None and (found[1] or "relu") in activations:
                setattr(module, lin_name, FusedLinear(lin, *found))
                setattr(module, act_name, torch.nn.Identity())
                count += 1
        if plain:
            for name, child in list(module.named_children()):
                if type(child) is torch.nn.Linear:
                    setattr(module, name, FusedLinear(child))
                    count += 1
    return count


def fuse_linears_for(model, dtype) -> int:
    """`fuse_linears` with the policy measured per CPU kind (docs/models.md, "CPU fast path"):

    - bfloat16 / float16: every linear, MLP GELUs folded in (where oneDNN has the op in that dtype);
    - float32 on an AVX-512 Intel CPU (Xeon with AMX): only the tanh-GELU MLPs (SigLIP): MKL's float32
      GEMM beat oneDNN's elsewhere, and the separate tanh-GELU pass cost more than that;
    - float32 on an AVX-512 AMD CPU (EPYC Zen 4): every linear; oneDNN ran 1.05-1.43x faster than
      ``F.linear`` (MKL) + a separate GELU on every full-size encoder shape, DINOv2-L 1.31x and
      SigLIP-SO400M 1.18x faster as whole models;
    - float32 on an AVX2-only CPU (AMD EPYC): nothing; oneDNN's float32 linear ran at 0.82-0.97x of
      ``F.linear`` + a separate GELU on every full-size encoder shape, the tanh-GELU MLP included.
    """
    from om3db import hardware

    if dtype == torch.float32:
        cpu = hardware.detect_cpu()
        if cpu.capability != "AVX512":
            return 0
        if cpu.vendor != "AuthenticAMD":
            return fuse_linears(model, plain=False, activations=("tanh",))
    return fuse_linears(model)


def _rel_pos(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """(size, size, C) relative position embeddings for query x key positions (segment-anything's get_rel_pos)."""
    length = 2 * size - 1
    if rel_pos.shape[0] != length:
        rel_pos = (
            F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length, mode="linear")
            .reshape(-1, length)
            .permute(1, 0)
        )
    coords = torch.arange(size)[:, None] - torch.arange(size)[None, :] + (size - 1)
    return rel_pos[coords.to(rel_pos.device)]


def _sam_attention(self, *args, **kwargs):
    """SAM ViT attention with decomposed relative positions, as one SDPA call without a bias matrix.

    The bias ``q·Rh[qh, kh] + q·Rw[qw, kw]`` is a dot product of the per-query vector
    ``[q·Rh[qh, :], q·Rw[qw, :]]`` with the key's one-hot ``[e(kh), e(kw)]``, so it is appended to
    the head dimension of q and k and flash attention never builds the (heads, HW, HW) matrices.
    """
    x = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))  # transformers passes hidden_states=
    b, h, w, _ = x.shape
    heads = self.num_heads if hasattr(self, "num_heads") else self.num_attention_heads
    q, k, v = self.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    dim = q.shape[-1]
    scale = self.scale
    if self.use_rel_pos:
        rq = q.reshape(b, heads, h, w, dim)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", rq, _rel_pos(h, self.rel_pos_h).to(q.dtype))
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", rq, _rel_pos(w, self.rel_pos_w).to(q.dtype))
        key_h = torch.eye(h, dtype=q.dtype, device=q.device).repeat_interleave(w, 0)  # key j -> e(j // w)
        key_w = torch.eye(w, dtype=q.dtype, device=q.device).repeat(h, 1)  # key j -> e(j % w)
        q = torch.cat([q * scale, rel_h.reshape(b, heads, h * w, h), rel_w.reshape(b, heads, h * w, w)], dim=-1)
        k = torch.cat([k, key_h.expand(b, heads, -1, -1), key_w.expand(b, heads, -1, -1)], dim=-1)
        scale = 1.0
        v = F.pad(v, (0, q.shape[-1] - dim))  # CPU flash attention wants one head size for q, k and v
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)[..., :dim]
    out = self.proj(out.reshape(b, heads, h, w, dim).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))
    return (out, None) if type(self).__name__.startswith("SamVision") else out


def fuse_sam_attention(encoder) -> int:
    """Swap the attention of a SAM image encoder (segment-anything ``Attention`` or transformers
    ``SamVisionAttention``) for `_sam_attention`, in place; returns how many blocks were swapped."""
    import types

    count = 0
    for module in encoder.modules():
        if type(module).__name__ in ("Attention", "SamVisionAttention", "SamVisionSdpaAttention") and all(
            hasattr(module, a) for a in ("qkv", "proj", "scale", "use_rel_pos")
        ):
            module.forward = types.MethodType(_sam_attention, module)
            count += 1
    return count


def _channels_last_images(module, args, kwargs):
    """Pre-forward hook of a SAM two-way transformer: its image inputs in channels-last memory format.

    The transformer flattens (B, C, H, W) image embeddings to (B, HW, C) with a transpose; from the
    default layout that is a strided view, and every add / LayerNorm over the per-prompt copies of the
    64x64x256 embedding then ran on it at a fraction of memory speed (5-20x slower, profiled). From
    channels-last the (B, HW, C) view is contiguous: one copy here instead of slow passes everywhere.
    """
    cl = torch.channels_last
    args = tuple(
        a.contiguous(memory_format=cl) if i < 2 and torch.is_tensor(a) and a.dim() == 4 else a
        for i, a in enumerate(args)
    )
    for key in ("image_embeddings", "image_positional_embeddings", "image_embedding", "image_pe"):
        if torch.is_tensor(kwargs.get(key)) and kwargs[key].dim() == 4:
            kwargs[key] = kwargs[key].contiguous(memory_format=cl)
    return args, kwargs


def fuse_sam_decoder(model) -> int:
    """Make a SAM mask decoder's two-way transformer read its image inputs channels-last (segment-anything
    ``Sam`` or transformers ``SamModel``); returns 1 when a transformer was found, else 0. Outputs are
    unchanged (same arithmetic, another memory layout)."""
    transformer = getattr(getattr(model, "mask_decoder", None), "transformer", None)
    if transformer is None or getattr(transformer, "_om3db_channels_last", False):
        return 0
    transformer.register_forward_pre_hook(_channels_last_images, with_kwargs=True)
    transformer._om3db_channels_last = True
    return 1


# Patch embeddings that return a transposed view of their convolution's output. The residual stream
# inherits that layout (an add keeps its first input's strides), so every residual add and LayerNorm
# of the ViT ran strided and every LayerNorm copied its input first: in SigLIP and SAM about a fifth of
# the encoder's time (profiled). DINOv2's embedding (a concatenation) is already contiguous.
_TRANSPOSED_EMBEDDINGS = ("SiglipVisionEmbeddings", "PatchEmbed", "SamPatchEmbeddings")


def _contiguous_output(module, args, output):
    return output.contiguous() if torch.is_tensor(output) and not output.is_contiguous() else output


def contiguous_embeddings(model) -> int:
    """Make the patch embeddings of SigLIP / SAM image encoders return contiguous tensors (a forward hook);
    returns how many modules got the hook. Same values, another memory layout; any device."""
    count = 0
    for module in model.modules():
        if type(module).__name__ in _TRANSPOSED_EMBEDDINGS and not getattr(module, "_om3db_contiguous", False):
            module.register_forward_hook(_contiguous_output)
            module._om3db_contiguous = True
            count += 1
    return count
