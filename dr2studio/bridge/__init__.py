"""The studio bridge: OSC and MIDI front ends that let a DAW drive generation in a project folder.

Layers: :mod:`.session` (timeline state), :mod:`.paths` (stay inside the project), :mod:`.core`
(commands and jobs), :mod:`.deliver` (stems + manifest), :mod:`.osc`, :mod:`.midi`, :mod:`.midifile`,
:mod:`.watch`, and :mod:`.app` which wires them together.
"""
from dr2studio.bridge.app import BridgeApp, BridgeOptions
from dr2studio.bridge.core import Bridge, BridgeJob
from dr2studio.bridge.midi import MidiController, MidiTcpServer
from dr2studio.bridge.midifile import MidiPlan, read_midi_file
from dr2studio.bridge.osc import DEFAULT_PORT, OscServer
from dr2studio.bridge.paths import PathError
from dr2studio.bridge.session import BridgeError, Session

__all__ = [
    "Bridge", "BridgeApp", "BridgeError", "BridgeJob", "BridgeOptions", "DEFAULT_PORT", "MidiController",
    "MidiPlan", "MidiTcpServer", "OscServer", "PathError", "Session", "read_midi_file",
]
