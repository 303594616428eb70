"""``dr2studio rate``: rate a take of a DAW project (1..5 stars), or show the project's current ratings."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from dr2studio.commands._studio_cli import LimitType, emit, user_errors
from dr2studio.requests import STARS

__all__ = ["rate"]

_EXAMPLES = """
\b
Examples:
  dr2studio rate ~/Music/MySong take --stars 4
  dr2studio rate ~/Music/MySong take-2 --stars 2 --dimension lyric_accuracy
  dr2studio rate ~/Music/MySong                 # every take's current ratings
  dr2studio rate ~/Music/MySong take --json     # one take: current ratings and history
\b
TAKE is the take's name in DIR/dr2studio.json. A rating of 'overall' applies to the four dimensions
(musicality, lyric_accuracy, style_similarity, audio_quality) not rated specifically. Ratings are
appended to DIR/dr2studio.ratings.jsonl with their time and source; a later rating of the same take and
dimension supersedes the earlier one, which stays in the history. See docs/ratings.md.
"""


def _stars(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}".rstrip("0").rstrip(".")


@click.command("rate", epilog=_EXAMPLES)
@click.argument("project", metavar="DIR", type=click.Path(path_type=Path))
@click.argument("take", required=False)
@click.option("--stars", type=LimitType(STARS), help="The rating, 1 (worst) to 5 (best).")
@click.option("--dimension", default="overall", show_default=True,
              type=click.Choice(["overall", "musicality", "lyric_accuracy", "style_similarity", "audio_quality"]),
              help="What the stars rate.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@user_errors
def rate(project: Path, take: str | None, stars: int | None, dimension: str, as_json: bool) -> None:
    """Rate TAKE of the project folder DIR with --stars, or show current ratings (of TAKE, or of every take)."""
    from dr2studio.ratings import DIMENSIONS, RatingStore

    store = RatingStore(project)
    if stars is not None:
        if take is None:
            raise click.UsageError("--stars needs a TAKE to rate")
        rating = store.rate(take, stars, dimension=dimension, source="cli")
        result = {"project": str(store.root), "rating": dataclasses.asdict(rating), "current": store.current(take)}
        emit(result, as_json, f"{store.root}: take {take}: {rating.stars} stars ({rating.dimension})")
        return
    if take is not None:
        if take not in store.takes():
            from dr2studio.ratings import RatingError

            raise RatingError(f"project {store.root} has no take {take!r}")
        current = store.current(take)
        result = {"project": str(store.root), "take": take, "current": current,
                  "history": [dataclasses.asdict(r) for r in store.history(take)]}
        emit(result, as_json, f"{take}: " + ", ".join(f"{d} {_stars(current[d])}" for d in DIMENSIONS))
        return
    table = store.all_current()
    if as_json:
        emit({"project": str(store.root), "takes": table}, True, "")
        return
    width = max([len("take")] + [len(t) for t in table])
    click.echo(f"{'take':<{width}}  " + "  ".join(f"{d:>16}" for d in DIMENSIONS))
    for name, current in table.items():
        click.echo(f"{name:<{width}}  " + "  ".join(f"{_stars(current[d]):>16}" for d in DIMENSIONS))
