"""Thin entry point for a MIDI-first bridge: ``python bridges/midi.py --model DIR``.

Same as ``dr2studio bridge`` with MIDI over TCP on port 7101 unless ``--midi-tcp``/``--midi-port``
is given (OSC stays on as well, for replies to OSC clients).
"""
import sys

from dr2studio.commands.bridge import bridge

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a.startswith(("--midi-tcp", "--midi-port")) for a in args):
        args += ["--midi-tcp", "7101"]
    sys.exit(bridge.main(args=args, prog_name="dr2studio bridge"))
