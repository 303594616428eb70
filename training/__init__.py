"""Ray Train entry points: data preparation, VAE, block flow matching and CPPO stages.

Run the stages as modules from the repository root (``python -m training.block_fm --smoke``) or
submit them to a cluster (``ray job submit --working-dir . -- python -m training.block_fm --config
cfg.json``); see docs/training.md.
"""
