"""FlexiViT: PI-resize of the patch embedding, position-embedding resampling, multi-patch forward."""

import pytest
import torch
import torch.nn.functional as F

from jestkit.errors import JestkitError
from jestkit.models import create_model, pi_resize_patch_embed, resample_pos_embed
from jestkit.models.vit import _PI_RESIZE_CACHE, bilinear_resize_matrix, pi_resize_matrix


def per_patch_resize(images: torch.Tensor, p: int, new: int) -> torch.Tensor:
    """Bilinearly resize every p x p patch of ``images`` to new x new on its own (FlexiViT's definition)."""
    b, c, h, w = images.shape
    gh, gw = h // p, w // p
    patches = images.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, p, p)
    patches = F.interpolate(
        patches, size=(new, new), mode="bilinear", align_corners=False, antialias=True
    )
    patches = patches.reshape(b, gh, gw, c, new, new).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, c, gh * new, gw * new)


def tokens(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    p = kernel.shape[-1]
    return F.conv2d(images, kernel, stride=p).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("old,new", [(4, 8), (7, 14), (4, 6), (3, 7)])
def test_pi_resize_upsampled_patches_give_same_tokens(old, new, gen):
    # The PI-resize property: a kernel resized p -> P applied to the image whose patches were
    # bilinearly upsampled p -> P gives the original tokens (exact up to float error).
    kernel = torch.randn(16, 3, old, old, generator=gen, dtype=torch.float64)
    images = torch.randn(2, 3, old * 4, old * 3, generator=gen, dtype=torch.float64)
    up = per_patch_resize(images, old, new)
    assert up.shape == (2, 3, new * 4, new * 3)
    want = tokens(images, kernel)
    got = tokens(up, pi_resize_patch_embed(kernel, new))
    assert got.shape == want.shape == (2, 12, 16)  # the token count does not change
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_pi_resize_float32_within_tolerance(gen):
    kernel = torch.randn(32, 1, 7, 7, generator=gen)
    images = torch.randn(3, 1, 56, 56, generator=gen)
    got = tokens(per_patch_resize(images, 7, 14), pi_resize_patch_embed(kernel, 14))
    torch.testing.assert_close(got, tokens(images, kernel), rtol=1e-4, atol=1e-4)


def test_nearest_2x_upsampling_is_not_the_definition(gen):
    # Documented choice: the property holds for *bilinear* per-patch resizing (FlexiViT's B), not for
    # nearest-neighbour 2x upsampling (a different resize operator).
    kernel = torch.randn(8, 1, 4, 4, generator=gen, dtype=torch.float64)
    images = torch.randn(1, 1, 16, 16, generator=gen, dtype=torch.float64)
    nearest = F.interpolate(images, scale_factor=2, mode="nearest")
    got = tokens(nearest, pi_resize_patch_embed(kernel, 8))
    assert not torch.allclose(got, tokens(images, kernel), atol=1e-3)


def test_resize_matrix_is_bilinear_resize(gen):
    patch = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    for new in (3, 5, 8, 10):
        mat = bilinear_resize_matrix(5, new)
        want = F.interpolate(
            patch[None, None], size=(new, new), mode="bilinear", align_corners=False, antialias=True
        )
        torch.testing.assert_close((mat @ patch.flatten()).reshape(new, new), want[0, 0])


def test_pi_resize_downsampling_is_least_squares(gen):
    # For P < p, pinv gives argmin_w' ||B^T w' - w||: compare with a direct least-squares solve.
    kernel = torch.randn(6, 2, 8, 8, generator=gen, dtype=torch.float64)
    got = pi_resize_patch_embed(kernel, 4)
    bt = bilinear_resize_matrix(8, 4).T  # [64, 16]
    want = torch.linalg.lstsq(bt, kernel.reshape(-1, 64).T).solution.T.reshape(6, 2, 4, 4)
    torch.testing.assert_close(got, want)


def test_pi_resize_identity_grad_and_errors(gen):
    kernel = torch.randn(4, 1, 4, 4, generator=gen, requires_grad=True)
    assert pi_resize_patch_embed(kernel, 4) is kernel
    pi_resize_patch_embed(kernel, 8).square().sum().backward()
    assert kernel.grad is not None and kernel.grad.abs().sum() > 0
    with pytest.raises(JestkitError, match=r"\[4, 5\]|\(4, 5\)"):
        pi_resize_patch_embed(torch.zeros(4, 5), 2)
    with pytest.raises(JestkitError, match="new_patch_size=0"):
        pi_resize_patch_embed(kernel, 0)


def test_pi_resize_keeps_full_precision_under_autocast(gen):
    kernel = torch.randn(8, 1, 7, 7, generator=gen)
    want = pi_resize_patch_embed(kernel, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pi_resize_patch_embed(kernel, 14)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


def test_resize_matrix_cache_keyed_by_sizes_and_dtype():
    a = pi_resize_matrix(5, 9, "cpu", torch.float32)
    assert pi_resize_matrix(5, 9, "cpu", torch.float32) is a
    b = pi_resize_matrix(5, 9, "cpu", torch.float64)
    assert b is not a and b.dtype == torch.float64 and a.shape == (81, 25)
    assert (5, 9, "cpu", torch.float32) in _PI_RESIZE_CACHE


def test_resample_pos_embed(gen):
    pos = torch.randn(1, 64, 8, generator=gen)
    assert resample_pos_embed(pos, 8) is pos
    const = torch.ones(1, 64, 8) * torch.arange(8.0)
    torch.testing.assert_close(
        resample_pos_embed(const, 2), torch.ones(1, 4, 8) * torch.arange(8.0)
    )
    # Downsampling 8 -> 4 (antialiased bilinear = a triangle filter stretched 2x, renormalised at
    # the borders) is separable: compare with the 1-D weights written out by hand.
    r = torch.zeros(4, 8)
    for i in range(4):
        centre = 2 * i + 0.5
        for j in range(8):
            r[i, j] = max(0.0, 1 - abs(j - centre) / 2)
    r = r / r.sum(dim=1, keepdim=True)
    grid = pos.reshape(8, 8, 8)
    want = torch.einsum("ai,bj,ijd->abd", r, r, grid).reshape(1, 16, 8)
    torch.testing.assert_close(resample_pos_embed(pos, 4), want)
    with pytest.raises(JestkitError, match="10 position embeddings"):
        resample_pos_embed(torch.zeros(1, 10, 4), 2)


def test_patch_embed_equals_naive_loop(gen):
    # Fast path (conv with the PI-resized kernel) equals an explicit loop over patches.
    model = create_model("vit-tiny-56")
    pe = model.visual.patch_embed
    images = torch.randn(2, 1, 56, 56, generator=gen)
    for p in model.patch_sizes:
        got = pe(images, p)
        kernel = pi_resize_patch_embed(pe.weight, p)
        g = 56 // p
        want = torch.empty(2, g * g, kernel.shape[0])
        for i in range(g):
            for j in range(g):
                patch = images[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p]
                want[:, i * g + j] = torch.einsum("bchw,dchw->bd", patch, kernel) + pe.bias
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert model.visual.num_tokens(p) == g * g


@torch.no_grad()
def test_flexivit_every_patch_size(gen):
    model = create_model("vit-tiny-32c")
    keys = set(model.state_dict())
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=gen)
    outs = {p: model.encode_image(images, patch_size=p) for p in model.patch_sizes}
    for out in outs.values():
        assert out.shape == (3, model.embed_dim)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(outs[4], outs[8])
    torch.testing.assert_close(model.encode_image(images), outs[4])  # None = full resolution
    # The resize cache is never part of the model's state.
    assert set(model.state_dict()) == keys and not list(model.buffers())
    for bad in (5, 2, 32):
        with pytest.raises(JestkitError, match=f"patch_size={bad}"):
            model.encode_image(images, patch_size=bad)


def test_low_res_training_reaches_stored_weights(gen):
    model = create_model("vit-tiny-28")
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=gen)
    model.encode_image(images, patch_size=7).sum().backward()
    assert model.visual.patch_embed.weight.grad.abs().sum() > 0
    assert model.visual.pos_embed.grad.abs().sum() > 0


@torch.no_grad()
def test_cls_and_map_pooling(gen):
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=gen)
    for pooling in ("cls", "map"):
        model = create_model("vit-tiny-28", pooling=pooling)
        assert model.visual.num_tokens(7) == 16 + (pooling == "cls")
        for p in model.patch_sizes:
            out = model.encode_image(images, p)
            assert out.shape == (2, 64) and torch.isfinite(out).all()
        # Batch independence: an image's embedding does not depend on its batch neighbours.
        torch.testing.assert_close(
            model.encode_image(images[:1], 7), model.encode_image(images, 7)[:1]
        )
