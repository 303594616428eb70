"""DR2Studio: a Live Remote Script that places dr2studio takes on the arrangement.

Install: copy this ``DR2Studio`` folder into Live's ``User Library/Remote Scripts`` and choose
"DR2Studio" as a Control Surface (Preferences > Link, Tempo & MIDI). See docs/ableton.md.
"""


def create_instance(c_instance):
    """Live's entry point for a Control Surface script."""
    from .surface import DR2Studio

    return DR2Studio(c_instance)
