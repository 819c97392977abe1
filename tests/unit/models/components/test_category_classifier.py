import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestCentroid

from anomaly_diff.errors import NotFittedError
from anomaly_diff.models.components.backbone import DEFAULT_WEIGHTS, create_pretrained_model
from anomaly_diff.models.components.category_classifier import CategoryClassifier

# Three "categories": crops of three different pictures (scikit-image's own files, offline).
PICTURES = ("coffee", "chelsea", "astronaut")


def crops(name: str, n: int, seed: int, size: int = 64) -> torch.Tensor:
    """``n`` random ``size`` px crops, in ``[0, 1]``, of a quarter-resolution scikit-image picture."""
    image = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
    image = F.interpolate(image, scale_factor=0.25, mode="area")[0]
    rng = np.random.default_rng(seed)
    tops = rng.integers(0, image.shape[1] - size, n)
    lefts = rng.integers(0, image.shape[2] - size, n)
    return torch.stack([image[:, t : t + size, s : s + size] for t, s in zip(tops, lefts, strict=True)])


def batches(seed: int, n: int = 6):
    """Two batches per picture: images and category names."""
    out = []
    for name in PICTURES:
        images = crops(name, n, seed)
        out += [{"image": images[: n // 2], "category": [name] * (n // 2)},
                {"image": images[n // 2 :], "category": [name] * (n - n // 2)}]
    return out


def class_indices(names):
    return torch.tensor([PICTURES.index(name) for name in names])


@pytest.fixture(scope="module")
def fitted():
    classifier = CategoryClassifier(len(PICTURES))
    classifier.fit(batches(seed=0), class_indices)
    return classifier


def test_features_are_the_pooled_normalised_deepest_stage_of_the_pretrained_network(fitted):
    images = crops("coffee", 2, seed=5)
    network = create_pretrained_model("tf_efficientnet_lite0", DEFAULT_WEIGHTS)
    mean = torch.tensor(network.pretrained_cfg["mean"]).reshape(1, 3, 1, 1)
    std = torch.tensor(network.pretrained_cfg["std"]).reshape(1, 3, 1, 1)
    with torch.no_grad():  # the network run by hand: stem, then every block (the last ends the 320-channel stage)
        x = network.bn1(network.conv_stem((images - mean) / std))
        x = network.blocks(x)
    expected = F.normalize(x.mean(dim=(2, 3)), dim=1)
    assert x.shape[1] == 320
    torch.testing.assert_close(fitted.embed(images), expected, rtol=1e-5, atol=1e-6)


def test_class_means_and_decisions_match_an_independent_nearest_centroid(fitted):
    train = batches(seed=0)
    features = torch.cat([fitted.embed(b["image"]) for b in train]).double().numpy()
    labels = np.concatenate([class_indices(b["category"]).numpy() for b in train])
    reference = NearestCentroid().fit(features, labels)
    np.testing.assert_allclose(fitted.class_means.numpy(), reference.centroids_, rtol=1e-6, atol=1e-7)

    test = batches(seed=1)
    images = torch.cat([b["image"] for b in test])
    truth = np.concatenate([class_indices(b["category"]).numpy() for b in test])
    test_features = fitted.embed(images).double().numpy()
    centroids = reference.centroids_ / np.linalg.norm(reference.centroids_, axis=1, keepdims=True)
    expected = (test_features @ centroids.T).argmax(axis=1)  # nearest by cosine
    assert fitted(images).tolist() == expected.tolist()
    # on these clearly different pictures cosine and sklearn's Euclidean nearest centroid agree, and both are right
    assert expected.tolist() == reference.predict(test_features).tolist() == truth.tolist()


def test_means_do_not_depend_on_how_the_images_are_batched(fitted):
    images = torch.cat([b["image"] for b in batches(seed=0)])
    names = [name for b in batches(seed=0) for name in b["category"]]
    one_batch = CategoryClassifier(len(PICTURES))
    counts = one_batch.fit([{"image": images, "category": names}], class_indices)
    assert counts.tolist() == [6, 6, 6]
    torch.testing.assert_close(one_batch.class_means, fitted.class_means, rtol=1e-6, atol=1e-7)


def test_unfitted_classes_keep_their_means_and_are_never_predicted(fitted):
    partial = CategoryClassifier(len(PICTURES))
    partial.fit([b for b in batches(seed=0) if b["category"][0] != "chelsea"], class_indices)
    assert partial.fitted.tolist() == [True, False, True]
    assert 1 not in partial(crops("chelsea", 4, seed=2)).tolist()
    partial.fit([b for b in batches(seed=0) if b["category"][0] == "chelsea"], class_indices)
    torch.testing.assert_close(partial.class_means, fitted.class_means)


def test_unfitted_classifier_says_to_retrain():
    with pytest.raises(NotFittedError, match=r"never fitted, or its checkpoint predates category prediction; retrain"):
        CategoryClassifier(2)(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no image"):
        CategoryClassifier(2).fit([], class_indices)


def test_state_dict_holds_the_means_only_and_old_state_dicts_load_unfitted(fitted):
    state = fitted.state_dict()
    assert list(state) == ["class_means"] and state["class_means"].shape == (3, 320)
    restored = CategoryClassifier(len(PICTURES))
    restored.load_state_dict(state)  # strict: the backbone is the module's own
    assert torch.equal(restored.class_means, fitted.class_means)
    restored.load_state_dict({})  # a state dict from before category prediction
    assert not restored.fitted.any()


def test_building_it_leaves_the_random_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    CategoryClassifier(2)
    assert torch.equal(torch.rand(3), expected)
