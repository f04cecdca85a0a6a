from __future__ import annotations

import pytest
import torch
from impasto.engine.vgg import VGGFeatures, layer_names


def test_layer_names_follow_vgg19():
    names = layer_names()
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert len(names) == 16 * 2 + 5 and names[-1] == "pool5"


def test_truncated_after_deepest_layer_and_frozen(original_weights):
    net = VGGFeatures(original_weights, ["relu1_1", "relu3_1"])
    assert net.names[-1] == "relu3_1"
    assert not any(p.requires_grad for p in net.parameters())
    image = torch.rand(1, 3, 24, 24, requires_grad=True)
    features = net(image)
    assert set(features) == {"relu1_1", "relu3_1"}
    assert features["relu3_1"].shape == (1, 256, 6, 6)
    features["relu3_1"].sum().backward()
    assert image.grad is not None and all(p.grad is None for p in net.parameters())


def test_taps_before_and_after_relu(original_weights):
    features = VGGFeatures(original_weights, ["conv2_1", "relu2_1"])(torch.rand(1, 3, 16, 16))
    assert features["conv2_1"].min() < 0
    assert torch.equal(features["relu2_1"], features["conv2_1"].clamp_min(0))


def test_average_pooling(original_weights):
    image = torch.rand(1, 3, 16, 16)
    max_pooled = VGGFeatures(original_weights, ["conv2_1"], "max")(image)["conv2_1"]
    avg_pooled = VGGFeatures(original_weights, ["conv2_1"], "avg")(image)["conv2_1"]
    assert max_pooled.shape == avg_pooled.shape and not torch.allclose(max_pooled, avg_pooled)


def test_unknown_layer_is_named(original_weights):
    with pytest.raises(ValueError, match="relu9_9"):
        VGGFeatures(original_weights, ["relu9_9"])
