"""Neural networks: the DiT, the music VAE (encoder, BigVGAN decoder) and discriminators."""
