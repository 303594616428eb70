"""The music VAE around the latent space: losses, training step, decoder inversion, audio encoding.

Names are imported on first use (nothing heavy at import time):

- ``encode_audio`` / ``EncodedAudio`` (:mod:`.encode`): latents for any audio (encoder or inversion);
- ``invert_decoder`` / ``InversionConfig`` (:mod:`.inversion`): latents from audio with only a decoder;
- ``VAETrainingStep`` / ``VAELossConfig`` / ``prepare_batch`` (:mod:`.train_step`): one GAN training step;
- ``MultiScaleMelLoss``, ``MultiResolutionSTFTLoss`` and the adversarial losses (:mod:`.losses`);
- :mod:`.chunking` and :mod:`.checkpoint_io`: old homes, kept importable, of :mod:`dr2studio.models.chunking`
  and :mod:`dr2studio.weights`.

The networks live in :mod:`dr2studio.models` (``bigvgan``, ``encoder``, ``discriminators``).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "encode_audio": "encode", "EncodedAudio": "encode",
    "invert_decoder": "inversion", "InversionConfig": "inversion", "InversionResult": "inversion",
    "VAETrainingStep": "train_step", "VAELossConfig": "train_step", "prepare_batch": "train_step",
    "MultiScaleMelLoss": "losses", "MultiResolutionSTFTLoss": "losses", "discriminator_loss": "losses",
    "generator_adversarial_loss": "losses", "feature_matching_loss": "losses",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dr2studio.vae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dr2studio.vae.{module}"), name)
    globals()[name] = value
    return value
