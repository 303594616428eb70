"""``dr2studio lyrics FILE --model DIR``: show the sections and the phones the model will hear."""
from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["lyrics"]


def _model_dir(model: str) -> Path:
    from dr2studio.checkpoints import CheckpointError, resolve_model_dir

    try:
        return resolve_model_dir(model)
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("lyrics")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model", metavar="DIR", help="Model directory (or hub id) whose vocab.json is used.")
@click.option("--vocab", "vocab_path", type=click.Path(path_type=Path), help="Phoneme table (overrides the model's).")
@click.option(
    "--g2p-assets",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with the released Mandarin G2P data (default: MODEL/g2p, else a pypinyin fallback).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def lyrics(file: Path, model: str | None, vocab_path: Path | None, g2p_assets: Path | None, as_json: bool) -> None:
    """Parse FILE (plain lyrics or LRC) and print each section with the phones of every line."""
    from dr2studio.lyrics import (
        EspeakMissingError,
        G2PAssetsError,
        LyricsError,
        VocabError,
        parse_lyrics_file,
        resolve_g2p_assets,
    )
    from dr2studio.lyrics.g2p import LyricsG2P

    if model is None and vocab_path is None:
        raise click.ClickException("give --model DIR (its vocab.json is the phoneme table) or --vocab PATH")
    model_dir = _model_dir(model) if model is not None else None
    try:
        doc = parse_lyrics_file(file)
        assets = resolve_g2p_assets(g2p_assets, model_dir)
        g2p = LyricsG2P(vocab_path if vocab_path is not None else model_dir, assets)
        lines = g2p.encode_document(doc)
    except (LyricsError, VocabError, G2PAssetsError, EspeakMissingError) as exc:
        raise click.ClickException(str(exc)) from exc
    mandarin = g2p.mandarin_mode
    tokens = [i for line in lines for i in line.ids]
    if as_json:
        click.echo(json.dumps(_as_dict(doc, lines, tokens, mandarin), ensure_ascii=False, indent=1))
    else:
        _print_text(doc, lines)
    click.echo(f"{len(tokens)} tokens, {len(doc.sections)} sections; Mandarin G2P: {mandarin}", err=True)


def _as_dict(doc, lines, tokens, mandarin) -> dict:
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
            "tokens": tokens}


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
