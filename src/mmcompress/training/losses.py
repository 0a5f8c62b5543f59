"""Task and distillation losses as plain functions of tensors (no model code here).

Conventions: embeddings are L2-normalised rows; `scale` is a dual encoder's logit scale
(``exp(logit_scale)``); teacher tensors are expected detached (the callers compute them
under ``torch.no_grad``), so gradients reach only the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _targets(n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Row-normalised positive matrix: the diagonal, or every pair sharing a label."""
    if labels is None:
        return torch.eye(n, device=device)
    same = (labels[:, None] == labels[None, :]).float()
    return same / same.sum(1, keepdim=True)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −Σ target · log_softmax(logits) (target rows sum to 1)."""
    return -(target * logits.log_softmax(-1)).sum(-1).mean()


def info_nce(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric contrastive (CLIP) loss over a batch of matching image/text pairs.

    With `labels`, pairs of the same class are all positives (a caption of class c matches
    every image of class c), so repeated classes in a batch are not pushed apart.
    """
    logits = scale * image @ text.T
    target = _targets(len(image), labels, image.device)
    return (soft_cross_entropy(logits, target) + soft_cross_entropy(logits.T, target.T)) / 2


def cosine_mse(a: torch.Tensor, b: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the cosine similarity of sentence pairs and gold scores in [0, 1]."""
    return F.mse_loss(F.cosine_similarity(a, b, dim=-1), target)


def hinton_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(p_T ‖ p_S), softmax at temperature T, mean over rows (Hinton et al. 2015)."""
    t = temperature
    log_s = (student / t).log_softmax(-1)
    log_t = (teacher / t).log_softmax(-1)
    return t * t * (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def affinity_mimic(s_image: torch.Tensor, s_text: torch.Tensor, s_scale: torch.Tensor | float,
                   t_image: torch.Tensor, t_text: torch.Tensor,
                   t_scale: torch.Tensor | float) -> torch.Tensor:
    """TinyCLIP affinity mimicking: soft cross-entropy between the teacher's and the student's
    image→text and text→image similarity distributions over the batch, averaged."""
    s_logits = s_scale * s_image @ s_text.T
    t_logits = t_scale * t_image @ t_text.T
    i2t = soft_cross_entropy(s_logits, t_logits.softmax(-1))
    t2i = soft_cross_entropy(s_logits.T, t_logits.T.softmax(-1))
    return (i2t + t2i) / 2


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """CLIP-KD feature distillation: mean squared distance between matching embeddings
    (summed over the embedding, averaged over the batch)."""
    return (student - teacher).pow(2).sum(-1).mean()


def interactive_contrastive(s_image: torch.Tensor, s_text: torch.Tensor,
                            t_image: torch.Tensor, t_text: torch.Tensor,
                            scale: torch.Tensor | float,
                            labels: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP-KD interactive contrastive loss: student images against the teacher's texts, and
    student texts against the teacher's images (InfoNCE each way), averaged."""
    img = soft_cross_entropy(scale * s_image @ t_text.T,
                             _targets(len(s_image), labels, s_image.device))
    txt = soft_cross_entropy(scale * s_text @ t_image.T,
                             _targets(len(s_text), labels, s_text.device))
    return (img + txt) / 2


def _token_mean(per_token: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
    """Mean of [B, L] per-token values over the real tokens (all of them when None)."""
    if tokens is None:
        return per_token.mean()
    return per_token[tokens].mean()


def feature_mse(student: torch.Tensor, teacher: torch.Tensor,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden-state matching: MSE between (projected) student and teacher features; for token
    sequences [B, L, D] with `tokens` ([B, L] bool), over the real tokens only."""
    if tokens is None:
        return F.mse_loss(student, teacher)
    return _token_mean((student - teacher).pow(2).mean(-1), tokens)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor,
                 tokens: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) between attention distributions [B, H, Lq, Lk], mean over
    batch, heads and queries (with `tokens`, [B, L] bool, the real queries only). Different
    head counts are compared head-averaged."""
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    eps = torch.finfo(student.dtype).tiny
    kl = teacher * (teacher.clamp_min(eps).log() - student.clamp_min(eps).log())
    return _token_mean(kl.sum(-1).mean(1), tokens)
