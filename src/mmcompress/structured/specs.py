"""Pruning specs: per model family, which layers couple into heads, neurons and channels, and
which blocks can be removed whole. Explicit rather than traced: one small function per block
type, matched by class.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..models.demo import DemoDualEncoder
from ..models.fusion import Block, ConvEncoder, Head
from ..models.resnet_cifar import BasicBlock
from .groups import LayerList, UnitGroup


@dataclass
class PruningStructure:
    """Everything structured pruning may remove in one model."""

    units: list[UnitGroup] = field(default_factory=list)
    layer_lists: list[LayerList] = field(default_factory=list)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _dim(layer: nn.Module, attr: str) -> int:
    """A linear or conv layer's `attr` (``out_features``, ``out_channels`` …); 0 for a module
    an earlier stage put in its place that does not say (half precision, sparse and
    quantized): its group is still found, and `check_prunable` refuses it when targeted."""
    value = getattr(layer, attr, None)
    return int(value) if isinstance(value, int) else 0


def _clip_layer(name: str, layer: nn.Module) -> list[UnitGroup]:
    """HF CLIP / SigLIP encoder layer: ``self_attn.{q,k,v,out}_proj`` heads, ``mlp.fc1/fc2``."""
    attn, p = layer.self_attn, _join(name, "self_attn")
    heads = UnitGroup(
        "heads", p, tuple(f"{p}.{x}_proj" for x in "qkv"), (f"{p}.out_proj",),
        size=_dim(attn.q_proj, "out_features") // attn.head_dim, out_width=attn.head_dim,
        in_width=attn.head_dim, attrs=((p, "num_heads", 1),), layer=name)
    m = _join(name, "mlp")
    neurons = UnitGroup("neurons", m, (f"{m}.fc1",), (f"{m}.fc2",),
                        size=_dim(layer.mlp.fc1, "out_features"), layer=name)
    return [heads, neurons]


def _bert_layer(name: str, layer: nn.Module) -> list[UnitGroup]:
    """BERT layer: ``attention.self.{query,key,value}`` + ``attention.output.dense`` heads,
    ``intermediate.dense`` + ``output.dense`` neurons."""
    s, p = layer.attention.self, _join(name, "attention")
    hd = s.attention_head_size
    heads = UnitGroup(
        "heads", f"{p}.self", tuple(f"{p}.self.{x}" for x in ("query", "key", "value")),
        (f"{p}.output.dense",), size=_dim(s.query, "out_features") // hd, out_width=hd, in_width=hd,
        attrs=((f"{p}.self", "num_attention_heads", 1), (f"{p}.self", "all_head_size", hd)),
        layer=name)
    neurons = UnitGroup("neurons", _join(name, "intermediate"),
                        (_join(name, "intermediate.dense"),), (_join(name, "output.dense"),),
                        size=_dim(layer.intermediate.dense, "out_features"), layer=name)
    return [heads, neurons]


def _resnet_block(name: str, block: nn.Module) -> list[UnitGroup]:
    """CIFAR BasicBlock: inner channels (conv1 outputs, bn1, conv2 inputs); the residual
    channels (conv2 outputs, bn2) stay, coupled with the shortcut."""
    return [UnitGroup("channels", _join(name, "conv1"),
                      (_join(name, "conv1"), _join(name, "bn1")), (_join(name, "conv2"),),
                      size=_dim(block.conv1, "out_channels"), layer=name)]


def _demo(name: str, model: nn.Module) -> list[UnitGroup]:
    """The demo's digit CNN: conv1 → conv2 → (pool, flatten) → fc → visual_projection."""
    v = _join(name, "vision")
    conv2, fc = model.vision.conv2, model.vision.fc
    channels = _dim(conv2, "out_channels")
    return [
        UnitGroup("channels", f"{v}.conv1", (f"{v}.conv1",), (f"{v}.conv2",),
                  size=_dim(model.vision.conv1, "out_channels")),
        UnitGroup("channels", f"{v}.conv2", (f"{v}.conv2",), (f"{v}.fc",),
                  size=channels, in_width=_dim(fc, "in_features") // max(channels, 1)),
        UnitGroup("neurons", f"{v}.fc", (f"{v}.fc",), (_join(name, "visual_projection"),),
                  size=_dim(fc, "out_features")),
    ]


def _conv_encoder(name: str, enc: nn.Module) -> list[UnitGroup]:
    """Fusion models' CNNs: each conv's output channels feed the next conv, the last the
    per-token projection ``proj``."""
    convs = [_join(name, f"convs.{i}") for i in range(len(enc.convs))]
    consumers = [*convs[1:], _join(name, "proj")]
    return [UnitGroup("channels", c, (c,), (nxt,), size=_dim(conv, "out_channels"))
            for c, nxt, conv in zip(convs, consumers, enc.convs, strict=True)]


def _fusion_head(name: str, head: nn.Module) -> list[UnitGroup]:
    """Fusion models' classifier heads: ``mlp.fc1`` rows + ``mlp.fc2`` columns."""
    m = _join(name, "mlp")
    return [UnitGroup("neurons", m, (f"{m}.fc1",), (f"{m}.fc2",),
                      size=_dim(head.mlp.fc1, "out_features"))]


# Hugging Face block classes, by module and name: matched only once transformers has imported
# them (a model holding one has), so pruning a ResNet never imports transformers
HF_LAYERS = {
    "transformers.models.clip.modeling_clip": ("CLIPEncoderLayer", _clip_layer),
    "transformers.models.siglip.modeling_siglip": ("SiglipEncoderLayer", _clip_layer),
    "transformers.models.bert.modeling_bert": ("BertLayer", _bert_layer),
}


def _loaded_hf_layers() -> dict[type, Callable[[str, nn.Module], list[UnitGroup]]]:
    return {getattr(module, name): spec for path, (name, spec) in HF_LAYERS.items()
            if (module := sys.modules.get(path)) is not None}


def transformer_layers() -> tuple[type, ...]:
    """Transformer block classes: the Hugging Face CLIP, SigLIP and BERT layers transformers
    has imported, and fusion models' blocks."""
    return (*_loaded_hf_layers(), Block)


def _specs() -> dict[type, Callable[[str, nn.Module], list[UnitGroup]]]:
    return {
        **_loaded_hf_layers(),
        BasicBlock: _resnet_block,
        DemoDualEncoder: _demo,
        Block: _clip_layer,  # fusion models' blocks use CLIP's names (self_attn.*_proj, mlp.fc*)
        ConvEncoder: _conv_encoder,
        Head: _fusion_head,
    }


def _removable(container: nn.Module) -> tuple[int, ...] | None:
    blocks = list(container)
    if blocks and all(isinstance(b, transformer_layers()) for b in blocks):
        return tuple(range(len(blocks)))
    if blocks and all(isinstance(b, BasicBlock) for b in blocks):
        # only blocks with an identity shortcut keep shapes when removed; they are also the
        # trailing ones reload rebuilds by shortening the list
        return tuple(i for i, b in enumerate(blocks) if b.pad is None)
    return None


def find_structure(model: nn.Module) -> PruningStructure:
    """Unit groups and removable-layer lists of every block type a spec knows."""
    out = PruningStructure()
    specs = _specs()
    for name, module in model.named_modules():
        spec = next((fn for cls, fn in specs.items() if isinstance(module, cls)), None)
        if spec is not None:
            out.units.extend(spec(name, module))
        if isinstance(module, nn.ModuleList | nn.Sequential):
            removable = _removable(module)
            if removable:
                out.layer_lists.append(LayerList(name, len(module), removable))
    return out
