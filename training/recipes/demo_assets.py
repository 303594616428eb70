"""Write the demo model's own phoneme table and style encoder into a model directory.

    python training/recipes/demo_assets.py --out runs/demo/assets

Why a script: the demo model must not depend on the released model's files. Its phoneme table
(``vocab.json``, the released file format ``{"vocab": {phone: index}}``) is built from what our
English front end (espeak-ng through :func:`dr2studio.lyrics.english.english_to_phones`) produces
for the synthetic-song lexicon and for a pangram set that covers the English phone inventory, so
any English lyric a user types encodes without dropped phones. The style encoder is the MuQ-free
:class:`dr2studio.style.tag_encoder.TagStyleEncoder` at a fixed seed (a deterministic tag map the
DiT learns to read; it is not trained itself).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dr2studio.config import atomic_write_text

__all__ = ["PUNCTUATION", "COVERAGE_TEXT", "english_phone_table", "write_assets", "main"]

log = logging.getLogger("dr2studio.training.demo_assets")

#: Punctuation and the word gap come first, as in the released table.
PUNCTUATION = (",", ".", "?", "!", "_", "'")
#: Sentences whose phones cover the English vowels, diphthongs, r-coloured vowels and consonants.
COVERAGE_TEXT = (
    "The quick brown fox jumps over the lazy dog. She sells sea shells by the seashore. "
    "Joy, thought, measure, vision, church, judge, sing, yellow, hot, cat, cot, bird, father, boy, cow, "
    "go, day, buy, ear, air, poor, pure, car, door, nurse, letter, bottle, button, cure, fire, hour, "
    "tour, world, year, there, here, more, your, pleasure, azure, little, water, rhythm, button, "
    "beautiful, wonderful, garage, genre, hello, don't, I'm, we'll, they're, singing, dancing."
)


def english_phone_table(words: list[str]) -> dict[str, int]:
    """``{phone: index}``: punctuation first, then every phone of ``words`` + :data:`COVERAGE_TEXT`, sorted."""
    from dr2studio.lyrics.english import english_to_phones

    phones: set[str] = set()
    for text in [*words, COVERAGE_TEXT]:
        phones.update(p for p in english_to_phones(text).split("|") if p)
    ordered = list(PUNCTUATION) + sorted(phones - set(PUNCTUATION))
    return {p: i for i, p in enumerate(ordered)}


def synth_words() -> list[str]:
    """The words the synthetic-song lyrics are made of (syllable hyphens removed)."""
    from dr2studio.lab.synth.words import LEXICON

    return sorted({w.replace("-", "") for ws in LEXICON.values() for w in ws})


#: The demo style vectors' length: unit RMS per component, like the lyric embeddings they sit beside
#: in the DiT's input. At length 1 the demo DiT's loss did not depend on the style at all.
STYLE_SCALE = math.sqrt(512)


def write_assets(out: Path, style_seed: int = 0) -> dict[str, object]:
    """Write ``vocab.json`` and ``style_encoder.*`` into ``out``; returns a summary."""
    from dr2studio.style.tag_encoder import TagStyleConfig, TagStyleEncoder

    out.mkdir(parents=True, exist_ok=True)
    table = english_phone_table(synth_words())
    atomic_write_text(out / "vocab.json", json.dumps({"vocab": table}, ensure_ascii=False, indent=1) + "\n")
    TagStyleEncoder(TagStyleConfig(seed=style_seed, scale=STYLE_SCALE)).save(out)
    summary = {"phones": len(table), "style_seed": style_seed, "style_scale": STYLE_SCALE}
    log.info("wrote %s: %d phones, tag style encoder (seed %d)", out, len(table), style_seed)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="model directory to write the assets into")
    p.add_argument("--style-seed", type=int, default=0, help="seed of the tag style encoder's fixed weights")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    print(json.dumps(write_assets(args.out, args.style_seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
