"""Audio I/O, effects, stems and DAW project folders."""
