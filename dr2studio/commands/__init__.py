"""Subcommands of the ``dr2studio`` CLI, one module each."""
