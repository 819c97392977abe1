"""The models learn: trained on a tiny fixture, the training loss falls and the test image AUROC is far above chance.

The fixture (``tests/helpers/data.py``) has normal images of dark noise and anomalies with a white square covering a
sixteenth of the image: easy anomalies, so a model that learnt the normal images scores them clearly higher. Each
method trains 120 steps on CPU, well within a minute on one core:

- DeCo-Diff with the tiny UNet, in the latent space of the project's ``FeatureAutoencoder`` (frozen ImageNet
  EfficientNet-Lite0 features, standardised on the training images, a random 4-channel projection; the decoder is
  untrained, so the image half of the map is noise and the latent half carries the detection). A random
  ``AutoencoderKL``'s latent does not separate the square from the noise (AUROC 0.5 after training), and the same
  model after 10 steps scores 0.53: the AUROC comes from the training.
- DRDC's base stage (the UniAD-style reconstruction of frozen EfficientNet-Lite0 features). The refinement stage, a
  pixel diffusion model, needs far more steps than a test can afford to learn anything; the config tests
  (``test_drdc_configs.py``) cover its wiring.
"""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from anomaly_diff.callbacks.evaluation import Evaluator
from anomaly_diff.data import MVTecAD
from anomaly_diff.models.components.backbone import DEFAULT_WEIGHTS
from anomaly_diff.models.components.feature_autoencoder import FeatureAutoencoder
from anomaly_diff.models.deco_diff import DeCoDiff
from anomaly_diff.models.deco_diff.torch_model import AnomalyMapConfig
from anomaly_diff.models.drdc import DRDCBase
from tests.helpers.data import write_mvtec_ad

SEED = 0
K = 10  # the losses averaged at either end of the training


class LossRecorder(Callback):
    """Keep every training step's loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    """One category, 16 normal training images, 8 normal and 8 defective test images, 64 px."""
    return write_mvtec_ad(tmp_path_factory.mktemp("learning"), categories=("a",), n_train=16, n_good=8, n_defect=4,
                          size=64)


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)


def save_feature_autoencoder(path: Path, root: Path) -> Path:
    """A tiny ``FeatureAutoencoder`` with 4 latent channels, its statistics fitted on the fixture's training images."""
    torch.manual_seed(0)
    autoencoder = FeatureAutoencoder(latent_channels=4, block_out_channels=(8, 8, 8, 8), norm_num_groups=8)
    autoencoder.load_backbone_weights(DEFAULT_WEIGHTS)
    datamodule = MVTecAD(root=str(root), image_size=64, crop_size=64, batch_size=8, val_fraction=0.0)
    datamodule.setup("fit")
    images = [batch["image"] * 2 - 1 for batch in datamodule.train_dataloader()]  # the autoencoder's [-1, 1]
    autoencoder.fit_statistics(images, "features")
    autoencoder.fit_statistics(images, "latent")
    autoencoder.save_pretrained(path)
    return path


def train_and_test(model_factory, root: Path, tmp_path: Path, steps: int, image_size: int) -> tuple[list[float], float]:
    """Train for ``steps`` steps, test; return the training losses and the test image AUROC."""
    seed_everything(SEED, verbose=False)
    datamodule = MVTecAD(root=str(root), image_size=image_size, crop_size=image_size, batch_size=8, val_fraction=0.0)
    model = model_factory(list(datamodule.categories))
    recorder, evaluator = LossRecorder(), Evaluator()
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir=tmp_path, callbacks=[recorder, evaluator])
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)
    return recorder.losses, evaluator.results["mean"]["image_AUROC"]


def check_learnt(losses: list[float], auroc: float) -> None:
    first, last = sum(losses[:K]) / K, sum(losses[-K:]) / K
    print(f"loss {first:.4f} -> {last:.4f}, image AUROC {auroc:.3f}")
    assert last < 0.8 * first, f"the training loss did not fall clearly: first {K} steps {first}, last {K} {last}"
    assert auroc >= 0.75, f"test image AUROC {auroc} is not clearly above chance"


@pytest.mark.slow
def test_deco_diff_learns(fixture_root, tmp_path):
    autoencoder = save_feature_autoencoder(tmp_path / "autoencoder", fixture_root)
    anomaly_map = AnomalyMapConfig(image_sigma=1.5, latent_clip=0.5, latent_scale=2.0, latent_sigma=0.5,
                                   fusion="arithmetic")  # configs/deco_diff/embedded.yaml's, for this latent space

    def factory(categories):
        return DeCoDiff(categories, autoencoder=str(autoencoder), unet="tiny", patch_sizes=(1, 2, 4),
                        patch_size_probs=(0.4, 0.3, 0.3), reverse_steps=None, timesteps=(4, 2, 0),
                        anomaly_map=anomaly_map, cache_latents=True, optimizer=adamw)

    check_learnt(*train_and_test(factory, fixture_root, tmp_path, steps=120, image_size=64))


@pytest.mark.slow
def test_drdc_base_stage_learns(fixture_root, tmp_path):
    def factory(categories):
        return DRDCBase(categories, layers=(1, 2), output_stride=8, input_size=64, hidden_dim=32, num_heads=2,
                        num_encoder_layers=1, num_decoder_layers=1, feedforward_dim=64, neighbourhood=3,
                        blur_sigma=1.0, cache_features=True,
                        optimizer=adamw)

    check_learnt(*train_and_test(factory, fixture_root, tmp_path, steps=120, image_size=64))
