"""Contrastive training of an open_clip model on image–caption pairs (open_clip's `ClipLoss`).

Used to give the demo a small CLIP that actually knows the demo world (objects, colours, moods)
— the stand-in for the web-scale pretraining a real CLIP checkpoint comes with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from open_clip.loss import ClipLoss

from affectflow.models.clip import ClipBundle

logger = logging.getLogger(__name__)


def train_clip(bundle: ClipBundle, pixels: torch.Tensor, texts: Sequence[str], epochs: int,
               batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Train `bundle.model` in place on preprocessed `pixels` (N, 3, H, W) and their `texts`.

    Returns the mean loss of each epoch. The model is left in eval mode.
    """
    if len(texts) != len(pixels):
        raise ValueError(f"{len(pixels)} images but {len(texts)} texts")
    if epochs < 1 or batch_size < 2:
        raise ValueError("epochs must be >= 1 and batch_size >= 2 (contrastive needs negatives)")
    generator = torch.Generator().manual_seed(seed)
    model = bundle.model.train()
    tokens = bundle.tokenizer(list(texts), context_length=bundle.context_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * (len(texts) // batch_size), pct_start=0.1)
    loss_fn = ClipLoss()
    history = []
    for epoch in range(epochs):
        order = torch.randperm(len(texts), generator=generator)
        losses = []
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = order[start:start + batch_size]
            image_features, text_features, logit_scale = model(
                pixels[batch].to(bundle.device), tokens[batch].to(bundle.device))[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        history.append(sum(losses) / len(losses))
        logger.info("clip training epoch %d/%d: loss %.4f", epoch + 1, epochs, history[-1])
    model.eval()
    return history
