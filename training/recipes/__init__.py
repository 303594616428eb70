"""Reproducible training recipes (shell scripts) and the small helpers they use."""
