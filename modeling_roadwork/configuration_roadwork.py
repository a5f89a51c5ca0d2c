"""Configuration of the roadwork multi-view classifier."""

from __future__ import annotations

import math

from transformers import DINOv3ViTConfig, PretrainedConfig, TimmWrapperConfig
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .losses_roadwork import LOSS_COMPONENTS, LOSS_WEIGHT_FIELDS
from .text_encoding_roadwork import MINILM_ID


# facebook/dinov3-vith16plus-pretrain-lvd1689m (ViT-H+/16, 840M parameters). Gated on the Hub: accept the
# DINOv3 licence and log in before `from_backbone` can download it.
DINOV3_VITH16PLUS_ID = "facebook/dinov3-vith16plus-pretrain-lvd1689m"
DINOV3_VITH16PLUS_KWARGS = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="silu",
    use_gated_mlp=True,
    num_register_tokens=4,
    patch_size=16,
    image_size=224,
    layerscale_value=1.0,
    layer_norm_eps=1e-5,
)
CONVNEXTV2_BASE_ID = "timm/convnextv2_base.fcmae_ft_in22k_in1k"

DEFAULT_WEATHER_VOCAB = ["sunny", "rainy", "foggy", "cloudy", "clear", "overcast", "snowy"]
DEFAULT_DAYTIME_VOCAB = ["day", "night", "dawn", "dusk", "light"]
DEFAULT_SCENE_VOCAB = ["urban", "highway", "residential", "rural", "industrial", "commercial"]
DEFAULT_SEG_CLASSES = ["cone", "barrier", "sign", "worker", "vehicle", "equipment"]
BACKBONE_POOLINGS = ("native", "max", "native_max")
LINEAR_PATH_INPUTS = ("global", "global+tile_max")
VIEW_FEATURE_NORMS = ("none", "batch")

_AUTO_MAP = {
    "AutoConfig": "configuration_roadwork.RoadworkConfig",
    "AutoModel": "modeling_roadwork.RoadworkForImageClassification",
    "AutoModelForImageClassification": "modeling_roadwork.RoadworkForImageClassification",
}
_SUPPORTED_BACKBONES = {"dinov3_vit": DINOv3ViTConfig, "timm_wrapper": TimmWrapperConfig}


def _backbone_config_from(value) -> PretrainedConfig:
    """Turns `None`, a dict (as read back from config.json) or a config into a backbone config."""
    if value is None:
        return DINOv3ViTConfig(**DINOV3_VITH16PLUS_KWARGS)
    if isinstance(value, PretrainedConfig):
        config = value
    elif isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", "dinov3_vit")
        if model_type not in _SUPPORTED_BACKBONES:
            raise ValueError(
                f"backbone_config.model_type={model_type!r} is not supported; "
                f"use one of {sorted(_SUPPORTED_BACKBONES)}"
            )
        config = _SUPPORTED_BACKBONES[model_type](**value)
    else:
        raise ValueError(f"backbone_config must be a config, a dict or None, got {type(value).__name__}")
    if config.model_type not in _SUPPORTED_BACKBONES:
        raise ValueError(
            f"backbone_config.model_type={config.model_type!r} is not supported; "
            f"use one of {sorted(_SUPPORTED_BACKBONES)}"
        )
    return config


def _float_list(value, default):
    """A sequence of numbers as a list of floats (JSON-friendly); anything else is kept for validation to name."""
    if value is None:
        return [float(v) for v in default]
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return value


class RoadworkConfig(PretrainedConfig):
    r"""
    Configuration of [`RoadworkModel`] and [`RoadworkForImageClassification`]: a frozen backbone over several views
    of a street photo, view pruning, a gated-attention stack, gated view fusion, a NULL-safe metadata encoder, a
    classifier and auxiliary heads trained with a four-part loss. Every component can be switched off, so an ablation
    is a config change. The defaults are the architecture drawn in the README's "The model" section.

    Args:
        backbone_config (`DINOv3ViTConfig` or `TimmWrapperConfig` or `dict`, *optional*):
            The backbone. Defaults to DINOv3 ViT-H+/16 (`facebook/dinov3-vith16plus-pretrain-lvd1689m`).
            A `TimmWrapperConfig(architecture="convnextv2_base.fcmae_ft_in22k_in1k")` selects a timm model.
        backbone_hidden_size (`int`, *optional*):
            Width of the backbone's pooled output. Read from a DINOv3 config; for timm backbones it is filled in when
            the model is built. One view's feature (`view_feature_size`) is this, or twice it with
            `backbone_pooling="native_max"`.
        backbone_pooling (`str`, *optional*, defaults to `"native"`):
            How one view's feature is pooled from the backbone: `"native"`, the backbone's own pooled output (timm's
            global average pool, DINOv3's CLS token); `"max"`, the maximum of every channel over the spatial
            positions (patch tokens for a ViT), so a small object that lights up one position is not averaged away;
            `"native_max"`, both concatenated. The backbone's compute is the same for all three.
        freeze_backbone (`bool`, *optional*, defaults to `True`):
            Keep the backbone frozen (no gradients, eval mode).
        backbone_autocast_dtype (`str`, *optional*, defaults to `"auto"`):
            Autocast dtype of the frozen backbone forward: `"auto"` (bfloat16 when the input is on a CUDA device that
            supports it, no autocast elsewhere: on CPU bf16 is slow without native units and shifts features),
            `"bfloat16"`, `"float16"`, or `None` / `"float32"` for no autocast.
        backbone_batch_size (`int`, *optional*):
            Run the backbone over at most this many views at once (bounds activation memory); `None` = all.
        num_views (`int`, *optional*, defaults to 12):
            Views per image (global, 3x3 tiles, centre, right).
        view_size (`int`, *optional*, defaults to 512):
            Side of a view in pixels; a multiple of the DINOv3 patch size 16.
        image_mean (`list[float]`, *optional*, defaults to the ImageNet mean `[0.485, 0.456, 0.406]`):
            Per-channel mean the backbone was trained with; `from_backbone` reads it from the backbone (timm
            `pretrained_cfg`, the DINOv3 image processor). `RoadworkImageProcessor.from_model_config` uses it.
        image_std (`list[float]`, *optional*, defaults to the ImageNet std `[0.229, 0.224, 0.225]`):
            Per-channel std the backbone was trained with (read like `image_mean`).
        resample (`str`, *optional*, defaults to `"bicubic"`):
            Resampling filter of the views: `"bicubic"`, `"bilinear"`, `"lanczos"`, `"box"` or `"hamming"` (the
            backbone's interpolation where it names one of these).
        use_view_pruning (`bool`, *optional*, defaults to `True`):
            Score views and keep the top `num_kept_views`. Pruning happens after the backbone: it saves head
            compute only.
        num_kept_views (`int`, *optional*, defaults to 8):
            Views kept by pruning (top-k).
        view_scorer_reduction (`int`, *optional*, defaults to 4):
            The view scorer is an MLP `D -> D / reduction -> 1`.
        view_feature_norm (`str`, *optional*, defaults to `"none"`):
            How the head normalises each view's pooled backbone feature before pruning and the input projection.
            `"none"`: raw features (the earlier models). `"batch"`: `BatchNorm1d` over every view of the batch, a
            per-channel standardisation like the linear probe's (running statistics at inference), so channels with a
            small spread (a cone's) are not drowned by large ones. The linear path reads the raw features (it has its
            own normalisation).
        use_tile_max_token (`bool`, *optional*, defaults to `False`):
            Append one more token to the attention stack: the element-wise max of the tiles' pooled features (views
            1..V-1, before pruning; normalised like the views), through the same input projection, with a view
            embedding of its own. With max-pooled features it is the max over the whole image at the tiles' zoom,
            the feature on which a linear probe finds small objects that the views' weighted average dilutes. Needs
            `num_views >= 2`. `last_hidden_state` keeps the views' tokens only.
        use_view_detector (`bool`, *optional*, defaults to `False`):
            A per-view roadwork detector (`view_detector`: LayerNorm + MLP, one logit per view) on every view's pooled
            backbone feature, before pruning. Its largest view logit is added to the Roadwork logit, so an object that
            one tile sees counts for the whole image however the fusion weighs that tile. Where the training rows have
            masks (`view_coverage`: the share of each view the roadwork masks cover, measured in the frame the views
            were cut from), each view is supervised on its own (`detector_loss`): positive when the masks cover at
            least `view_detector_positive_coverage` of it, negative when they cover under a tenth of that, ignored in
            between. Needs `num_labels == 2`.
        view_detector_hidden_size (`int`, *optional*, defaults to 64):
            Hidden width of the per-view detector's MLP.
        view_detector_positive_coverage (`float`, *optional*, defaults to 0.001):
            Share of a view's area the roadwork masks must cover for the view to be a positive of the detector loss
            (0.001 of a 160 px view is 5x5 pixels: a distant cone).
        use_view_embeddings (`bool`, *optional*, defaults to `True`):
            Add a learned embedding of each view's position (global, tile i, centre, right) before attention, so that
            attention knows which view a token came from.
        hidden_size (`int`, *optional*, defaults to 512):
            Width of the head (input projection, attention stack, view fusion).
        use_pyramid (`bool`, *optional*, defaults to `True`):
            Multi-scale pyramid after the input projection.
        pyramid_sizes (`list[int]`, *optional*, defaults to `[256, 128]`):
            Widths of the pyramid's reduced levels (the full level is `hidden_size`).
        num_attention_layers (`int`, *optional*, defaults to 4):
            Gated-attention layers.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Heads of every attention in the head; `hidden_size` must be divisible by it.
        use_attention_gate (`bool`, *optional*, defaults to `True`):
            Multiply each attention layer's output by `sigmoid(gate_proj(x))` (gated attention); off = plain
            multi-head attention (no `gate_proj` weights), for the ablation.
        attention_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on attention probabilities.
        hidden_dropout (`float`, *optional*, defaults to 0.3):
            Dropout on residual branches, the fusion layer and the classifiers (0.3 since the head trains; not yet
            measured against other values with a repo command).
        use_view_fusion (`bool`, *optional*, defaults to `True`):
            Gated attention fusion (importance gates, cross-view and refinement attention, gate-weighted pooling);
            off = mean pooling over views.
        fusion_gate_hidden_size (`int`, *optional*, defaults to 128):
            Hidden width of the view importance gate MLP.
        use_metadata (`bool`, *optional*, defaults to `True`):
            Encode GPS, weather, daytime, scene and text and fuse them with the vision vector.
        gps_embed_dim (`int`, *optional*, defaults to 128):
            Width of the sinusoidal GPS encoding (split equally between latitude and longitude, sin and cos).
        gps_max_frequency (`float`, *optional*, defaults to 10000.0):
            Highest GPS frequency; bands are log-spaced from 1.
        category_embed_dim (`int`, *optional*, defaults to 64):
            Width of the weather, daytime and scene embeddings.
        weather_vocab, daytime_vocab, scene_vocab (`list[str]`, *optional*):
            Category vocabularies (lowercase). Id 0 is the learned NULL row, id `i + 1` is `vocab[i]`; unknown values
            map to NULL. Build them from the training split.
        use_text (`bool`, *optional*, defaults to `True`):
            Use the scene description embedding.
        text_encoder_name (`str`, *optional*, defaults to `"sentence-transformers/all-MiniLM-L6-v2"`):
            Frozen sentence encoder that turns descriptions into `text_embeds`; recorded so that prediction embeds
            with the same one.
        text_embed_dim (`int`, *optional*, defaults to 384):
            Width of `text_embeds`.
        text_projection_dim (`int`, *optional*, defaults to 384):
            Width of the trainable projection of `text_embeds`.
        fusion_hidden_size (`int`, *optional*, defaults to 512):
            Width of the vision + metadata fusion layer.
        classifier_hidden_size (`int`, *optional*, defaults to 256):
            Hidden width of the classifier and of the weather head.
        use_global_linear_path (`bool`, *optional*, defaults to `True`):
            A linear path (`global_classifier`: LayerNorm + Linear) from the pooled backbone feature of the global
            view (view 0, before pruning) to the logits, added to the classifier's logits: a linear probe inside the
            model, so the multi-view head learns a correction on top of it. How it trains is
            `global_linear_path_init`. A config saved without the field loads with the default.
        global_linear_path_init (`str`, *optional*, defaults to `"probe"`):
            With `use_global_linear_path`: `"probe"` makes the path a floor by construction. The path is zero and
            frozen while the head trains; then `roadwork_training.probe_floor.fit_global_linear_path` fits it as an L2
            logistic-regression probe on the training rows' global-view features, and `apply_probe_floor` keeps the
            best on validation of the head alone, the head plus the probe and the probe alone (train.py and the
            benchmarks do both). `"joint"`: the path starts from `linear_init` and trains jointly with the head
            through the summed logits (the earlier behaviour; 0.447 against 0.537 without the path, README
            "Training", head initialisation).
        global_linear_path_input (`str`, *optional*, defaults to `"global"`):
            What the linear path reads. `"global"`: the pooled feature of the global view (view 0).
            `"global+tile_max"`: that feature concatenated with the element-wise max of the pooled features of the
            other views (the tiles), before pruning. With spatially max-pooled features (`backbone_pooling="max"`) that
            is the max over the whole image at the tiles' zoom: a linear detector of small objects (README, "Quality
            against the simplest peer"). Needs `num_views >= 2`. The path is then `2 * view_feature_size` wide.
        use_view_consistency (`bool`, *optional*, defaults to `True`):
            Per-view classifier and the view-consistency KL loss.
        consistency_target (`str`, *optional*, defaults to `"views_mean"`):
            `"views_mean"`: KL(p_view || mean of view predictions), the default. `"final"`: KL(p_view || the final
            prediction, detached), which also teaches each view head to predict roadwork.
        use_weather_head (`bool`, *optional*, defaults to `True`):
            Weather classifier on the vision vector (auxiliary loss on rows with a known weather).
        use_segmentation (`bool`, *optional*, defaults to `True`):
            Segmentation decoder (auxiliary Dice loss on rows with pseudo masks).
        seg_class_names (`list[str]`, *optional*):
            The pseudo-mask classes, defaults to cone, barrier, sign, worker, vehicle, equipment.
        seg_resolution (`int`, *optional*, defaults to 32):
            Side of the predicted masks; target masks are resized to it.
        focal_loss_weight, consistency_loss_weight, weather_loss_weight, seg_loss_weight (`float`, *optional*):
            Loss weights, defaults 0.40, 0.25, 0.15, 0.20.
        detector_loss_weight (`float`, *optional*, defaults to 0.5):
            Weight of the per-view detector's binary cross-entropy (`use_view_detector`, rows with `view_coverage`).
        detector_focal_gamma (`float`, *optional*, defaults to 0.0):
            Focusing exponent of the detector loss: each view's term is scaled by `(1 - p_t) ** gamma`, so the views
            the detector already gets right weigh little and the look-alikes it fires on and the distant objects it
            misses weigh most. 0 is plain binary cross-entropy.
        focal_gamma (`float`, *optional*, defaults to 2.0), focal_alpha (`float`, *optional*, defaults to 0.25):
            Focal loss parameters; `alpha` weights the Roadwork class and `1 - alpha` the None class.
        label_smoothing (`float`, *optional*, defaults to 0.1):
            Label smoothing of the focal loss.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the truncated normal used to initialise the head's embeddings (and its linear layers with
            `linear_init="normal"`).
        linear_init (`str`, *optional*, defaults to `"fan_in"`):
            Initialisation of the head's linear layers: `"fan_in"`, a truncated normal with std `1 / sqrt(fan_in)`,
            keeps the signal's scale through the stacked projections; `"normal"` uses `initializer_range` for every
            layer, which shrinks the signal about 4x per layer: the head's logits start near zero and it often
            predicts one class for many epochs or the whole run (serving MCC 0.280 +- 0.360 against 0.537 +- 0.025
            with `"fan_in"`, 3 seeds; README "Training", head initialisation).

    Example:

    ```python
    >>> from modeling_roadwork import RoadworkConfig, RoadworkForImageClassification

    >>> # The default architecture around DINOv3 ViT-H+/16 (random weights; see `from_backbone` for pretrained ones)
    >>> configuration = RoadworkConfig()
    >>> configuration.num_kept_views, configuration.hidden_size
    (8, 512)
    ```
    """

    model_type = "roadwork"

    def __init__(
        self,
        backbone_config=None,
        backbone_hidden_size: int | None = None,
        freeze_backbone: bool = True,
        backbone_autocast_dtype: str | None = "auto",
        backbone_pooling: str = "native",
        backbone_batch_size: int | None = None,
        num_views: int = 12,
        view_size: int = 512,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        resample: str = "bicubic",
        use_view_pruning: bool = True,
        num_kept_views: int = 8,
        view_scorer_reduction: int = 4,
        use_view_embeddings: bool = True,
        view_feature_norm: str = "none",
        use_tile_max_token: bool = False,
        use_view_detector: bool = False,
        view_detector_hidden_size: int = 64,
        view_detector_positive_coverage: float = 0.001,
        hidden_size: int = 512,
        use_pyramid: bool = True,
        pyramid_sizes: list[int] | None = None,
        num_attention_layers: int = 4,
        num_attention_heads: int = 8,
        use_attention_gate: bool = True,
        attention_dropout: float = 0.1,
        hidden_dropout: float = 0.3,
        use_view_fusion: bool = True,
        fusion_gate_hidden_size: int = 128,
        use_metadata: bool = True,
        gps_embed_dim: int = 128,
        gps_max_frequency: float = 10000.0,
        category_embed_dim: int = 64,
        weather_vocab: list[str] | None = None,
        daytime_vocab: list[str] | None = None,
        scene_vocab: list[str] | None = None,
        use_text: bool = True,
        text_encoder_name: str = MINILM_ID,
        text_embed_dim: int = 384,
        text_projection_dim: int = 384,
        fusion_hidden_size: int = 512,
        classifier_hidden_size: int = 256,
        use_global_linear_path: bool = True,
        use_view_consistency: bool = True,
        consistency_target: str = "views_mean",
        use_weather_head: bool = True,
        use_segmentation: bool = True,
        seg_class_names: list[str] | None = None,
        seg_resolution: int = 32,
        focal_loss_weight: float = 0.40,
        consistency_loss_weight: float = 0.25,
        weather_loss_weight: float = 0.15,
        seg_loss_weight: float = 0.20,
        detector_loss_weight: float = 0.5,
        detector_focal_gamma: float = 0.0,
        focal_gamma: float = 2.0,
        focal_alpha: float = 0.25,
        label_smoothing: float = 0.1,
        initializer_range: float = 0.02,
        linear_init: str = "fan_in",
        global_linear_path_init: str = "probe",
        global_linear_path_input: str = "global",
        **kwargs,
    ):
        self.backbone_config = _backbone_config_from(backbone_config)
        if backbone_hidden_size is None and self.backbone_config.model_type == "dinov3_vit":
            backbone_hidden_size = self.backbone_config.hidden_size
        self.backbone_hidden_size = backbone_hidden_size
        self.freeze_backbone = freeze_backbone
        self.backbone_autocast_dtype = backbone_autocast_dtype
        self.backbone_pooling = backbone_pooling
        self.backbone_batch_size = backbone_batch_size
        self.num_views = num_views
        self.view_size = view_size
        self.image_mean = _float_list(image_mean, IMAGENET_DEFAULT_MEAN)
        self.image_std = _float_list(image_std, IMAGENET_DEFAULT_STD)
        self.resample = resample
        self.use_view_pruning = use_view_pruning
        self.num_kept_views = num_kept_views
        self.view_scorer_reduction = view_scorer_reduction
        self.use_view_embeddings = use_view_embeddings
        self.view_feature_norm = view_feature_norm
        self.use_tile_max_token = use_tile_max_token
        self.use_view_detector = use_view_detector
        self.view_detector_hidden_size = view_detector_hidden_size
        self.view_detector_positive_coverage = view_detector_positive_coverage
        self.hidden_size = hidden_size
        self.use_pyramid = use_pyramid
        self.pyramid_sizes = list(pyramid_sizes) if pyramid_sizes is not None else [256, 128]
        self.num_attention_layers = num_attention_layers
        self.num_attention_heads = num_attention_heads
        self.use_attention_gate = use_attention_gate
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.use_view_fusion = use_view_fusion
        self.fusion_gate_hidden_size = fusion_gate_hidden_size
        self.use_metadata = use_metadata
        self.gps_embed_dim = gps_embed_dim
        self.gps_max_frequency = gps_max_frequency
        self.category_embed_dim = category_embed_dim
        self.weather_vocab = list(weather_vocab) if weather_vocab is not None else list(DEFAULT_WEATHER_VOCAB)
        self.daytime_vocab = list(daytime_vocab) if daytime_vocab is not None else list(DEFAULT_DAYTIME_VOCAB)
        self.scene_vocab = list(scene_vocab) if scene_vocab is not None else list(DEFAULT_SCENE_VOCAB)
        self.use_text = use_text
        self.text_encoder_name = text_encoder_name
        self.text_embed_dim = text_embed_dim
        self.text_projection_dim = text_projection_dim
        self.fusion_hidden_size = fusion_hidden_size
        self.classifier_hidden_size = classifier_hidden_size
        self.use_global_linear_path = use_global_linear_path
        self.use_view_consistency = use_view_consistency
        self.consistency_target = consistency_target
        self.use_weather_head = use_weather_head
        self.use_segmentation = use_segmentation
        self.seg_class_names = list(seg_class_names) if seg_class_names is not None else list(DEFAULT_SEG_CLASSES)
        self.seg_resolution = seg_resolution
        self.focal_loss_weight = focal_loss_weight
        self.consistency_loss_weight = consistency_loss_weight
        self.weather_loss_weight = weather_loss_weight
        self.seg_loss_weight = seg_loss_weight
        self.detector_loss_weight = detector_loss_weight
        self.detector_focal_gamma = detector_focal_gamma
        self.focal_gamma = focal_gamma
        self.focal_alpha = focal_alpha
        self.label_smoothing = label_smoothing
        self.initializer_range = initializer_range
        self.linear_init = linear_init
        self.global_linear_path_init = global_linear_path_init
        self.global_linear_path_input = global_linear_path_input

        kwargs.setdefault("id2label", {0: "None", 1: "Roadwork"})
        id2label = {int(k): v for k, v in kwargs["id2label"].items()}
        kwargs.setdefault("label2id", {v: k for k, v in id2label.items()})
        # Trainer's evaluation loop gathers every output but these; keep only logits (and loss).
        kwargs.setdefault(
            "keys_to_ignore_at_inference",
            [
                "view_logits", "weather_logits", "seg_logits", "vision_embeds", "pooled_embeds",
                "kept_view_indices", "view_scores", *LOSS_COMPONENTS,
            ],
        )  # fmt: skip
        auto_map = dict(_AUTO_MAP)
        auto_map.update(kwargs.pop("auto_map", None) or {})
        super().__init__(**kwargs)
        self.auto_map = auto_map
        self.validate_roadwork()

    @property
    def num_kept(self) -> int:
        """Views that reach the attention stack (`num_kept_views` with pruning, else `num_views`)."""
        return self.num_kept_views if self.use_view_pruning else self.num_views

    @property
    def view_feature_size(self) -> int | None:
        """Width D of one view's feature, what the head reads and the cache stores (`backbone_pooling`)."""
        if self.backbone_hidden_size is None:
            return None
        return self.backbone_hidden_size * (2 if self.backbone_pooling == "native_max" else 1)

    @property
    def linear_path_feature_size(self) -> int | None:
        """Width of what the global linear path reads (`global_linear_path_input`)."""
        size = self.view_feature_size
        if size is None:
            return None
        return size * (2 if self.global_linear_path_input == "global+tile_max" else 1)

    @property
    def probe_floor(self) -> bool:
        """Whether the global linear path is a fitted, frozen probe (`global_linear_path_init="probe"`)."""
        return bool(self.use_global_linear_path) and self.global_linear_path_init == "probe"

    @property
    def metadata_dim(self) -> int:
        """Width of the metadata vector (704 with the defaults)."""
        if not self.use_metadata:
            return 0
        return self.gps_embed_dim + 3 * self.category_embed_dim + (self.text_projection_dim if self.use_text else 0)

    def validate_roadwork(self) -> None:
        """Raises `ValueError` naming the first invalid field and its value."""

        def fail(name, rule):
            raise ValueError(f"RoadworkConfig.{name}={getattr(self, name)!r} is invalid: {rule}")

        for name in (
            "num_views", "view_size", "num_kept_views", "view_scorer_reduction", "hidden_size", "num_attention_heads",
            "fusion_gate_hidden_size", "gps_embed_dim", "category_embed_dim", "text_embed_dim", "text_projection_dim",
            "fusion_hidden_size", "classifier_hidden_size", "seg_resolution", "view_detector_hidden_size",
        ):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(name, "must be a positive integer")
        if not isinstance(self.num_attention_layers, int) or self.num_attention_layers < 0:
            fail("num_attention_layers", "must be an integer >= 0")
        if self.backbone_hidden_size is not None and (
            not isinstance(self.backbone_hidden_size, int) or self.backbone_hidden_size <= 0
        ):
            fail("backbone_hidden_size", "must be a positive integer or None")
        if self.backbone_batch_size is not None and (
            not isinstance(self.backbone_batch_size, int) or self.backbone_batch_size <= 0
        ):
            fail("backbone_batch_size", "must be a positive integer or None")
        if self.use_view_pruning and self.num_kept_views > self.num_views:
            fail("num_kept_views", f"top-k cannot exceed num_views={self.num_views}")
        if self.hidden_size % self.num_attention_heads:
            fail("hidden_size", f"must be divisible by num_attention_heads={self.num_attention_heads}")
        if self.gps_embed_dim % 4:
            fail("gps_embed_dim", "must be divisible by 4 (sin and cos of latitude and longitude)")
        if not self.gps_max_frequency > 1:
            fail("gps_max_frequency", "must be > 1")
        if any(not isinstance(s, int) or s <= 0 for s in self.pyramid_sizes):
            fail("pyramid_sizes", "must be a list of positive integers")
        for name in ("attention_dropout", "hidden_dropout", "label_smoothing"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                fail(name, "must be in [0, 1)")
        if self.linear_init not in ("fan_in", "normal"):
            fail("linear_init", "must be 'fan_in' or 'normal'")
        if self.global_linear_path_init not in ("probe", "joint"):
            fail("global_linear_path_init", "must be 'probe' or 'joint'")
        if self.view_feature_norm not in VIEW_FEATURE_NORMS:
            fail("view_feature_norm", f"must be one of {', '.join(map(repr, VIEW_FEATURE_NORMS))}")
        if self.global_linear_path_input not in LINEAR_PATH_INPUTS:
            fail("global_linear_path_input", f"must be one of {', '.join(map(repr, LINEAR_PATH_INPUTS))}")
        if self.use_tile_max_token and self.num_views < 2:
            fail("use_tile_max_token", f"the tile-max token needs tiles: num_views >= 2, got {self.num_views}")
        if self.global_linear_path_input == "global+tile_max" and self.num_views < 2:
            fail("global_linear_path_input", f"'global+tile_max' needs tiles: num_views >= 2, got {self.num_views}")
        if self.use_view_detector and self.num_labels != 2:
            fail("use_view_detector", f"the view detector adds to the Roadwork logit: needs num_labels == 2, got "
                 f"{self.num_labels}")  # fmt: skip
        if not 0.0 < self.view_detector_positive_coverage <= 1.0:
            fail("view_detector_positive_coverage", "must be in (0, 1]")
        if not 0.0 <= self.focal_alpha <= 1.0:
            fail("focal_alpha", "must be in [0, 1]")
        if self.focal_gamma < 0:
            fail("focal_gamma", "must be >= 0")
        if self.detector_focal_gamma < 0:
            fail("detector_focal_gamma", "must be >= 0")
        for name in LOSS_WEIGHT_FIELDS.values():
            if getattr(self, name) < 0:
                fail(name, "loss weights must be >= 0")
        if self.consistency_target not in ("views_mean", "final"):
            fail("consistency_target", "must be 'views_mean' or 'final'")
        if self.backbone_pooling not in BACKBONE_POOLINGS:
            fail("backbone_pooling", f"must be one of {', '.join(BACKBONE_POOLINGS)}")
        if self.backbone_autocast_dtype not in (None, "auto", "bfloat16", "float16", "float32"):
            fail("backbone_autocast_dtype", "must be 'auto', 'bfloat16', 'float16', 'float32' or None")
        for name, positive in (("image_mean", False), ("image_std", True)):
            values = getattr(self, name)
            if (
                not isinstance(values, list)
                or len(values) != 3
                or not all(isinstance(v, float) and math.isfinite(v) for v in values)
                or (positive and min(values) <= 0)
            ):
                fail(name, "must be 3 finite floats (one per RGB channel)" + (", each > 0" if positive else ""))
        if self.resample not in ("bicubic", "bilinear", "lanczos", "box", "hamming"):
            fail("resample", "must be 'bicubic', 'bilinear', 'lanczos', 'box' or 'hamming'")
        for name in ("weather_vocab", "daytime_vocab", "scene_vocab", "seg_class_names"):
            values = getattr(self, name)
            if any(not isinstance(v, str) or not v for v in values) or len(set(values)) != len(values):
                fail(name, "must be a list of distinct non-empty strings")
        if self.use_weather_head and not self.weather_vocab:
            fail("weather_vocab", "the weather head needs at least one weather class (or set use_weather_head=False)")
        if self.num_labels < 2:
            fail("num_labels", "the classifier needs at least 2 labels")

    def to_dict(self):
        output = super().to_dict()
        output["backbone_config"] = self.backbone_config.to_dict()
        return output


RoadworkConfig.register_for_auto_class("AutoConfig")

__all__ = [
    "BACKBONE_POOLINGS",
    "CONVNEXTV2_BASE_ID",
    "DINOV3_VITH16PLUS_ID",
    "LINEAR_PATH_INPUTS",
    "RoadworkConfig",
    "VIEW_FEATURE_NORMS",
]
