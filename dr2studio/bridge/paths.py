"""Keep the bridge inside the project folder the user opened.

Every path a client sends (lyrics files, MIDI files) and every folder the bridge writes into is
resolved with symbolic links followed and must stay under the resolved project root; ``..``,
absolute paths elsewhere and links pointing out of the project are refused with :class:`PathError`.
The checks themselves are :mod:`dr2studio.confine`'s, shared with the CLI and the API writers, so
every front door refuses the same paths with the same words; this module adds the bridge's name rule.
"""
from __future__ import annotations

import re

from dr2studio.confine import ConfineError, ensure_dir_inside, read_text_inside, resolve_inside

__all__ = ["PathError", "resolve_inside", "ensure_dir_inside", "check_name", "read_text_inside", "NAME_RE"]

#: Names that become file or folder names (job ids, section ids, stem names).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: A path or name from a client would leave the project folder or is not acceptable (the one
#: confinement error, so ``except PathError`` also catches what the shared writers refuse).
PathError = ConfineError


def check_name(value: object, what: str) -> str:
    """Return ``value`` if it is a safe single path component (no separators, no leading dot)."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise PathError(f"{what} {value!r} must be 1-64 letters, digits, '_', '-' or '.', start with a letter or digit, and hold no '..'")
    return value
