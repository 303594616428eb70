"""Thin entry point: ``python bridges/osc.py --model DIR`` is ``dr2studio bridge --model DIR``.

For setups that launch a script rather than a console command (a DAW's "run on startup" hook).
"""
import sys

from dr2studio.commands.bridge import bridge

if __name__ == "__main__":
    sys.exit(bridge.main(prog_name="dr2studio bridge"))
