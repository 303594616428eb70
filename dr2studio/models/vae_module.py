"""Base class of the VAE networks (encoder and decoder), and weight norm on and off for training.

Inference modules carry plain weights (checkpoints are folded on load, see
:func:`dr2studio.weights.fold_weight_norm`); training re-parametrises the convolutions with weight
norm and folds it back before saving.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["VAEModule", "apply_weight_norm", "remove_weight_norm"]


def _norm_targets(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d))]


def apply_weight_norm(model: nn.Module) -> nn.Module:
    """Re-parametrise every convolution with weight norm (dim 0) for training; exact on the current weights."""
    from torch.nn.utils.parametrizations import weight_norm
    from torch.nn.utils.parametrize import is_parametrized

    for module in _norm_targets(model):
        if not is_parametrized(module, "weight"):
            weight_norm(module, name="weight", dim=0)
    return model


def remove_weight_norm(model: nn.Module) -> nn.Module:
    """Fold weight norm back into plain weights (for inference and for saving)."""
    from torch.nn.utils.parametrize import is_parametrized, remove_parametrizations

    for module in _norm_targets(model):
        if is_parametrized(module, "weight"):
            remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


class VAEModule(nn.Module):
    """Base of the encoder and decoder: device/dtype of the weights, hop, weight norm on and off."""

    config: Any  # a config with a ``hop_length`` property

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        return int(self.config.hop_length)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def apply_weight_norm(self):  # noqa: ANN201 - returns self for chaining
        """Weight-normalise every convolution (for training; exact on the current weights)."""
        return apply_weight_norm(self)

    def remove_weight_norm(self):  # noqa: ANN201
        """Fold weight norm back into plain weights."""
        return remove_weight_norm(self)
