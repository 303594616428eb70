"""A watch folder: MIDI files dropped into it are imported into the open session.

Polling (no extra dependency, works on network shares): a ``.mid``/``.midi`` file is picked up once
its size and modification time stayed the same for one poll, so a file still being copied is not
read half-way. A file is imported again only when it changes.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

__all__ = ["WatchFolder", "MIDI_SUFFIXES"]

MIDI_SUFFIXES = (".mid", ".midi", ".kar")
#: Folder entries looked at per poll: a folder flooded with files costs bounded time and memory.
MAX_WATCH_ENTRIES = 4096


class WatchFolder:
    """Calls ``on_file(path)`` (on the watcher thread) for each new or changed MIDI file in ``folder``.

    Links that point outside ``folder`` are ignored. ``on_error(path, exc)`` hears about failures.
    """

    def __init__(self, folder: str | Path, on_file: Callable[[Path], None], *, interval: float = 0.5,
                 on_error: Callable[[Path, Exception], None] | None = None) -> None:
        self.folder = Path(folder).expanduser().resolve()
        if not self.folder.is_dir():
            raise ValueError(f"watch folder {folder} does not exist or is not a folder")
        self.on_file, self.on_error, self.interval = on_file, on_error, interval
        self._seen: dict[Path, tuple[int, int]] = {}
        self._candidates: dict[Path, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dr2-watch", daemon=True)

    def start(self, import_existing: bool = False) -> "WatchFolder":
        """Start polling; files already there are skipped unless ``import_existing``."""
        if not import_existing:
            self._seen = self._scan()
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _scan(self) -> dict[Path, tuple[int, int]]:
        found: dict[Path, tuple[int, int]] = {}
        try:
            entries = []
            with os.scandir(self.folder) as it:
                for entry in it:
                    entries.append(Path(entry.path))
                    if len(entries) >= MAX_WATCH_ENTRIES:
                        log.warning("watch folder %s holds more than %d entries; only those are looked at",
                                    self.folder, MAX_WATCH_ENTRIES)
                        break
        except OSError as exc:
            log.warning("cannot list watch folder %s: %s", self.folder, exc)
            return found
        for path in entries:
            if path.suffix.lower() not in MIDI_SUFFIXES or path.name.startswith("."):
                continue
            try:
                resolved = path.resolve(strict=True)
                if resolved.parent != self.folder or not resolved.is_file():
                    continue
                st = resolved.stat()
            except OSError:
                continue
            found[resolved] = (st.st_size, st.st_mtime_ns)
        return found

    def poll(self) -> list[Path]:
        """One scan; returns (and hands to ``on_file``) the files that became ready."""
        ready = []
        current = self._scan()
        # files gone from the folder are forgotten (bounded memory; one put back is imported again)
        self._seen = {p: sig for p, sig in self._seen.items() if p in current}
        self._candidates = {p: sig for p, sig in self._candidates.items() if p in current}
        for path, sig in current.items():
            if self._seen.get(path) == sig:
                continue
            if self._candidates.get(path) == sig:
                self._seen[path] = sig
                del self._candidates[path]
                ready.append(path)
            else:
                self._candidates[path] = sig
        for path in ready:
            try:
                self.on_file(path)
            except Exception as exc:  # one bad file must not stop the watcher
                log.warning("watch folder: %s failed: %s", path.name, exc)
                if self.on_error is not None:
                    self.on_error(path, exc)
        return ready

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()
