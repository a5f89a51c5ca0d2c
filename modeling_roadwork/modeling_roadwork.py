"""The roadwork multi-view classifier: frozen backbone over views -> pruning -> gated attention -> fusion -> heads."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .attention_roadwork import RoadworkGatedAttentionLayer, RoadworkViewFusion
from .backbone_roadwork import load_backbone
from .configuration_roadwork import RoadworkConfig
from .layers_roadwork import (
    RoadworkGlobalClassifier,
    RoadworkMetadataEncoder,
    RoadworkMlp,
    RoadworkProjection,
    RoadworkPyramid,
    RoadworkSegmentationDecoder,
    RoadworkViewDetector,
    RoadworkViewPruning,
)
from .losses_roadwork import LOSS_COMPONENTS, roadwork_loss
from .text_encoding_roadwork import RoadworkTextEmbedder


@dataclass
class RoadworkModelOutput(ModelOutput):
    """
    Output of [`RoadworkModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_kept, hidden_size)`):
            Per-view states after the gated-attention stack (the kept views, in view order).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The fused vision vector.
        kept_view_indices (`torch.LongTensor` of shape `(batch_size, num_kept)`):
            Which of the `num_views` views were kept, ascending.
        view_scores (`torch.FloatTensor` of shape `(batch_size, num_kept)`, *optional*):
            Sigmoid scores of the kept views (`None` without pruning).
        view_gates (`torch.FloatTensor` of shape `(batch_size, num_kept)`, *optional*):
            Importance gates of the view fusion (`None` without it); with `use_tile_max_token` one more column, the
            tile-max token's, last.
        global_view_features (`torch.FloatTensor` of shape `(batch_size, view_feature_size)`):
            The pooled backbone feature of the global view (view 0), before pruning: what the global linear path reads.
        tile_max_features (`torch.FloatTensor` of shape `(batch_size, view_feature_size)`, *optional*):
            The element-wise max of the pooled features of the other views (the tiles), before pruning; `None` with one
            view. The linear path also reads it with `global_linear_path_input="global+tile_max"`.
        view_features (`torch.FloatTensor` of shape `(batch_size, num_views, view_feature_size)`):
            Every view's pooled backbone feature (given or extracted), before normalisation and pruning: what the
            per-view detector reads.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    kept_view_indices: torch.LongTensor | None = None
    view_scores: torch.FloatTensor | None = None
    view_gates: torch.FloatTensor | None = None
    global_view_features: torch.FloatTensor | None = None
    tile_max_features: torch.FloatTensor | None = None
    view_features: torch.FloatTensor | None = None


@dataclass
class RoadworkImageClassifierOutput(ModelOutput):
    """
    Output of [`RoadworkForImageClassification`]. Loss fields are set only when `labels` is given; a loss component
    whose labels are absent from the batch (or that is switched off) is `None`: skipped, not zero and never NaN.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Weighted sum of the loss components that were computed.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Classification scores (before softmax).
        view_logits (`torch.FloatTensor` of shape `(batch_size, num_kept, num_labels)`, *optional*):
            Per-view classification scores of the view-consistency head.
        weather_logits (`torch.FloatTensor` of shape `(batch_size, len(weather_vocab))`, *optional*):
            Auxiliary weather scores from the vision vector.
        seg_logits (`torch.FloatTensor` of shape `(batch_size, num_seg_classes, seg_resolution, seg_resolution)`,
            *optional*):
            Auxiliary mask logits of the roadwork object classes.
        vision_embeds (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The fused vision vector.
        pooled_embeds (`torch.FloatTensor` of shape `(batch_size, fusion_hidden_size)`):
            The vision + metadata vector the classifier reads.
        kept_view_indices (`torch.LongTensor` of shape `(batch_size, num_kept)`):
            Views kept by pruning.
        view_scores (`torch.FloatTensor` of shape `(batch_size, num_kept)`, *optional*):
            Their pruning scores.
        view_detector_logits (`torch.FloatTensor` of shape `(batch_size, num_views)`, *optional*):
            The per-view detector's logit of every view (`use_view_detector`); their max is in `logits`.
        focal_loss, consistency_loss, weather_loss, seg_loss, detector_loss (`torch.FloatTensor` of shape `()`,
            *optional*):
            The unweighted loss components; `None` where skipped.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    view_logits: torch.FloatTensor | None = None
    weather_logits: torch.FloatTensor | None = None
    seg_logits: torch.FloatTensor | None = None
    vision_embeds: torch.FloatTensor | None = None
    pooled_embeds: torch.FloatTensor | None = None
    kept_view_indices: torch.LongTensor | None = None
    view_scores: torch.FloatTensor | None = None
    view_detector_logits: torch.FloatTensor | None = None
    focal_loss: torch.FloatTensor | None = None
    consistency_loss: torch.FloatTensor | None = None
    weather_loss: torch.FloatTensor | None = None
    seg_loss: torch.FloatTensor | None = None
    detector_loss: torch.FloatTensor | None = None


_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class RoadworkPreTrainedModel(PreTrainedModel):
    config_class = RoadworkConfig
    config: RoadworkConfig
    base_model_prefix = "roadwork"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["RoadworkGatedAttentionLayer"]
    _supports_sdpa = True
    # forward has no **kwargs, so Trainer must scale the loss for gradient accumulation itself.
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, nn.Linear) and getattr(self.config, "linear_init", "fan_in") == "fan_in":
            init.trunc_normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, RoadworkMetadataEncoder):
            init.normal_(module.gps_null_embedding, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and getattr(module, "zero_init", False):
            # The probe path (`RoadworkGlobalClassifier(zero_init=True)`) adds nothing until
            # `fit_global_linear_path` writes the probe into it.
            init.zeros_(module.weight)
            init.zeros_(module.bias)

    def freeze_backbone(self) -> None:
        """Freezes the backbone (no gradients, eval mode) if the config says so, and the global linear path when it
        is a probe (`config.probe_floor`). Called by `__init__` and `from_pretrained`, which otherwise leaves every
        parameter trainable."""
        for module in self.modules():
            if isinstance(module, RoadworkModel) and module.config.freeze_backbone:
                module.backbone.requires_grad_(False)
                module.backbone.eval()
            if isinstance(module, RoadworkGlobalClassifier) and self.config.probe_floor:
                module.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        # `from_pretrained` may return (model, loading_info).
        (model[0] if isinstance(model, tuple) else model).freeze_backbone()
        return model

    @classmethod
    def from_backbone(
        cls,
        backbone_name_or_path: str,
        *,
        backbone_weights: str | None = None,
        backbone_kwargs: dict | None = None,
        **config_overrides,
    ):
        """
        Builds a fresh model around a pretrained backbone: DINOv3 (`facebook/dinov3-vith16plus-pretrain-lvd1689m`, the
        default, gated: accept its licence on the Hub and log in), a timm model on the Hub
        (`timm/convnextv2_base.fcmae_ft_in22k_in1k`), a local folder of either kind (a timm folder holds `config.json`
        with `architecture`, `model_args`, `pretrained_cfg` and `model.safetensors`), or `"timm:<architecture>"` with
        a weights file. The head is randomly initialised; the backbone weights are copied into the model, so later
        `from_pretrained` of a saved roadwork checkpoint needs nothing else.

        The backbone's own preprocessing (mean, std, resampling: timm's `pretrained_cfg`, DINOv3's image processor,
        else ImageNet's) goes into the config as `image_mean`, `image_std`, `resample`; build the matching processor
        with `RoadworkImageProcessor.from_model_config(model.config)`.

        Args:
            backbone_name_or_path (`str`): Hub id, local folder, or `"timm:<architecture>"` (e.g.
                `"timm:efficientnet_lite0"`).
            backbone_weights (`str`, *optional*): timm weights (`.safetensors` or `.pth`), only with `"timm:..."`.
            backbone_kwargs (`dict`, *optional*): for a Hub id or folder, passed to `AutoModel.from_pretrained`
                (e.g. `revision`, `token`, `cache_dir`); for `"timm:..."`, `TimmWrapperConfig` fields: `model_args`
                (timm `create_model` arguments, e.g. `{"pad_type": "same"}`) and `pretrained_cfg` (`mean`, `std`,
                `interpolation`).
            config_overrides: [`RoadworkConfig`] fields (e.g. `num_kept_views=12`, `hidden_size=768`); they win over
                the preprocessing read from the backbone.

        Example:

        ```python
        >>> model = RoadworkForImageClassification.from_backbone(
        ...     "facebook/dinov3-vith16plus-pretrain-lvd1689m", num_attention_layers=6
        ... )
        >>> model = RoadworkForImageClassification.from_backbone(
        ...     "timm:efficientnet_lite0",
        ...     backbone_weights="efficientnet_lite0.safetensors",
        ...     backbone_kwargs={
        ...         "model_args": {"pad_type": "same", "bn_eps": 1e-3},
        ...         "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3},
        ...     },
        ... )
        ```
        """
        backbone, preprocessing = load_backbone(
            backbone_name_or_path, weights=backbone_weights, kwargs=backbone_kwargs
        )
        config = RoadworkConfig(backbone_config=backbone.config, **{**preprocessing, **config_overrides})
        model = cls(config)
        base = model if isinstance(model, RoadworkModel) else getattr(model, cls.base_model_prefix)
        missing, unexpected = base.backbone.load_state_dict(backbone.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"Backbone weights of {backbone_name_or_path!r} do not match the backbone built from its config: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.config.name_or_path = ""
        model.freeze_backbone()
        return model


class RoadworkModel(RoadworkPreTrainedModel):
    """
    The vision side: frozen backbone over every view (one pooled vector per view), view pruning, input projection,
    pyramid, gated-attention stack and view fusion. Returns the per-view states and the fused vision vector.
    """

    def __init__(self, config: RoadworkConfig):
        super().__init__(config)
        self.backbone = AutoModel.from_config(config.backbone_config)
        if config.backbone_hidden_size is None:
            # timm backbones: the width of the pooled features is only known once the model exists.
            config.backbone_hidden_size = int(self.backbone.timm_model.num_features)
        D, C = config.view_feature_size, config.hidden_size
        self.feature_norm = nn.BatchNorm1d(D) if config.view_feature_norm == "batch" else None
        self.view_pruning = (
            RoadworkViewPruning(feature_size=D, reduction=config.view_scorer_reduction, num_kept=config.num_kept_views)
            if config.use_view_pruning
            else None
        )
        self.input_projection = nn.Linear(D, C)
        # With the tile-max token, embedding row `num_views` is that token's.
        num_positions = config.num_views + int(config.use_tile_max_token)
        self.view_embeddings = nn.Embedding(num_positions, C) if config.use_view_embeddings else None
        self.pyramid = (
            RoadworkPyramid(hidden_size=C, level_sizes=config.pyramid_sizes, dropout=config.hidden_dropout)
            if config.use_pyramid
            else None
        )
        self.attention_layers = nn.ModuleList(
            RoadworkGatedAttentionLayer(
                hidden_size=C,
                num_heads=config.num_attention_heads,
                attention_dropout=config.attention_dropout,
                hidden_dropout=config.hidden_dropout,
                gated=config.use_attention_gate,
            )
            for _ in range(config.num_attention_layers)
        )
        self.view_fusion = (
            RoadworkViewFusion(
                hidden_size=C,
                num_heads=config.num_attention_heads,
                gate_hidden_size=config.fusion_gate_hidden_size,
                dropout=config.hidden_dropout,
            )
            if config.use_view_fusion
            else None
        )
        self.post_init()
        self.freeze_backbone()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()  # a frozen backbone stays in eval mode (no dropout / drop-path)
        return self

    def _backbone_contexts(self, device: torch.device):
        """no_grad for a frozen backbone, and autocast to the configured dtype ("auto": bf16 on CUDA only)."""
        name = self.config.backbone_autocast_dtype
        if name == "auto":
            name = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
        dtype = _AUTOCAST_DTYPES.get(name)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        return (torch.no_grad() if self.config.freeze_backbone else contextlib.nullcontext()), autocast

    def extract_view_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        Runs the backbone over every view: one pooled vector per view (DINOv3: the CLS token; timm: its pooled
        head features). This is what the feature cache stores. (B, V, 3, S, S) -> (B, V, D) float32
        """
        if pixel_values.dim() != 5:
            raise ValueError(
                f"pixel_values must have shape (batch, views, 3, size, size), got {tuple(pixel_values.shape)}; "
                "use RoadworkImageProcessor to cut the views"
            )
        B, V = pixel_values.shape[:2]
        if V != self.config.num_views:
            raise ValueError(f"pixel_values has {V} views but config.num_views={self.config.num_views}")
        return self.embed_images(pixel_values.flatten(0, 1)).view(B, V, -1)  # (B*V, D) -> (B, V, D)

    def embed_images(self, pixel_values: torch.Tensor, pooling: str | None = None) -> torch.Tensor:
        """
        The backbone's pooled vector of each image (`pooling`, default `config.backbone_pooling`), in chunks of
        `backbone_batch_size`, with the frozen backbone's no-grad and autocast contexts. Also what a linear probe on
        one view reads. (N, 3, S, S) -> (N, D) float32
        """
        chunk = self.config.backbone_batch_size or max(pixel_values.shape[0], 1)
        pooling = pooling or self.config.backbone_pooling
        outputs = []
        grad_context, autocast = self._backbone_contexts(pixel_values.device)
        with grad_context, autocast:
            for start in range(0, pixel_values.shape[0], chunk):
                outputs.append(self._pool(self.backbone(pixel_values=pixel_values[start : start + chunk]), pooling))
        return torch.cat(outputs).float()

    def _pool(self, output, pooling: str) -> torch.Tensor:
        """One vector per image from the backbone's output: its own pooled output, the spatial max, or both."""
        if pooling == "native":
            return output.pooler_output
        hidden = output.last_hidden_state
        if hidden.dim() == 4:  # a CNN's feature map (N, C, h, w)
            spatial_max = hidden.amax(dim=(2, 3))
        else:  # a ViT's tokens (N, prefix + patches, C): the patch tokens only
            backbone_config = self.config.backbone_config
            if backbone_config.model_type == "dinov3_vit":
                prefix = 1 + backbone_config.num_register_tokens  # CLS + registers
            else:
                prefix = int(getattr(self.backbone.timm_model, "num_prefix_tokens", 0))
            spatial_max = hidden[:, prefix:].amax(dim=1)
        if pooling == "max":
            return spatial_max
        return torch.cat([output.pooler_output, spatial_max], dim=-1)  # native_max: (N, 2 * C)

    def _normalise(self, view_features: torch.Tensor) -> torch.Tensor:
        """`config.view_feature_norm` over every view of the batch: (B, V, D) -> (B, V, D)."""
        if self.feature_norm is None:
            return view_features
        B, V, D = view_features.shape
        flat = view_features.reshape(B * V, D)
        norm = self.feature_norm
        if self.training and B * V < 2:  # batch statistics need two rows: use the running ones
            flat = nn.functional.batch_norm(flat, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                            training=False, eps=norm.eps)  # fmt: skip
        else:
            flat = norm(flat)
        return flat.reshape(B, V, D)

    def forward(
        self, pixel_values: torch.Tensor | None = None, view_features: torch.Tensor | None = None
    ) -> RoadworkModelOutput:
        """
        Either `pixel_values` (B, V, 3, S, S) or precomputed `view_features` (B, V, D) ->
        per-view states (B, K, C) and fused vision vector (B, C).
        """
        if (pixel_values is None) == (view_features is None):
            raise ValueError("Pass exactly one of pixel_values (B, V, 3, S, S) or view_features (B, V, D)")
        if view_features is None:
            view_features = self.extract_view_features(pixel_values)
        if view_features.dim() != 3 or view_features.shape[1:] != (
            self.config.num_views,
            self.config.view_feature_size,
        ):
            raise ValueError(
                f"view_features must have shape (batch, {self.config.num_views}, {self.config.view_feature_size}) "
                f"for this config (backbone_pooling={self.config.backbone_pooling!r}), got "
                f"{tuple(view_features.shape)}; were the features cached with another backbone or pooling?"
            )
        view_features = view_features.to(self.input_projection.weight.dtype)
        B, V, _ = view_features.shape
        normed = self._normalise(view_features)  # (B, V, D); the linear path reads the raw features
        if self.view_pruning is not None:
            kept, kept_indices, scores = self.view_pruning(normed)  # (B, K, D), (B, K), (B, K)
        else:
            kept, scores = normed, None
            kept_indices = torch.arange(V, device=view_features.device).expand(B, V)
        positions = kept_indices
        if self.config.use_tile_max_token:  # one more token: the tiles' max, before pruning -> (B, K + 1, D)
            kept = torch.cat([kept, tile_max(normed)[:, None]], dim=1)
            positions = torch.cat([kept_indices, kept_indices.new_full((B, 1), V)], dim=1)
        hidden = self.input_projection(kept)  # (B, K (+ 1), C)
        if self.view_embeddings is not None:
            hidden = hidden + self.view_embeddings(positions)
        if self.pyramid is not None:
            hidden = self.pyramid(hidden)
        for layer in self.attention_layers:
            hidden = layer(hidden)
        if self.view_fusion is not None:
            fused, gates = self.view_fusion(hidden)
        else:
            fused, gates = hidden.mean(dim=1), None
        return RoadworkModelOutput(
            last_hidden_state=hidden[:, : kept_indices.shape[1]],  # the views' tokens (not the tile-max token)
            pooler_output=fused,
            kept_view_indices=kept_indices,
            view_scores=scores,
            view_gates=gates,
            global_view_features=view_features[:, 0],  # view 0 is the whole image, whatever pruning kept
            tile_max_features=tile_max(view_features),
            view_features=view_features,
        )


def tile_max(view_features: torch.Tensor) -> torch.Tensor | None:
    """The element-wise max over the tiles (every view but the global view 0): (B, V, D) -> (B, D); None for V = 1."""
    return view_features[:, 1:].amax(dim=1) if view_features.shape[1] > 1 else None


def linear_path_features(config, global_view_features: torch.Tensor, tile_max_features: torch.Tensor | None):
    """What the global linear path reads (`config.global_linear_path_input`) -> (B, linear_path_feature_size)."""
    if config.global_linear_path_input == "global+tile_max":
        return torch.cat([global_view_features, tile_max_features], dim=-1)
    return global_view_features


class RoadworkForImageClassification(RoadworkPreTrainedModel):
    """
    [`RoadworkModel`] plus the NULL-safe metadata encoder, the vision + metadata fusion layer, the classifier and the
    auxiliary heads (per-view classifier, weather classifier, segmentation decoder) with the four-part loss.

    Example:

    ```python
    >>> from transformers import AutoModelForImageClassification
    >>> model = AutoModelForImageClassification.from_pretrained("owner/roadwork", trust_remote_code=True)
    >>> model(pixel_values=pixel_values).logits.softmax(-1)[:, 1]  # P(Roadwork)
    ```
    """

    # `PreTrainedModel.loss_function` returns `_loss_function`; assigning `model.loss_function = fn` swaps the loss
    # for one instance (same signature as `roadwork_loss`).
    _loss_function = staticmethod(roadwork_loss)

    def __init__(self, config: RoadworkConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        C = config.hidden_size
        self.roadwork = RoadworkModel(config)
        self.metadata_encoder = RoadworkMetadataEncoder(config) if config.use_metadata else None
        self.fusion = RoadworkProjection(
            in_features=C + config.metadata_dim, out_features=config.fusion_hidden_size, dropout=config.hidden_dropout
        )
        self.classifier = RoadworkMlp(
            in_features=config.fusion_hidden_size,
            hidden_features=config.classifier_hidden_size,
            out_features=config.num_labels,
            dropout=config.hidden_dropout,
        )
        self.global_classifier = (
            RoadworkGlobalClassifier(
                feature_size=config.linear_path_feature_size, num_labels=config.num_labels,
                zero_init=config.probe_floor,
            )
            if config.use_global_linear_path
            else None
        )
        self.view_classifier = nn.Linear(C, config.num_labels) if config.use_view_consistency else None
        self.view_detector = (
            RoadworkViewDetector(
                feature_size=config.view_feature_size, hidden_size=config.view_detector_hidden_size,
                dropout=config.hidden_dropout,
            )
            if config.use_view_detector
            else None
        )  # fmt: skip
        self.weather_classifier = (
            RoadworkMlp(
                in_features=C,
                hidden_features=config.classifier_hidden_size,
                out_features=len(config.weather_vocab),
                dropout=config.hidden_dropout,
            )
            if config.use_weather_head
            else None
        )
        self.segmentation_decoder = (
            RoadworkSegmentationDecoder(
                hidden_size=C, num_classes=len(config.seg_class_names), resolution=config.seg_resolution
            )
            if config.use_segmentation
            else None
        )
        self.post_init()
        self.freeze_backbone()

    def embed_descriptions(self, descriptions: Sequence[str | None]) -> torch.Tensor:
        """Embeds descriptions with the frozen text encoder named in the config (cached per process). -> (B, 384)"""
        return RoadworkTextEmbedder.get(self.config.text_encoder_name)(descriptions)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        view_features: torch.Tensor | None = None,
        gps: torch.Tensor | None = None,
        weather_ids: torch.Tensor | None = None,
        daytime_ids: torch.Tensor | None = None,
        scene_ids: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        descriptions: Sequence[str | None] | None = None,
        labels: torch.Tensor | None = None,
        weather_labels: torch.Tensor | None = None,
        seg_masks: torch.Tensor | None = None,
        seg_mask_valid: torch.Tensor | None = None,
        view_coverage: torch.Tensor | None = None,
    ) -> RoadworkImageClassifierOutput:
        r"""
        (B, V, 3, S, S) pixel values or (B, V, D) view features, plus optional metadata -> logits (B, num_labels)

        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, V, 3, S, S)`): views from [`RoadworkImageProcessor`].
            view_features (`torch.FloatTensor` of shape `(B, V, D)`): precomputed backbone features instead.
            gps (`torch.FloatTensor` of shape `(B, 2)`): (lat, lon) in degrees; NaN rows are missing.
            weather_ids, daytime_ids, scene_ids (`torch.LongTensor` of shape `(B,)`): 0 = NULL, `i + 1` = vocab[i].
            text_embeds (`torch.FloatTensor` of shape `(B, text_embed_dim)`): sentence embeddings; zero rows = none.
            descriptions (`list[str | None]`): raw descriptions, embedded with the config's text encoder when
                `text_embeds` is not given.
            labels (`torch.LongTensor` of shape `(B,)`): 0 = None, 1 = Roadwork. Enables the loss.
            weather_labels (`torch.LongTensor` of shape `(B,)`): weather class, -100 where unknown.
            seg_masks (`torch.FloatTensor` of shape `(B, K, H, W)`): pseudo masks in [0, 1].
            seg_mask_valid (`torch.BoolTensor` of shape `(B,)`): rows of `seg_masks` that are real masks.
            view_coverage (`torch.FloatTensor` of shape `(B, V)`): share of each view the roadwork masks cover (NaN
                rows: no masks); supervises the per-view detector.
        """
        config = self.config
        vision = self.roadwork(pixel_values=pixel_values, view_features=view_features)
        vision_embeds = vision.pooler_output  # (B, C)
        B = vision_embeds.shape[0]

        features = vision_embeds
        if self.metadata_encoder is not None:
            if text_embeds is None and descriptions is not None and config.use_text:
                if len(descriptions) != B:
                    raise ValueError(f"descriptions has {len(descriptions)} entries for a batch of {B}")
                text_embeds = self.embed_descriptions(descriptions)
            metadata = self.metadata_encoder(
                B, gps=gps, weather_ids=weather_ids, daytime_ids=daytime_ids, scene_ids=scene_ids,
                text_embeds=text_embeds,
            )  # fmt: skip
            features = torch.cat([vision_embeds, metadata.to(vision_embeds.dtype)], dim=-1)  # (B, C + 704)
        pooled = self.fusion(features)
        logits = self.classifier(pooled)
        if self.global_classifier is not None:
            logits = logits + self.global_classifier(
                linear_path_features(config, vision.global_view_features, vision.tile_max_features)
            )  # (B, num_labels)

        view_detector_logits = None
        if self.view_detector is not None:
            view_detector_logits = self.view_detector(vision.view_features)  # (B, V)
            # The most confident view speaks for the image: (B,) added to the Roadwork logit (label 1).
            evidence = view_detector_logits.amax(dim=1).to(logits.dtype)
            logits = logits + torch.stack([torch.zeros_like(evidence), evidence], dim=-1)

        view_logits = self.view_classifier(vision.last_hidden_state) if self.view_classifier is not None else None
        weather_logits = self.weather_classifier(vision_embeds) if self.weather_classifier is not None else None
        seg_logits = self.segmentation_decoder(vision_embeds) if self.segmentation_decoder is not None else None

        loss, components = None, dict.fromkeys(LOSS_COMPONENTS)
        if labels is not None:
            loss, components = self.loss_function(
                config, logits=logits, labels=labels, view_logits=view_logits, weather_logits=weather_logits,
                weather_labels=weather_labels, seg_logits=seg_logits, seg_masks=seg_masks,
                seg_mask_valid=seg_mask_valid, view_detector_logits=view_detector_logits, view_coverage=view_coverage,
            )  # fmt: skip

        return RoadworkImageClassifierOutput(
            loss=loss,
            logits=logits,
            view_logits=view_logits,
            weather_logits=weather_logits,
            seg_logits=seg_logits,
            vision_embeds=vision_embeds,
            pooled_embeds=pooled,
            kept_view_indices=vision.kept_view_indices,
            view_scores=vision.view_scores,
            view_detector_logits=view_detector_logits,
            **components,
        )


RoadworkForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "RoadworkPreTrainedModel",
    "RoadworkModel",
    "RoadworkForImageClassification",
    "RoadworkModelOutput",
    "RoadworkImageClassifierOutput",
    "linear_path_features",
    "tile_max",
]
