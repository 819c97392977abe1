"""DRDC's base model: a transformer that reconstructs frozen CNN features (UniAD line), one model for all classes.

After UniAD (You et al., "A Unified Model for Multi-class Anomaly Detection", NeurIPS 2022): neighbourhood-masked
attention and layer-wise queries (Sec. 3.3), feature jitter (Sec. 3.4). The choices: the DRDC ``README.md``.
"""

import torch
import torch.nn.functional as F
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import Tensor, nn

from anomaly_diff.errors import ConfigError
from anomaly_diff.models.components.anomaly_map import gaussian_blur, resize_maps
from anomaly_diff.models.components.backbone import FeatureExtractor


def neighbourhood_mask(height: int, width: int, size: int, device: torch.device | str | None = None) -> Tensor:
    """Attention mask that hides from each grid position the ``size x size`` positions centred on it.

    Args:
        height: Token grid height h.
        width: Token grid width w.
        size: Odd side of the hidden neighbourhood; ``0`` hides nothing.
        device: Where the mask lives.

    Returns:
        ``(h * w, h * w)`` bool, True where attention is forbidden (torch's ``attn_mask`` convention).

    Raises:
        ValueError: ``size`` is negative or even, or it hides every position (no token left to attend to).
    """
    if size < 0 or (size and size % 2 == 0):
        raise ConfigError(f"neighbourhood size must be 0 (no mask) or odd, got {size}")
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    radius = size // 2
    hidden = ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)
    hidden &= size > 0
    if hidden.all(dim=1).any():
        raise ConfigError(
            f"a {size}x{size} neighbourhood hides every token of the {height}x{width} grid; use a smaller "
            "neighbourhood or a larger input_size"
        )
    return hidden


def feature_jitter(tokens: Tensor, scale: float, prob: float) -> Tensor:
    """UniAD's feature jitter: add ``N(0, (scale * ||token|| / C)^2)`` noise to each sample with probability ``prob``.

    Args:
        tokens: ``(B, L, C)`` feature tokens.
        scale: The jitter scale alpha (UniAD: 20).
        prob: Probability that a sample is jittered (UniAD: 1).

    Returns:
        ``(B, L, C)`` jittered tokens.
    """
    std = scale * tokens.norm(dim=2, keepdim=True) / tokens.shape[2]
    chosen = (torch.rand(tokens.shape[0], 1, 1, device=tokens.device) < prob).to(tokens)
    return tokens + chosen * std * torch.randn_like(tokens)


class BaseReconstructor(nn.Module):
    """Neighbourhood-masked transformer that reconstructs the multi-stage features of a frozen CNN.

    Args:
        extractor: The frozen feature extractor.
        input_size: Side the image is resized to before the extractor; the token grid is
            ``input_size / extractor.output_stride`` on each side. Defaults to 224 (UniAD).
        hidden_dim: Token width of the transformer. Defaults to 256 (UniAD).
        num_heads: Attention heads. Defaults to 8.
        num_encoder_layers: Encoder layers. Defaults to 4 (UniAD).
        num_decoder_layers: Decoder layers, each with its own learned queries. Defaults to 4 (UniAD).
        feedforward_dim: Hidden width of the feed-forward blocks. Defaults to 1024 (UniAD).
        dropout: Dropout of the transformer layers. Defaults to 0.1.
        neighbourhood: Odd side of the masked neighbourhood in tokens; 0 disables the mask. Defaults to 7 (UniAD).
        jitter_scale: Feature-jitter scale alpha; 0 disables it. Defaults to 20 (UniAD).
        jitter_prob: Probability that a training sample is jittered. Defaults to 1 (UniAD).
        blur_sigma: Gaussian blur of the anomaly map, in pixels of the image. Defaults to 4.

    Example:
        >>> model = BaseReconstructor(FeatureExtractor(), input_size=128, hidden_dim=64, neighbourhood=3)
        >>> reconstruction, features = model(torch.rand(2, 3, 64, 64))
        >>> reconstruction.shape == features.shape == (2, 192, 8, 8)
        True
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        input_size: int = 224,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        feedforward_dim: int = 1024,
        dropout: float = 0.1,
        neighbourhood: int = 7,
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        blur_sigma: float = 4.0,
    ) -> None:
        super().__init__()
        if blur_sigma < 0:
            raise ConfigError(f"base blur_sigma must be >= 0, got {blur_sigma}")
        if input_size % extractor.output_stride:
            raise ConfigError(
                f"base input_size={input_size} must be divisible by the backbone "
                f"output_stride={extractor.output_stride}"
            )
        if hidden_dim % 4 or hidden_dim % num_heads:
            raise ConfigError(f"base hidden_dim={hidden_dim} must be divisible by 4 and by num_heads={num_heads}")
        if jitter_scale < 0 or not 0 <= jitter_prob <= 1:
            raise ConfigError(f"jitter_scale={jitter_scale} must be >= 0 and jitter_prob={jitter_prob} in [0, 1]")
        self.extractor = extractor
        self.input_size = input_size
        self.grid = input_size // extractor.output_stride
        self.jitter_scale = jitter_scale
        self.jitter_prob = jitter_prob
        self.blur_sigma = blur_sigma
        channels = extractor.out_channels
        self.input_proj = nn.Linear(channels, hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, channels)
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden_dim, num_heads, feedforward_dim, dropout, batch_first=True)
            for _ in range(num_encoder_layers)
        )
        self.decoder = nn.ModuleList(
            nn.TransformerDecoderLayer(hidden_dim, num_heads, feedforward_dim, dropout, batch_first=True)
            for _ in range(num_decoder_layers)
        )
        tokens = self.grid * self.grid
        self.queries = nn.Parameter(torch.empty(num_decoder_layers, tokens, hidden_dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.register_buffer(
            "positions", build_sincos2d_pos_embed([self.grid, self.grid], hidden_dim)[None], persistent=False
        )
        self.register_buffer(
            "attention_mask", neighbourhood_mask(self.grid, self.grid, neighbourhood), persistent=False
        )

    def extract(self, image: Tensor) -> Tensor:
        """Frozen features of images in ``[0, 1]``: ``(B, 3, H, W)`` -> ``(B, C, grid, grid)``."""
        if image.shape[-2:] != (self.input_size, self.input_size):
            image = F.interpolate(image, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        return self.extractor(image)

    def reconstruct(self, features: Tensor) -> Tensor:
        """Reconstruct features through the masked transformer (jittered input while training).

        Args:
            features: ``(B, C, grid, grid)`` frozen features.

        Returns:
            ``(B, C, grid, grid)`` reconstruction.
        """
        tokens = features.flatten(2).transpose(1, 2)
        if self.training and self.jitter_scale > 0:
            tokens = feature_jitter(tokens, self.jitter_scale, self.jitter_prob)
        memory = self.input_proj(tokens) + self.positions
        for layer in self.encoder:
            memory = layer(memory, src_mask=self.attention_mask)
        memory = memory + self.positions
        target = torch.zeros_like(memory)
        for queries, layer in zip(self.queries, self.decoder, strict=True):
            target = layer(
                target + queries + self.positions, memory, tgt_mask=self.attention_mask, memory_mask=self.attention_mask
            )
        return self.output_proj(target).transpose(1, 2).reshape(features.shape)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Return the reconstruction and the frozen features it targets, both ``(B, C, grid, grid)``."""
        features = self.extract(image)
        return self.reconstruct(features), features

    @staticmethod
    def error_map(reconstruction: Tensor, features: Tensor, size: tuple[int, int]) -> Tensor:
        """UniAD's anomaly map: the L2 norm over channels of the reconstruction error, bilinearly upsampled.

        Args:
            reconstruction: ``(B, C, h, w)`` reconstructed features.
            features: ``(B, C, h, w)`` frozen features.
            size: Output ``(H, W)``.

        Returns:
            ``(B, H, W)`` base heatmap.
        """
        return resize_maps((reconstruction - features).square().sum(dim=1).sqrt(), size)

    def anomaly_map(self, image: Tensor) -> Tensor:
        """The base heatmap ``(B, H, W)`` of ``(B, 3, H, W)`` images: the blurred :meth:`error_map` at their size."""
        reconstruction, features = self(image)
        return gaussian_blur(self.error_map(reconstruction, features, image.shape[-2:]), self.blur_sigma)
