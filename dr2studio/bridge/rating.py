"""Ratings from the DAW: ``/dr2/take/rate`` (OSC) and the rating notes (MIDI) store a take's stars in the
open project's ratings file (:class:`dr2studio.ratings.RatingStore`).

A client names a take by its manifest name (``take``) or by the job id it was made with (what the DAW
saw in ``/dr2/job/stem``); MIDI rates the open session's newest take. Every stored rating is announced
to subscribers as ``/dr2/take/rated s:take s:dimension i:stars s:source``, so a second surface (the
web take page, a controller's display) shows it at once.
"""
from __future__ import annotations

import logging
from typing import Any

from dr2studio.bridge.session import BridgeError
from dr2studio.ratings import OVERALL, Rating, RatingError, RatingStore

log = logging.getLogger(__name__)

__all__ = ["rate_take", "rate_newest_take", "take_for_job"]


def take_for_job(store: RatingStore, name: str) -> str:
    """``name`` when it is a take of the manifest, else the newest take made by the bridge job ``name``
    (unchanged when there is none: the store then refuses it, naming the project)."""
    from dr2studio.audio.daw import ProjectError, project_layout, read_manifest

    try:
        takes = read_manifest(project_layout(store.root)).get("takes", [])
    except ProjectError as exc:
        raise BridgeError(f"cannot read the project's takes: {exc}", 409) from exc
    names = [t.get("take") for t in takes if isinstance(t, dict)]
    if name in names:
        return name
    by_job = [t.get("take") for t in takes if isinstance(t, dict) and t.get("job") == name and t.get("take")]
    return str(by_job[-1]) if by_job else name


def rate_take(bridge: Any, take: str, stars: int, dimension: str = OVERALL, *, source: str) -> Rating:
    """Store a rating of ``take`` (take name or job id) in the open session's project and announce it."""
    session = bridge.require_session()
    try:
        store = RatingStore(session.project)
        rating = store.rate(take_for_job(store, take) if isinstance(take, str) else take, stars,
                            dimension=dimension, source=source)
    except RatingError as exc:
        raise BridgeError(str(exc), 404 if "has no take" in str(exc) else 400) from exc
    log.info("rated take %s: %d stars (%s, %s)", rating.take, rating.stars, rating.dimension, rating.source)
    bridge.emit("/dr2/take/rated", rating.take, rating.dimension, rating.stars, rating.source)
    return rating


def rate_newest_take(bridge: Any, stars: int, dimension: str = OVERALL, *, source: str) -> Rating:
    """Rate the open session's newest take (the one the producer just heard)."""
    session = bridge.require_session()
    if session.last_take is None:
        raise BridgeError("no take to rate yet in this session: make one first", 409)
    return rate_take(bridge, session.last_take, stars, dimension, source=source)
