"""The music VAE around the latent space: losses, training step, decoder inversion, audio encoding.

Submodules are imported on use (nothing heavy at import time):
``losses`` (reconstruction losses, adversarial losses), ``train_step`` (one GAN training step),
``inversion`` (latents from audio with only a decoder), ``encode`` (``encode_audio``),
``chunking`` (the reference decoder's chunk schedule), ``checkpoint_io`` (weights in and out).
"""
