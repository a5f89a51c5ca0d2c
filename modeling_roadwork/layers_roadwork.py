"""
Layers of the roadwork head other than attention: MLPs, view pruning, the pyramid, the metadata encoder, decoders.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RoadworkMlp(nn.Module):
    """
    Two-layer MLP `fc1 -> act -> drop -> fc2`, after timm's `Mlp`. Its submodules are named (not positional like
    `nn.Sequential`'s), so state-dict keys (`classifier.fc1.weight`) and PEFT `target_modules` stay stable when a
    layer is added: never rename them.
    """

    def __init__(self, *, in_features: int, hidden_features: int, out_features: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)"""
        return self.fc2(self.drop(self.act(self.fc1(hidden_states))))


class RoadworkProjection(nn.Module):
    """
    One named projection `fc -> act -> drop` (the vision + metadata fusion layer, the pyramid levels). Submodule names
    are state-dict keys (`fusion.fc.weight`): never rename them.
    """

    def __init__(self, *, in_features: int, out_features: int, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)"""
        return self.drop(self.act(self.fc(hidden_states)))


class RoadworkGlobalClassifier(nn.Module):
    """
    A linear probe inside the model: `layer_norm -> fc` from the pooled backbone feature of the global view (view 0,
    before pruning) to the logits, added to the head's logits: trained jointly with the head, or fitted as a frozen
    probe after it (`global_linear_path_init`), so the model can always fall back on the probe. Submodule names are
    state-dict keys (`global_classifier.fc.weight`): never rename them.
    """

    def __init__(self, *, feature_size: int, num_labels: int, eps: float = 1e-5, zero_init: bool = False):
        super().__init__()
        self.layer_norm = nn.LayerNorm(feature_size, eps=eps)
        self.fc = nn.Linear(feature_size, num_labels)
        self.fc.zero_init = zero_init  # read by `_init_weights`: a probe path starts at zero until it is fitted

    def forward(self, global_features: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, num_labels)"""
        return self.fc(self.layer_norm(global_features))


class RoadworkViewDetector(nn.Module):
    """
    A roadwork detector for each view on its own: `layer_norm -> mlp` from one view's pooled backbone feature to one
    logit ("this view shows a roadwork object"), the same weights for every view. Submodule names are state-dict keys
    (`view_detector.mlp.fc1.weight`): never rename them.
    """

    def __init__(self, *, feature_size: int, hidden_size: int, dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.layer_norm = nn.LayerNorm(feature_size, eps=eps)
        self.mlp = RoadworkMlp(in_features=feature_size, hidden_features=hidden_size, out_features=1, dropout=dropout)

    def forward(self, view_features: torch.Tensor) -> torch.Tensor:
        """(B, V, D) -> (B, V)"""
        return self.mlp(self.layer_norm(view_features)).squeeze(-1)


class RoadworkViewPruning(nn.Module):
    """
    Scores every view with an MLP `D -> D / reduction -> 1` and keeps the `k` best. The kept features are multiplied
    by the sigmoid of their score: top-k itself has no gradient, the scaling gives the scorer one.
    """

    def __init__(self, *, feature_size: int, reduction: int, num_kept: int):
        super().__init__()
        self.num_kept = num_kept
        self.scorer = RoadworkMlp(
            in_features=feature_size, hidden_features=max(feature_size // reduction, 1), out_features=1
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, V, D) -> kept (B, k, D), kept indices (B, k), kept scores in (0, 1) (B, k)"""
        B, V, D = features.shape
        logits = self.scorer(features).squeeze(-1)  # (B, V)
        top_logits, indices = logits.topk(self.num_kept, dim=1)
        # Sort kept views by position so that order carries no information about the score.
        indices, order = indices.sort(dim=1)
        scores = torch.sigmoid(top_logits.gather(1, order))  # (B, k)
        kept = features.gather(1, indices.unsqueeze(-1).expand(B, self.num_kept, D))
        return kept * scores.unsqueeze(-1).to(kept.dtype), indices, scores


class RoadworkPyramid(nn.Module):
    """
    Multi-scale pyramid on view tokens: the full width plus reduced levels (`C -> 256`, `C -> 128` by default),
    concatenated, projected back to `C`, added to the input and normalised.
    """

    def __init__(self, *, hidden_size: int, level_sizes: list[int], dropout: float):
        super().__init__()
        self.levels = nn.ModuleList(RoadworkProjection(in_features=hidden_size, out_features=s) for s in level_sizes)
        self.fuse = nn.Linear(hidden_size + sum(level_sizes), hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)"""
        pyramid = torch.cat([hidden_states] + [level(hidden_states) for level in self.levels], dim=-1)
        return self.layer_norm(hidden_states + self.dropout(self.fuse(pyramid)))


def gps_sinusoidal_encoding(gps: torch.Tensor, dim: int, max_frequency: float) -> torch.Tensor:
    """
    Sinusoidal encoding of (lat, lon) in degrees, `dim / 4` log-spaced frequencies from 1 to `max_frequency`:
    `sin/cos(lat * f * pi / 90)` and `sin/cos(lon * f * pi / 180)`. (B, 2) -> (B, dim)
    """
    num_bands = dim // 4
    exponents = torch.arange(num_bands, device=gps.device, dtype=torch.float32) / max(num_bands - 1, 1)
    frequencies = max_frequency**exponents  # 1 .. max_frequency
    lat = gps[:, :1].float() * (math.pi / 90.0) * frequencies  # (B, bands)
    lon = gps[:, 1:2].float() * (math.pi / 180.0) * frequencies
    return torch.cat([lat.sin(), lat.cos(), lon.sin(), lon.cos()], dim=-1)


class RoadworkMetadataEncoder(nn.Module):
    """
    NULL-safe metadata encoder. GPS: sinusoidal encoding, or a learned NULL vector where GPS is missing (a NaN row).
    Weather / daytime / scene: embeddings whose row 0 is a learned NULL. Text: a trainable projection of the frozen
    sentence embedding, zeros where there is no description (an all-zero `text_embeds` row).
    Output width: gps_embed_dim + 3 * category_embed_dim (+ text_projection_dim), 704 by default.
    """

    def __init__(self, config):
        super().__init__()
        self.gps_dim = config.gps_embed_dim
        self.gps_max_frequency = config.gps_max_frequency
        self.gps_null_embedding = nn.Parameter(torch.zeros(config.gps_embed_dim))
        self.weather_embeddings = nn.Embedding(len(config.weather_vocab) + 1, config.category_embed_dim)
        self.daytime_embeddings = nn.Embedding(len(config.daytime_vocab) + 1, config.category_embed_dim)
        self.scene_embeddings = nn.Embedding(len(config.scene_vocab) + 1, config.category_embed_dim)
        self.text_projection = (
            nn.Linear(config.text_embed_dim, config.text_projection_dim) if config.use_text else None
        )
        self.text_embed_dim = config.text_embed_dim

    @staticmethod
    def _ids(ids: torch.Tensor | None, batch_size: int, num_embeddings: int, device) -> torch.Tensor:
        if ids is None:
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        ids = ids.to(device=device, dtype=torch.long).reshape(batch_size)
        # Ids outside the vocabulary (e.g. a checkpoint with a smaller vocab) are unknown: NULL.
        return torch.where((ids >= 0) & (ids < num_embeddings), ids, torch.zeros_like(ids))

    def forward(
        self,
        batch_size: int,
        gps: torch.Tensor | None = None,
        weather_ids: torch.Tensor | None = None,
        daytime_ids: torch.Tensor | None = None,
        scene_ids: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """metadata for B rows (any of them may be None) -> (B, metadata_dim)"""
        device = self.gps_null_embedding.device
        B = batch_size
        if gps is None:
            gps = torch.full((B, 2), float("nan"), device=device)
        gps = gps.to(device=device, dtype=torch.float32).reshape(B, 2)
        valid = torch.isfinite(gps).all(dim=-1, keepdim=True) & (gps[:, :1].abs() <= 90) & (gps[:, 1:].abs() <= 180)
        encoded = gps_sinusoidal_encoding(
            torch.where(valid, gps, torch.zeros_like(gps)), self.gps_dim, self.gps_max_frequency
        )
        parts = [torch.where(valid, encoded, self.gps_null_embedding.expand(B, -1))]
        for table, ids in (
            (self.weather_embeddings, weather_ids),
            (self.daytime_embeddings, daytime_ids),
            (self.scene_embeddings, scene_ids),
        ):
            parts.append(table(self._ids(ids, B, table.num_embeddings, device)))
        if self.text_projection is not None:
            if text_embeds is None:
                text_embeds = torch.zeros(B, self.text_embed_dim, device=device)
            text_embeds = text_embeds.to(device=device, dtype=self.text_projection.weight.dtype)
            present = (text_embeds != 0).any(dim=-1, keepdim=True)
            parts.append(torch.where(present, self.text_projection(text_embeds), torch.zeros_like(text_embeds[:, :1])))
        return torch.cat([p.to(parts[0].dtype) for p in parts], dim=-1)


class RoadworkDecoderStage(nn.Module):
    """One stage of the segmentation decoder: bilinear upsampling x2 (no parameters), `conv` 3x3, `act` GELU."""

    def __init__(self, *, channels: int):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear")
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 2H, 2W)"""
        return self.act(self.conv(self.upsample(hidden_states)))


class RoadworkSegmentationDecoder(nn.Module):
    """
    Decodes the fused vision vector into low-resolution mask logits of the roadwork object classes: a linear map to
    a 4x4 seed, then [`RoadworkDecoderStage`]s (upsample x2, 3x3 conv, GELU) up to `resolution`, then a 1x1 conv per
    class.
    """

    def __init__(self, *, hidden_size: int, num_classes: int, resolution: int, channels: int = 64):
        super().__init__()
        seed_size = resolution
        while seed_size > 4 and seed_size % 2 == 0:
            seed_size //= 2
        self.seed_size, self.channels = seed_size, channels
        self.project = nn.Linear(hidden_size, channels * seed_size * seed_size)
        num_stages = 0
        while seed_size * 2**num_stages < resolution:
            num_stages += 1
        self.stages = nn.ModuleList(RoadworkDecoderStage(channels=channels) for _ in range(num_stages))
        self.classify = nn.Conv2d(channels, num_classes, 1)

    def forward(self, vision_embeds: torch.Tensor) -> torch.Tensor:
        """(B, C) -> mask logits (B, K, R, R)"""
        B = vision_embeds.shape[0]
        hidden = self.project(vision_embeds).view(B, self.channels, self.seed_size, self.seed_size)  # (B, C', s, s)
        for stage in self.stages:
            hidden = stage(hidden)  # (B, C', R, R) after the last stage
        return self.classify(hidden)


__all__ = [
    "RoadworkMlp",
    "RoadworkProjection",
    "RoadworkGlobalClassifier",
    "RoadworkViewDetector",
    "RoadworkViewPruning",
    "RoadworkPyramid",
    "RoadworkMetadataEncoder",
    "RoadworkDecoderStage",
    "RoadworkSegmentationDecoder",
    "gps_sinusoidal_encoding",
]
