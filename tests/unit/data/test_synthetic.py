import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from anomaly_diff.data import synthetic
from anomaly_diff.data.synthetic import (
    DEFECT_TYPES,
    DIFFICULTIES,
    EMBEDDED_CATEGORIES,
    MANIFEST_NAME,
    apply_defect,
    generate_embedded_dataset,
    is_grayscale,
    main,
    normal_image,
)
from anomaly_diff.errors import OutputPathError

SMALL = {"seed": 3, "image_size": 64, "num_train": 3, "num_test_good": 2, "num_test_defective": 6,
         "categories": ["coffee", "brick"]}
# 6 defective images over the 5 sorted realistic defect types: the first type gets the extra one.
SMALL_DEFECT_COUNTS = {"contamination": 2, "crack": 1, "hole": 1, "scratch": 1, "stain": 1}
ALL_DEFECT_TYPES = [(difficulty, name) for difficulty in DIFFICULTIES for name in DEFECT_TYPES[difficulty]]


def relative_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def file_bytes(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in relative_files(root)}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate_embedded_dataset(tmp_path_factory.mktemp("small") / "data", **SMALL)


def test_constants():
    assert list(EMBEDDED_CATEGORIES) == sorted(EMBEDDED_CATEGORIES) and len(EMBEDDED_CATEGORIES) >= 8
    assert {"brick", "coffee", "coins", "grass", "gravel"} <= set(EMBEDDED_CATEGORIES)
    assert DIFFICULTIES == ("hard", "realistic") and set(DEFECT_TYPES) == set(DIFFICULTIES)
    assert list(DEFECT_TYPES["hard"]) == ["deformation", "patch", "scratch", "stain"]
    assert list(DEFECT_TYPES["realistic"]) == sorted(DEFECT_TYPES["realistic"]) and len(DEFECT_TYPES["realistic"]) >= 4
    gray = [name for name in EMBEDDED_CATEGORIES if is_grayscale(name)]
    assert 2 <= len(gray) < len(EMBEDDED_CATEGORIES)


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_gray_categories_have_equal_channels_in_every_image(tmp_path, difficulty):
    gray = [name for name in EMBEDDED_CATEGORIES if is_grayscale(name)]
    root = generate_embedded_dataset(tmp_path / "data", seed=2, image_size=32, num_train=2, num_test_good=1,
                                     num_test_defective=len(DEFECT_TYPES[difficulty]), categories=gray,
                                     difficulty=difficulty)
    for path in root.rglob("*.png"):
        if "ground_truth" not in path.parts:
            image = np.asarray(Image.open(path))
            assert image.ndim == 3 and (image == image[..., :1]).all(), path
    colour = normal_image("tissue", np.random.default_rng(0), 32)
    assert not (colour == colour[..., :1]).all()


# sha256 of version 1's files (generator version 1, before the difficulty existed) at these parameters: the hard
# preset must keep writing them byte for byte.
VERSION_1 = {"seed": 3, "image_size": 64, "num_train": 2, "num_test_good": 2, "num_test_defective": 4,
             "categories": ["brick", "coffee", "coins", "grass", "gravel"]}
VERSION_1_DIGEST = "ab57d4fbf9e00bd87b666255e1d0a1e42d234ca7e2b1528c85b010091301a940"  # all 60 PNGs, see below
VERSION_1_FILES = {
    "brick/train/good/000.png": "50b1e5ea745547f8ad5c5a59d2899db454dd23bf84add74c4638e4d6ee9bb142",
    "coffee/test/good/001.png": "08c630dc330524b2cc1b8f453abc32c5321681c6924d74930ea5bb609365c806",
    "coins/test/deformation/000.png": "f9b8caf148e4ff2f01859829f3857bf811682d540ba848752272681de48ab763",
    "coins/ground_truth/deformation/000_mask.png": "77c0e8142a8b6851592eadec5827bf6c493b49c4fe0f547e6ce7c973225f601e",
    "grass/test/patch/000.png": "0b340888703cd9c55fdc9cdc35d0af8accf1b26339dd6c4f0327bb72e3ae12b5",
    "grass/ground_truth/patch/000_mask.png": "101cd7c90d3a77759f14d090659c738ff15ff155e945c1f5f85bdbf368b4cb13",
    "gravel/test/scratch/000.png": "8ca2912737b6887570a5739e0f39d82a43898cb04a4a4e199f9fc999f1a2bc9e",
    "gravel/ground_truth/scratch/000_mask.png": "3b48a7e35b6a180329c61c8be4411aca4c8925312b3e9759439a13e7843575cc",
    "brick/test/stain/000.png": "3caacd4c2679d0983c61b47ac1506726c67401906936ea8c8825272ec6d93814",
    "brick/ground_truth/stain/000_mask.png": "59c008d0164fc87e54baecb7943db9a34f71db72db87a5d23abb37067e42c0d0",
}


def test_hard_preset_writes_version_1_files_byte_for_byte(tmp_path):
    root = generate_embedded_dataset(tmp_path / "hard", difficulty="hard", **VERSION_1)
    pngs = sorted(root.rglob("*.png"))
    for name, expected in VERSION_1_FILES.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == expected, name
    digest = hashlib.sha256()  # over (relative path, sha256 of the file) of every PNG in path order
    for path in pngs:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    assert len(pngs) == 60 and digest.hexdigest() == VERSION_1_DIGEST


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
    assert manifest["parameters"] == {**SMALL, "categories": ["brick", "coffee"], "difficulty": "realistic"}
    assert manifest["defect_types"] == list(DEFECT_TYPES["realistic"])
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
    """Regenerate each defective image's defect-free original (same per-image seed) and compare with the files.

    Realistic masks are exactly the changed pixels.
    """
    offset = 0
    for defect, count in SMALL_DEFECT_COUNTS.items():
        for index in range(count):
            rng = synthetic._image_rng(SMALL["seed"], "brick", synthetic._TEST_DEFECT, offset + index)
            clean = normal_image("brick", rng, SMALL["image_size"])
            stored = np.asarray(Image.open(small_set / "brick" / "test" / defect / f"{index:03d}.png"))
            mask = np.asarray(Image.open(small_set / "brick" / "ground_truth" / defect / f"{index:03d}_mask.png")) > 0
            assert mask.any() and np.array_equal((stored != clean).any(-1), mask), (defect, index)
        offset += count


@pytest.mark.parametrize(("difficulty", "defect_type"), ALL_DEFECT_TYPES)
@pytest.mark.parametrize(("seed", "category"), enumerate(["gravel", "coins", "camera", "tissue", "grass", "cell"]))
def test_apply_defect_changes_only_the_masked_pixels(difficulty, defect_type, seed, category):
    rng = np.random.default_rng(seed)
    image = normal_image(category, rng, 64)
    donor = normal_image("coins", rng, 64)
    before = image.copy()
    defected, mask = apply_defect(image, defect_type, rng, donor, difficulty)
    assert np.array_equal(image, before), "the input must not be modified"
    assert defected.shape == image.shape and defected.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == bool and mask.any()
    assert np.array_equal(defected[~mask], image[~mask])
    changed = (defected != image).any(-1)
    if difficulty == "realistic":
        assert np.array_equal(changed, mask), "the mask is exactly the changed pixels"
    else:
        assert changed[mask].mean() >= 0.5, "most masked pixels must visibly change"
    if is_grayscale(category):
        assert (defected == defected[..., :1]).all(), "a gray image gets a gray defect"


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_defect_sizes_range_from_small_to_large(difficulty):
    areas = {d: [] for d in DEFECT_TYPES[difficulty]}
    for seed in range(24):
        rng = np.random.default_rng(seed)
        image, donor = normal_image("grass", rng, 128), normal_image("brick", rng, 128)
        for defect in DEFECT_TYPES[difficulty]:
            areas[defect].append(apply_defect(image, defect, rng, donor, difficulty)[1].mean())
    for defect, fractions in areas.items():
        assert min(fractions) < (0.01 if difficulty == "hard" else 0.02), defect  # small ones included
        assert max(fractions) > 3 * min(fractions), defect
        assert max(fractions) < 0.3, defect


def test_realistic_lines_are_visible_at_half_the_side():
    """Scratches and cracks are at least 2 px wide at 256 px (1 px at the working resolution 128)."""
    for defect in ["crack", "scratch"]:
        for seed in range(8):
            rng = np.random.default_rng(seed)
            _, mask = apply_defect(normal_image("brick", rng, 256), defect, rng)
            # A line at least 2 px wide survives an erosion by a 2 x 2 square.
            assert ndimage.binary_erosion(mask, np.ones((2, 2), bool)).any(), (defect, seed)


def test_apply_defect_rejects_bad_input():
    image = np.zeros((32, 32, 3), np.uint8)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="'dent'"):
        apply_defect(image, "dent", rng)
    with pytest.raises(ValueError, match="deformation.*for difficulty 'hard', got 'crack'"):
        apply_defect(image, "crack", rng, difficulty="hard")
    with pytest.raises(ValueError, match="patch.*donor"):
        apply_defect(image, "patch", rng, difficulty="hard")
    with pytest.raises(ValueError, match="contamination.*donor"):
        apply_defect(image, "contamination", rng)
    with pytest.raises(ValueError, match="donor"):
        apply_defect(image, "contamination", rng, donor=np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"difficulty must be one of \('hard', 'realistic'\), got 'easy'"):
        apply_defect(image, "stain", rng, difficulty="easy")
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


def test_the_difficulty_is_in_the_manifest_and_another_one_rebuilds(tmp_path):
    params = {"image_size": 32, "num_train": 1, "num_test_good": 0, "num_test_defective": 4, "categories": ["grass"]}
    root = generate_embedded_dataset(tmp_path / "data", **params)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["parameters"]["difficulty"] == "realistic" and manifest["version"] == synthetic.GENERATOR_VERSION
    assert sorted(p.name for p in (root / "grass" / "test").iterdir()) == list(DEFECT_TYPES["realistic"][:4])
    generate_embedded_dataset(root, difficulty="hard", **params)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["parameters"]["difficulty"] == "hard" and manifest["defect_types"] == list(DEFECT_TYPES["hard"])
    assert sorted(p.name for p in (root / "grass" / "test").iterdir()) == list(DEFECT_TYPES["hard"])


def test_a_set_of_another_generator_version_is_rebuilt(tmp_path):
    params = {"image_size": 32, "num_train": 1, "num_test_good": 0, "num_test_defective": 0, "categories": ["grass"]}
    root = generate_embedded_dataset(tmp_path / "data", **params)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    (root / MANIFEST_NAME).write_text(json.dumps({**manifest, "version": 1}))
    generate_embedded_dataset(root, **params)
    assert json.loads((root / MANIFEST_NAME).read_text())["version"] == synthetic.GENERATOR_VERSION


def test_an_existing_empty_directory_is_filled(tmp_path):
    (tmp_path / "data").mkdir()
    root = generate_embedded_dataset(tmp_path / "data", image_size=32, num_train=1, num_test_good=0,
                                     num_test_defective=0, categories=["brick"])
    assert relative_files(root) == {MANIFEST_NAME, "brick/train/good/000.png"}


def test_refuses_to_overwrite_user_data(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(OutputPathError, match=str(root)):
        generate_embedded_dataset(root, image_size=32, num_train=1)
    assert relative_files(root) == {"notes.txt"}

    (root / MANIFEST_NAME).write_text(json.dumps({"generator": "someone else"}))
    with pytest.raises(OutputPathError, match="not written by anomaly_diff.data.synthetic"):
        generate_embedded_dataset(root, image_size=32, num_train=1)
    (root / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(OutputPathError, match="not valid JSON"):
        generate_embedded_dataset(root, image_size=32, num_train=1)
    assert (root / "notes.txt").read_text() == "keep me"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputPathError, match=str(a_file)):
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
        ({"difficulty": "easy"}, r"difficulty must be one of \('hard', 'realistic'\), got 'easy'"),
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
                                      "num_test_defective": 4, "categories": ["gravel"], "difficulty": "realistic"}
    assert len(list((output / "gravel" / "ground_truth").rglob("*_mask.png"))) == 4
    main(["--output", str(output), "--image-size", "32", "--num-train", "1", "--categories", "gravel",
          "--difficulty", "hard"])
    assert json.loads((output / MANIFEST_NAME).read_text())["parameters"]["difficulty"] == "hard"
    with pytest.raises(SystemExit):
        main(["--output", str(output), "--difficulty", "easy"])
    assert "invalid choice: 'easy'" in capsys.readouterr().err
