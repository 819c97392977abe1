import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_diff.data import synthetic
from anomaly_diff.data.synthetic import (
    DEFECT_TYPES,
    EMBEDDED_CATEGORIES,
    MANIFEST_NAME,
    apply_defect,
    generate_embedded_dataset,
    main,
    normal_image,
)

SMALL = {"seed": 3, "image_size": 64, "num_train": 3, "num_test_good": 2, "num_test_defective": 5,
         "categories": ["coffee", "brick"]}
# 5 defective images over the 4 sorted defect types: the first type gets the extra one.
SMALL_DEFECT_COUNTS = {"deformation": 2, "patch": 1, "scratch": 1, "stain": 1}


def relative_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def file_bytes(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in relative_files(root)}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate_embedded_dataset(tmp_path_factory.mktemp("small") / "data", **SMALL)


def test_constants():
    assert list(EMBEDDED_CATEGORIES) == sorted(EMBEDDED_CATEGORIES) and len(EMBEDDED_CATEGORIES) >= 4
    assert {"brick", "grass", "gravel"} <= set(EMBEDDED_CATEGORIES)
    assert list(DEFECT_TYPES) == sorted(DEFECT_TYPES) == ["deformation", "patch", "scratch", "stain"]


def test_exact_mvtec_layout_and_counts(small_set):
    expected = {MANIFEST_NAME}
    for category in ["brick", "coffee"]:
        expected |= {f"{category}/train/good/{i:03d}.png" for i in range(3)}
        expected |= {f"{category}/test/good/{i:03d}.png" for i in range(2)}
        for defect, count in SMALL_DEFECT_COUNTS.items():
            expected |= {f"{category}/test/{defect}/{i:03d}.png" for i in range(count)}
            expected |= {f"{category}/ground_truth/{defect}/{i:03d}_mask.png" for i in range(count)}
    assert relative_files(small_set) == expected

    manifest = json.loads((small_set / MANIFEST_NAME).read_text())
    assert manifest["parameters"] == {**SMALL, "categories": ["brick", "coffee"]}
    assert manifest["counts"]["coffee"] == {"train/good": 3, "test/good": 2,
                                            **{f"test/{d}": n for d, n in SMALL_DEFECT_COUNTS.items()}}


def test_images_are_rgb_and_masks_binary_nonempty_same_size(small_set):
    for path in small_set.rglob("*.png"):
        with Image.open(path) as image:
            assert image.size == (64, 64), path
            if path.parent.parent.name == "ground_truth":
                values = np.unique(np.asarray(image))
                assert image.mode == "L" and set(values) <= {0, 255} and 255 in values, path
            else:
                assert image.mode == "RGB", path
    for category in ["brick", "coffee"]:
        assert not (small_set / category / "ground_truth" / "good").exists()


def test_same_seed_is_byte_identical_and_other_seed_differs(small_set, tmp_path):
    again = generate_embedded_dataset(tmp_path / "again", **SMALL)
    assert file_bytes(again) == file_bytes(small_set)

    other = file_bytes(generate_embedded_dataset(tmp_path / "other", **{**SMALL, "seed": 4}))
    reference = file_bytes(small_set)
    images = [name for name in reference if name.endswith(".png") and "ground_truth" not in name]
    assert all(other[name] != reference[name] for name in images)


def test_a_category_does_not_depend_on_the_others(small_set, tmp_path):
    alone = file_bytes(generate_embedded_dataset(tmp_path / "alone", **{**SMALL, "categories": ["coffee"]}))
    together = file_bytes(small_set)
    coffee = [name for name in together if name.startswith("coffee/")]
    assert coffee and all(alone[name] == together[name] for name in coffee)


def test_stored_defective_image_differs_from_its_normal_image_exactly_on_the_mask(small_set):
    """Regenerate each defective image's defect-free original (same per-image seed) and compare with the files."""
    offset = 0
    for defect, count in SMALL_DEFECT_COUNTS.items():
        for index in range(count):
            rng = synthetic._image_rng(SMALL["seed"], "brick", synthetic._TEST_DEFECT, offset + index)
            clean = normal_image("brick", rng, SMALL["image_size"])
            stored = np.asarray(Image.open(small_set / "brick" / "test" / defect / f"{index:03d}.png"))
            mask = np.asarray(Image.open(small_set / "brick" / "ground_truth" / defect / f"{index:03d}_mask.png")) > 0
            assert np.array_equal(stored[~mask], clean[~mask]), (defect, index)
            assert (stored != clean).any(-1)[mask].mean() >= 0.5, (defect, index)
        offset += count


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
@pytest.mark.parametrize("seed", range(6))
def test_apply_defect_changes_only_the_masked_pixels(defect_type, seed):
    rng = np.random.default_rng(seed)
    image = normal_image("gravel", rng, 64)
    donor = normal_image("coins", rng, 64)
    before = image.copy()
    defected, mask = apply_defect(image, defect_type, rng, donor)
    assert np.array_equal(image, before), "the input must not be modified"
    assert defected.shape == image.shape and defected.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == bool and mask.any()
    assert np.array_equal(defected[~mask], image[~mask])
    changed = (defected != image).any(-1)
    assert changed[mask].mean() >= 0.5, "most masked pixels must visibly change"


def test_defect_sizes_range_from_small_to_large():
    areas = {d: [] for d in DEFECT_TYPES}
    for seed in range(24):
        rng = np.random.default_rng(seed)
        image, donor = normal_image("grass", rng, 128), normal_image("brick", rng, 128)
        for defect in DEFECT_TYPES:
            areas[defect].append(apply_defect(image, defect, rng, donor)[1].mean())
    for defect, fractions in areas.items():
        assert min(fractions) < 0.01, defect  # small ones included
        assert max(fractions) > 4 * min(fractions), defect
        assert max(fractions) < 0.3, defect


def test_apply_defect_rejects_bad_input():
    image = np.zeros((32, 32, 3), np.uint8)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="'crack'"):
        apply_defect(image, "crack", rng)
    with pytest.raises(ValueError, match="patch.*donor"):
        apply_defect(image, "patch", rng)
    with pytest.raises(ValueError, match="donor"):
        apply_defect(image, "patch", rng, donor=np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        apply_defect(image.astype(np.float32), "stain", rng)


def test_matching_manifest_skips_all_work(small_set, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the manifest matched")

    monkeypatch.setattr(synthetic, "_write_category", fail)
    assert generate_embedded_dataset(small_set, **{**SMALL, "categories": ["brick", "coffee"]}) == small_set


def test_other_parameters_replace_an_earlier_embedded_set(tmp_path):
    params = {"image_size": 32, "num_train": 1, "num_test_good": 1, "num_test_defective": 1, "categories": ["grass"]}
    root = generate_embedded_dataset(tmp_path / "data", seed=0, **params)
    old = file_bytes(root)
    generate_embedded_dataset(root, seed=1, **params)
    assert json.loads((root / MANIFEST_NAME).read_text())["parameters"]["seed"] == 1
    assert file_bytes(root)["grass/train/good/000.png"] != old["grass/train/good/000.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "no staging or retired directory is left"


def test_an_existing_empty_directory_is_filled(tmp_path):
    (tmp_path / "data").mkdir()
    root = generate_embedded_dataset(tmp_path / "data", image_size=32, num_train=1, num_test_good=0,
                                     num_test_defective=0, categories=["brick"])
    assert relative_files(root) == {MANIFEST_NAME, "brick/train/good/000.png"}


def test_refuses_to_overwrite_user_data(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=str(root)):
        generate_embedded_dataset(root, image_size=32, num_train=1)
    assert relative_files(root) == {"notes.txt"}

    (root / MANIFEST_NAME).write_text(json.dumps({"generator": "someone else"}))
    with pytest.raises(FileExistsError, match="not written by anomaly_diff.data.synthetic"):
        generate_embedded_dataset(root, image_size=32, num_train=1)
    (root / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(FileExistsError, match="not valid JSON"):
        generate_embedded_dataset(root, image_size=32, num_train=1)
    assert (root / "notes.txt").read_text() == "keep me"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match=str(a_file)):
        generate_embedded_dataset(a_file, image_size=32, num_train=1)


def test_interrupted_generation_leaves_no_data_set(tmp_path, monkeypatch):
    write_category = synthetic._write_category

    def interrupted(directory, category, params):
        if category == "grass":
            raise KeyboardInterrupt
        return write_category(directory, category, params)

    monkeypatch.setattr(synthetic, "_write_category", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_embedded_dataset(tmp_path / "data", image_size=32, num_train=1, categories=["brick", "grass"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"categories": ["brick", "carpet"]}, "carpet"),
        ({"categories": ["brick", "brick"]}, "distinct"),
        ({"categories": []}, "categories"),
        ({"image_size": 16}, "image_size must be at least 32, got 16"),
        ({"num_train": 0}, "num_train >= 1"),
        ({"num_test_defective": -1}, "num_test_defective >= 0"),
    ],
)
def test_invalid_parameters_are_named(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        generate_embedded_dataset(tmp_path / "data", **override)
    assert not (tmp_path / "data").exists()


def test_normal_images_vary_but_stay_one_object():
    images = [normal_image("coins", np.random.default_rng(seed), 64).astype(float) for seed in range(4)]
    differences = [np.abs(images[0] - other).mean() for other in images[1:]]
    assert all(d > 0 for d in differences)
    # The same coin in nearly the same place: much closer than two random crops of a texture.
    textures = [normal_image("gravel", np.random.default_rng(seed), 64).astype(float) for seed in range(4)]
    assert max(differences) < min(np.abs(textures[0] - other).mean() for other in textures[1:])


def test_command_line_writes_the_set_and_prints_its_path(tmp_path, capsys):
    output = tmp_path / "cli"
    status = main(["--output", str(output), "--seed", "5", "--image-size", "32", "--num-train", "2",
                   "--num-test-good", "1", "--num-test-defective", "4", "--categories", "gravel"])
    assert status == 0
    assert capsys.readouterr().out.strip() == str(output.absolute())
    manifest = json.loads((output / MANIFEST_NAME).read_text())
    assert manifest["parameters"] == {"seed": 5, "image_size": 32, "num_train": 2, "num_test_good": 1,
                                      "num_test_defective": 4, "categories": ["gravel"]}
    assert len(list((output / "gravel" / "ground_truth").rglob("*_mask.png"))) == 4
