"""Ray Train entry points: data preparation, VAE, block flow matching and CPPO stages.

Run the stages as scripts (``python training/block_fm.py --smoke``) or submit them to a cluster
(``ray job submit --working-dir . -- python training/block_fm.py --config cfg.json``).
"""
