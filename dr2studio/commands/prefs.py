"""``dr2studio prefs``: preference data from a producer's rated takes (``prefs export``)."""
from __future__ import annotations

from pathlib import Path

import click

from dr2studio.commands._studio_cli import LimitType, emit, user_errors
from dr2studio.requests import STARS

__all__ = ["prefs", "export"]

_EXAMPLES = """
\b
Examples:
  dr2studio prefs export ~/Music/SongA ~/Music/SongB -o prefs/candidates.jsonl
  dr2studio prefs export ~/Music/SongA -o candidates.jsonl --min-stars 4 --json
  python -m training.cppo --config cppo.json      # "preferences": "prefs/candidates.jsonl", "init_from": MODEL
\b
One line per usable take: latents, lyric tokens and style vector from the take's sidecar (written to
<name>.<id>.latents/ beside the output), labels in [0, 1] per dimension: ratings first (stars 1..5 ->
0..1, or 0/1 at --min-stars), the newest automatic score (dr2studio eval) where no rating exists.
Takes without a label on every dimension, without a sidecar, or made by another model than --model are
left out and listed with the reason. The report gives the cross-pairs each CPPO group gets at
--threshold (train with label_threshold set to it). See docs/ratings.md.
"""


@click.group("prefs")
def prefs() -> None:
    """Preference data for cross-pair preference optimisation (training/cppo.py)."""


@prefs.command("export", epilog=_EXAMPLES)
@click.argument("projects", metavar="PROJECT...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="The candidates JSONL to write (its folder must exist).")
@click.option("--model", metavar="DIR|REPO", envvar="DR2STUDIO_MODEL",
              help="The model to train: sidecars from another model are left out (default: the shipped demo model).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.5, show_default=True,
              help="Label from which a dimension counts as good, for the pair counts (cppo's label_threshold).")
@click.option("--min-stars", type=LimitType(STARS),
              help="Ratings become 0/1 labels: 1 when the mean stars reach this (default: stars 1..5 -> 0..1).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@user_errors
def export(projects: tuple[Path, ...], output: Path, model: str | None, threshold: float, min_stars: int | None,
           as_json: bool) -> None:
    """Write the CPPO candidates of the rated or scored takes of PROJECT... to FILE."""
    from dr2studio.prefs import export_candidates

    report = export_candidates(list(projects), output, model=model, threshold=threshold, min_stars=min_stars)
    if as_json:
        emit(report.to_dict(), True, "")
        return
    click.echo(f"{report.output}: {report.candidates} candidates over {report.prompts} prompt(s) "
               f"(labels: {', '.join(f'{n} {k}' for k, n in sorted(report.label_sources.items()))}); "
               f"model {report.fingerprint}")
    for group, g in report.groups.items():
        cases = ", ".join(f"{k} {n}" for k, n in g.available.items())
        click.echo(f"  {group} ({' + '.join(g.dimensions)}): {g.pairs} balanced pairs (available per losing case: {cases})"
                   + (f"; {g.note}" if g.note else ""))
    if report.left_out:
        click.echo(f"  left out {len(report.left_out)} take(s):")
        for item in report.left_out:
            click.echo(f"    {Path(item.project).name}/{item.take}: {item.reason}")
