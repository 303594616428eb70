"""``dr2studio lyrics FILE [--model DIR]``: show the sections and the phones the model will hear.

Like every other command it uses the shipped demo model when no ``--model`` is given (and says so on
stderr), and it reports what the model's phoneme table drops, per language, on stderr and in ``--json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["lyrics"]


def _model_dir(model: str | None, quiet: bool) -> Path:
    """The model folder whose phoneme table is used: ``model``, else the shipped demo model (said on stderr)."""
    from dr2studio.checkpoints import CheckpointError, resolve_model_dir
    from dr2studio.commands._studio_cli import DEMO_MODEL

    if model is None:
        if not (DEMO_MODEL / "vocab.json").is_file():
            raise click.ClickException(
                "no --model given and no demo model is installed: pass --model DIR, --vocab PATH or set DR2STUDIO_MODEL"
            )
        if not quiet:
            click.echo(f"dr2studio: using the phoneme table of {DEMO_MODEL} (shipped demo model, English only)",
                       err=True)
        return DEMO_MODEL
    try:
        return resolve_model_dir(model)
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from exc


def _table_label(model_dir: Path | None, vocab_path: Path | None) -> str:
    from dr2studio.commands._studio_cli import DEMO_MODEL

    if vocab_path is not None:
        return str(vocab_path)
    if model_dir is not None and model_dir.resolve() == DEMO_MODEL.resolve():
        return "the shipped demo model (English only)"
    return str(model_dir)


@click.command("lyrics")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model", metavar="DIR|REPO", envvar="DR2STUDIO_MODEL",
              help="Model directory or hub id whose vocab.json is used (env DR2STUDIO_MODEL; default: the shipped "
                   "demo model).")
@click.option("--vocab", "vocab_path", type=click.Path(path_type=Path), help="Phoneme table (overrides the model's).")
@click.option(
    "--g2p-assets",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with the released Mandarin G2P data (default: MODEL/g2p, else a pypinyin fallback).",
)
@click.option("--instrumental", is_flag=True, help="Show the tokens an instrumental gets (structure tags only).")
@click.option("-q", "--quiet", is_flag=True, help="No status lines on stderr (warnings still show).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def lyrics(file: Path, model: str | None, vocab_path: Path | None, g2p_assets: Path | None, instrumental: bool,
           quiet: bool, as_json: bool) -> None:
    """Parse FILE (plain lyrics or LRC) and print each section with the phones of every line.

    Phones the model's table lacks are dropped (as the model will never hear them); the summary on stderr
    says how many, in which language. Lyrics that keep no sung phone are what generate refuses without
    --instrumental.
    """
    from dr2studio.lyrics import (
        EspeakMissingError,
        G2PAssetsError,
        LyricsError,
        VocabError,
        parse_lyrics_file,
        resolve_g2p_assets,
    )
    from dr2studio.lyrics.coverage import lyrics_coverage
    from dr2studio.lyrics.g2p import LyricsG2P
    from dr2studio.lyrics.vocab import STOP_ID, TAG_IDS

    if not file.is_file():
        raise click.ClickException(f"lyrics file not found: {file}")
    model_dir = _model_dir(model, quiet) if vocab_path is None or model is not None else None
    try:
        doc = parse_lyrics_file(file)
        assets = resolve_g2p_assets(g2p_assets, model_dir)
        g2p = LyricsG2P(vocab_path if vocab_path is not None else model_dir, assets)
        lines = g2p.encode_document(doc)
    except (LyricsError, VocabError, G2PAssetsError, EspeakMissingError) as exc:
        raise click.ClickException(str(exc)) from exc
    coverage = lyrics_coverage(lines, source=doc.source, table=_table_label(model_dir, vocab_path),
                               instrumental=instrumental)
    mandarin = g2p.mandarin_mode
    if instrumental:
        tokens = [i for line in lines if line.is_tag for i in line.ids] or [TAG_IDS["inst"], STOP_ID]
    else:
        tokens = [i for line in lines for i in line.ids]
    if as_json:
        click.echo(json.dumps(_as_dict(doc, lines, tokens, mandarin, coverage.to_dict()), ensure_ascii=False,
                              indent=1))
    else:
        _print_text(doc, lines)
    if coverage.nothing_to_sing and not instrumental:
        click.echo(f"dr2studio: warning: {coverage.refusal()} (generate, extend and infill refuse these lyrics)",
                   err=True)
    elif coverage.any_dropped:
        click.echo(f"dr2studio: warning: {coverage.summary()}", err=True)
    if not quiet:
        click.echo(f"{len(tokens)} tokens, {len(doc.sections)} sections; Mandarin G2P: {mandarin}", err=True)


def _as_dict(doc, lines, tokens, mandarin, coverage) -> dict:
    sections = []
    by_section: dict[int, list] = {}
    for line in lines:
        by_section.setdefault(id(line.section), []).append(line)
    for section in doc.sections:
        sections.append(
            {
                "kind": section.kind,
                "index": section.index,
                "tag": section.tag,
                "lines": [
                    {"text": ln.text, "is_tag": ln.is_tag, "phones": list(ln.phones), "ids": list(ln.ids),
                     "dropped": list(ln.dropped)}
                    for ln in by_section.get(id(section), [])
                ],
            }
        )
    return {"source": doc.source, "metadata": doc.metadata, "mandarin_g2p": mandarin, "sections": sections,
            "tokens": tokens, "lyrics_coverage": coverage}


def _print_text(doc, lines) -> None:
    current = None
    for line in lines:
        if line.section is not current:
            current = line.section
            click.echo(f"== {current.label} ==")
        if line.is_tag:
            click.echo(f"  {line.text}  -> {' '.join(map(str, line.ids))}")
            continue
        click.echo(f"  {line.text}")
        click.echo(f"    {' '.join(line.phones[:-1])}")
        if line.dropped:
            click.echo(f"    (not in the phoneme table, dropped: {' '.join(line.dropped)})")
