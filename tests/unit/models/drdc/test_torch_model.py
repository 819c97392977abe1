from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.transform import resize
from torch import nn

from anomaly_diff.models.drdc.torch_model import DiffusionRefiner, InpaintingConfig, correction_heatmaps

ARCHITECTURE = ("block_out_channels", "layers_per_block", "attention", "norm_num_groups")


def tiny(**kwargs):
    torch.manual_seed(0)
    architecture = {"block_out_channels": (8, 16), "layers_per_block": 1, "attention": False, "norm_num_groups": 8}
    architecture.update({key: kwargs.pop(key) for key in ARCHITECTURE if key in kwargs})
    inpainting = InpaintingConfig(**{"num_timesteps": 2, "start_timestep": 40, "num_sets": 2, "patch_sizes": (4,),
                                     **kwargs})
    return DiffusionRefiner(3, **architecture, inpainting=inpainting)


def reference_heatmap(residual, size, scale, highpass):
    """numpy/scipy version: pool by `scale`, |high-pass| (or |r|) averaged over RGB, box filter, upsample."""
    r = residual.reshape(residual.shape[0], 3, residual.shape[2] // scale, scale, residual.shape[3] // scale, scale)
    r = r.mean(axis=(3, 5))
    if highpass:
        r = r - ndimage.uniform_filter(r, size=(1, 1, size, size), mode="mirror")
    energy = ndimage.uniform_filter(np.abs(r).mean(axis=1), size=(1, size, size), mode="mirror")
    height, width = energy.shape[-2:]
    return np.stack([resize(e, (height * scale, width * scale), order=1) for e in energy])  # the shared upsampling


@pytest.mark.parametrize("mode", ["highpass", "residual"])
def test_correction_heatmaps_match_a_scipy_reference(mode):
    torch.manual_seed(0)
    image, inpainted = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    maps = correction_heatmaps(image, inpainted, filter_size=3, scales=(1, 2), mode=mode)
    assert maps.shape == (2, 2, 16, 16)
    residual = (image - inpainted).double().numpy()
    for index, scale in enumerate((1, 2)):
        expected = reference_heatmap(residual, 3, scale, mode == "highpass")
        np.testing.assert_allclose(maps[:, index].numpy(), expected, atol=1e-5)


def test_highpass_heatmap_ignores_a_uniform_colour_shift_that_the_residual_map_sees():
    image = torch.rand(1, 3, 16, 16)
    shifted = image + 0.3
    assert correction_heatmaps(image, shifted, 5, (1,), "highpass").abs().max() < 1e-5
    residual = correction_heatmaps(image, shifted, 5, (1,), "residual")
    torch.testing.assert_close(residual, torch.full((1, 1, 16, 16), 0.3))


def test_heatmap_errors_are_named():
    with pytest.raises(ValueError, match="scale 3 must be >= 1 and divide the 16x16 image"):
        correction_heatmaps(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), 3, (3,))
    with pytest.raises(ValueError, match="unknown correction heatmap mode"):
        correction_heatmaps(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), 3, (1,), "lowpass")


def test_guidance_combines_conditional_and_null_predictions():
    refiner = tiny(guidance_scale=3.0).eval()
    x, t, c = torch.randn(2, 3, 8, 8), torch.tensor([5, 30]), torch.tensor([0, 2])
    with torch.no_grad():
        conditional = refiner(x, t, c)
        unconditional = refiner(x, t, torch.tensor([3, 3]))  # the null class is num_classes
        guided = refiner.guided_noise(x, t, c)
        torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-5, rtol=1e-4)
        refiner.inpainting = replace(refiner.inpainting, guidance_scale=1.0)
        torch.testing.assert_close(refiner.guided_noise(x, t, c), conditional)
        refiner.inpainting = replace(refiner.inpainting, guidance_scale=0.0)
        torch.testing.assert_close(refiner.guided_noise(x, t, c), unconditional)
    assert refiner.unet.config.num_class_embeds == 4


class OracleUNet(nn.Module):
    """A UNet that reconstructs perfectly: its noise prediction maps every noisy input back to ``clean``."""

    def __init__(self, clean, schedule):
        super().__init__()
        self.clean, self.schedule = clean, schedule

    def forward(self, noisy, timesteps, class_labels):
        reference = self.clean.repeat(noisy.shape[0] // self.clean.shape[0], 1, 1, 1)
        eps = (noisy - self.schedule.signal_rate(timesteps) * reference) / self.schedule.noise_rate(timesteps)
        return type("Output", (), {"sample": eps})


def test_refining_a_defect_free_image_with_a_perfect_model_gives_a_near_zero_map():
    refiner = tiny(patch_sizes=(4, 8), scales=(1, 2), guidance_scale=2.0)
    image = torch.rand(2, 3, 16, 16) * 0.8 + 0.1
    refiner.unet = OracleUNet(image * 2 - 1, refiner.schedule)
    output = refiner.refine(image, torch.tensor([0, 1]))
    assert output.inpainted.shape == (2, 2, 2, 3, 16, 16)
    assert output.heatmaps.shape == (2, 2, 2, 2, 16, 16)
    assert output.heatmaps.abs().max() < 1e-4


def test_a_defect_the_model_does_not_reconstruct_lights_up_the_map_there():
    refiner = tiny(filter_size=3, scales=(1,), heatmap_mode="highpass")
    clean = torch.full((1, 3, 16, 16), 0.5)
    defective = clean.clone()
    defective[..., 6:9, 6:9] = 1.0
    refiner.unet = OracleUNet(clean * 2 - 1, refiner.schedule)
    heatmaps = refiner.refine(defective, torch.tensor([0])).heatmaps
    expected = correction_heatmaps(defective * 2 - 1, clean * 2 - 1, 3, (1,), "highpass")
    torch.testing.assert_close(heatmaps[0, 0, 1], expected[0], atol=1e-4, rtol=0)
    inside, outside = heatmaps[0, 0, -1, 0, 6:9, 6:9].min(), heatmaps[0, 0, -1, 0, :, 12:].max()
    assert inside > 0.1 and outside < 1e-4


def test_random_mask_layout_is_fixed_by_the_seed():
    a = tiny(mask_layout="random", mask_seed=3).mask_sets(16, 16, 4, torch.device("cpu"))
    b = tiny(mask_layout="random", mask_seed=3).mask_sets(16, 16, 4, torch.device("cpu"))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"norm_num_groups": 3}, "norm_num_groups=3"), ({"start_timestep": 1000}, "start_timestep=1000"),
     ({"filter_size": 0}, "filter_size=0 must be >= 1"), ({"num_timesteps": 50}, "n_t=50"),
     ({"num_sets": 0}, "num_sets=0"), ({"init": "zeros"}, "init='zeros' is unknown"),
     ({"resample": 0}, "resample=0"), ({"scales": ()}, r"scales=\[\] must be non-empty"),
     ({"mask_layout": "stripes"}, "mask_layout='stripes'"), ({"heatmap_mode": "lowpass"}, "heatmap_mode='lowpass'")],
)
def test_invalid_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_inpainting_config_from_yaml_lists_equals_the_tuple_form():
    assert InpaintingConfig(patch_sizes=[4, 8], scales=[1]) == InpaintingConfig(patch_sizes=(4, 8), scales=(1,))
    assert InpaintingConfig(start_timestep=30, num_timesteps=3).timesteps == [30, 20, 10]
