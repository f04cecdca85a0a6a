"""Each loss against an independent computation written here in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from impasto.engine.losses import Targets, content_loss, gram, style_loss, total_loss, tv_loss
from impasto.engine.recipes import SEED
from impasto.engine.vgg import VGGFeatures, layer_names


@pytest.fixture
def maps() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 8, 5, 7, generator=g), torch.randn(1, 8, 5, 7, generator=g)


def numpy_gram(x: np.ndarray) -> np.ndarray:
    c, h, w = x.shape[1:]
    out = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            out[i, j] = np.sum(x[0, i] * x[0, j])
    return out / (c * h * w)


def test_content_loss_is_mean_squared_error(maps):
    a, b = maps
    expected = np.mean((a.numpy().astype(np.float64) - b.numpy()) ** 2)
    assert content_loss(a, b).item() == pytest.approx(expected, rel=1e-6)


def test_content_target_is_detached(maps):
    a, b = maps
    b.requires_grad_(True)
    content_loss(a.requires_grad_(True), b).backward()
    assert b.grad is None


def test_gram_is_xxt_over_chw(maps):
    a, _ = maps
    assert np.allclose(gram(a).numpy(), numpy_gram(a.numpy()), rtol=1e-5, atol=1e-7)


def test_gram_is_float32_under_bf16(maps):
    a, _ = maps
    assert gram(a.bfloat16()).dtype == torch.float32


def test_style_loss_is_mse_of_grams(maps):
    a, b = maps
    expected = np.mean((numpy_gram(a.numpy()) - numpy_gram(b.numpy())) ** 2)
    assert style_loss(a, gram(b)).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_style_loss_gradient_matches_autograd_of_the_formula(layout):
    generator = torch.Generator().manual_seed(3)
    features = torch.rand(1, 6, 5, 7, generator=generator).contiguous(memory_format=layout)
    target = torch.rand(6, 6, generator=generator)  # not symmetric: the gradient must not assume it
    features.requires_grad_(True)
    (grad,) = torch.autograd.grad(style_loss(features, target), features)
    exact = features.detach().double().requires_grad_(True)
    flat = exact.reshape(6, -1)
    (expected,) = torch.autograd.grad(torch.square(flat @ flat.T / flat.numel() - target).mean(), exact)
    assert torch.allclose(grad.double(), expected, rtol=1e-5, atol=1e-12)
    assert grad.is_contiguous(memory_format=layout)


def test_style_loss_gradient_keeps_bf16_channels_last_features_as_they_are():
    generator = torch.Generator().manual_seed(4)
    features = torch.rand(1, 16, 8, 8, generator=generator).to(torch.bfloat16)
    features = features.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    target = gram(torch.rand(1, 16, 8, 8, generator=generator))
    (grad,) = torch.autograd.grad(style_loss(features, target), features)
    assert grad.dtype == torch.bfloat16 and grad.is_contiguous(memory_format=torch.channels_last)
    exact = features.detach().double().requires_grad_(True)
    flat = exact.reshape(16, -1)
    (expected,) = torch.autograd.grad(torch.square(flat @ flat.T / flat.numel() - target).mean(), exact)
    assert torch.allclose(grad.double(), expected, rtol=2e-2, atol=1e-3 * expected.abs().max().item())


def test_tv_loss_is_half_mean_abs_differences(maps):
    image = maps[0][:, :3]
    x = image.numpy().astype(np.float64)
    vertical = np.mean(np.abs(x[:, :, 1:, :] - x[:, :, :-1, :]))
    horizontal = np.mean(np.abs(x[:, :, :, 1:] - x[:, :, :, :-1]))
    assert tv_loss(image).item() == pytest.approx(0.5 * (vertical + horizontal), rel=1e-6)


def test_seed_recipe_matches_d2l_compute_loss(original_weights):
    """The seed sums `10 * styles_l + contents_l + [tv_l]`: the style list ten times over."""
    net = VGGFeatures(original_weights, SEED.layers)
    g = torch.Generator().manual_seed(3)
    image, content_image, style_image = (torch.rand(1, 3, 32, 40, generator=g) for _ in range(3))
    with torch.no_grad():
        features, content, style = net(image), net(content_image), net(style_image)

    styles_l = [style_loss(features[k], gram(style[k])) * 1e3 for k in SEED.style_layers]
    contents_l = [content_loss(features[k], content[k]) * 1 for k in SEED.content_layers]
    tv_l = tv_loss(image / 0.226) * 10  # d2l's pixels are divided by ImageNet's std
    d2l_total = sum(10 * styles_l + contents_l + [tv_l])

    targets = Targets(
        content={k: content[k] for k in SEED.content_layers},
        content_weights=dict(SEED.content_layers),
        style_grams={k: gram(style[k]) for k in SEED.style_layers},
        style_weights={k: SEED.style_weight * w for k, w in SEED.style_layers.items()},
        tv_weight=SEED.tv_weight,
    )
    assert total_loss(image, features, targets).total.item() == pytest.approx(d2l_total.item(), rel=1e-5)
    # d2l's layer indices 0, 5, 10, 19, 28 and 25 in torchvision's `features` are these convolutions.
    assert [layer_names()[i] for i in (0, 5, 10, 19, 28, 25)] == [
        "conv1_1",
        "conv2_1",
        "conv3_1",
        "conv4_1",
        "conv5_1",
        "conv4_4",
    ]
