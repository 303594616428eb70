"""The Python studio API on a tiny random model: generate, extend, infill, sidecars, errors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dr2studio.song import Song, sidecar_path
from dr2studio.studio import Studio, StudioError
from dr2studio.lab.testing import build_tiny_model

LYRICS = "[verse]\nhello world\nsing it loud\n"
MORE = "[chorus]\nla la la\n"
STEPS = 2


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Studio:
    return Studio.load(build_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def style() -> torch.Tensor:
    return torch.randn(512, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def song(studio: Studio, style: torch.Tensor) -> Song:
    return studio.generate(LYRICS, style, 3.0, steps=STEPS, seed=11)


def test_generate_shapes_and_reproducibility(studio: Studio, style: torch.Tensor, song: Song) -> None:
    hop = studio.hop_length
    assert studio.sample_rate == 48000 and hop == 9600 and studio.frame_rate == 5.0
    assert song.latents.shape == (1, 15, 64)
    assert song.audio.shape == (1, 15 * hop) and song.sample_rate == 48000
    assert song.seed == 11 and song.tokens[-1] == 511 and "hello world" in song.lyrics
    assert torch.isfinite(song.audio).all() and float(song.audio.abs().max()) > 0
    events, chunks = [], []
    again = studio.generate(LYRICS, style, 3.0, steps=STEPS, seed=11, progress=lambda *a: events.append(a),
                            on_audio=chunks.append)
    assert torch.equal(again.latents, song.latents) and torch.equal(again.audio, song.audio)
    assert torch.equal(torch.cat(chunks, dim=1), song.audio)  # streamed audio is the song
    stages = [e[2] for e in events]
    assert stages.count("sample") == 2 and stages.count("decode") == len(chunks) >= 1  # one per block / chunk
    assert events[-1][0] == events[-1][1] and events[-1][2] == "done"
    other = studio.generate(LYRICS, style, 3.0, steps=STEPS, seed=12)
    assert not torch.equal(other.latents, song.latents)


def test_generate_stereo_streams_stereo(studio: Studio, style: torch.Tensor, song: Song) -> None:
    chunks = []
    st = studio.generate(LYRICS, style, 3.0, steps=STEPS, seed=11, stereo=True, on_audio=chunks.append)
    assert st.audio.shape == (2, song.audio.shape[1])
    assert torch.equal(st.audio[0], song.audio[0])
    assert torch.allclose(st.audio[1, 480:], 0.8 * song.audio[0, :-480])
    assert torch.equal(torch.cat(chunks, dim=1), st.audio)


def test_song_save_load_round_trip(tmp_path: Path, song: Song) -> None:
    path = song.save(tmp_path / "take.wav")
    side = sidecar_path(path)
    assert side.name == "take.dr2.safetensors" and side.is_file()
    back = Song.load(path)
    assert (back.audio - song.audio).abs().max() < 2**-22  # 24-bit quantisation only
    assert torch.equal(back.latents, song.latents) and torch.equal(back.tokens, song.tokens)
    assert torch.equal(back.style, song.style) and back.seed == 11 and back.lyrics == song.lyrics
    assert back.settings == song.settings and back.model == song.model
    # re-saving the loaded audio is bit-exact (what makes CLI sample identity possible)
    back.save(tmp_path / "again.wav")
    assert torch.equal(Song.load(tmp_path / "again.wav").audio, back.audio)


def test_stale_sidecar_is_ignored(tmp_path: Path, song: Song) -> None:
    path = song.save(tmp_path / "take.wav")
    edited = Song(audio=song.audio * 0.5, sample_rate=song.sample_rate)
    from dr2studio.audio.io import write_audio

    write_audio(path, edited.audio, edited.sample_rate)  # a DAW rewrote the audio, sidecar left behind
    loaded = Song.load(path)
    assert loaded.latents is None and loaded.tokens is None
    Song(audio=song.audio, sample_rate=48000).save(path)  # saving a song without latents drops the sidecar
    assert not sidecar_path(path).exists()


def test_extend_keeps_input_before_splice(studio: Studio, song: Song) -> None:
    longer = studio.extend(song, MORE, seconds=2.0, steps=STEPS, seed=5, crossfade=0.1)
    edit = longer.settings["edits"][-1]
    splice = round(edit["splice"] * 48000)
    joint = song.audio.shape[1]
    assert splice == joint - 4800 and edit["new_frames"] == 10
    assert longer.audio.shape == (1, joint + 10 * 9600)
    assert torch.equal(longer.audio[:, :splice], song.audio[:, :splice])
    assert not torch.equal(longer.audio[:, splice:joint], song.audio[:, splice:])
    assert torch.equal(longer.latents[:, :15], song.latents)  # continued from the exact latents
    assert torch.equal(longer.tokens, torch.cat([song.tokens, studio.encode_lyrics(MORE)[0]]))
    assert longer.lyrics.startswith(song.lyrics) and longer.lyrics.endswith("la la la")
    # the crossfade region is an equal-power blend of old audio and the re-decoded continuation
    assert float((longer.audio[:, splice:joint] - song.audio[:, splice:]).abs().max()) < 1.0


def test_extend_streams_the_output_from_the_splice_point(studio: Studio, song: Song) -> None:
    stereo = studio.generate(LYRICS, song.style, 2.0, steps=STEPS, seed=2, stereo=True)
    for take in (song, stereo):
        chunks: list[torch.Tensor] = []
        at: list[int] = []
        longer = studio.extend(take, MORE, seconds=2.0, steps=STEPS, seed=5, crossfade=0.1,
                               on_audio=chunks.append, on_splice=at.append)
        splice = round(longer.settings["edits"][-1]["splice"] * 48000)
        assert at == [splice] and chunks
        assert all(c.shape[0] == take.audio.shape[0] for c in chunks)
        assert torch.equal(torch.cat(chunks, dim=1), longer.audio[:, splice:])


def test_infill_keeps_outside_and_length(studio: Studio, song: Song) -> None:
    start, end, xf = 1.1, 2.3, 0.1
    fixed = studio.infill(song, start, end, MORE, steps=STEPS, seed=9, crossfade=xf)
    assert fixed.audio.shape == song.audio.shape and fixed.latents.shape == song.latents.shape
    a, b = round((start - xf) * 48000), round((end + xf) * 48000)
    assert torch.equal(fixed.audio[:, :a], song.audio[:, :a])
    assert torch.equal(fixed.audio[:, b:], song.audio[:, b:])
    assert not torch.equal(fixed.audio[:, a:b], song.audio[:, a:b])
    assert torch.equal(fixed.latents[:, :5], song.latents[:, :5])  # prefix before start
    edit = fixed.settings["edits"][-1]
    assert edit["kind"] == "infill" and edit["start"] == start and edit["end"] == end
    # edge cases: the very start and the very end of the song
    head = studio.infill(song, 0.0, 1.0, MORE, steps=STEPS, seed=1, crossfade=xf)
    assert torch.equal(head.audio[:, round(1.1 * 48000):], song.audio[:, round(1.1 * 48000):])
    tail = studio.infill(song, 2.0, 3.0, MORE, steps=STEPS, seed=1, crossfade=xf)
    assert tail.audio.shape == song.audio.shape
    assert torch.equal(tail.audio[:, : round(1.9 * 48000)], song.audio[:, : round(1.9 * 48000)])


def test_extend_after_save_and_load_is_sample_identical(tmp_path: Path, studio: Studio, song: Song) -> None:
    loaded = Song.load(song.save(tmp_path / "s.wav"))
    longer = studio.extend(loaded, MORE, seconds=1.0, steps=STEPS, seed=2)
    splice = round(longer.settings["edits"][-1]["splice"] * 48000)
    assert torch.equal(longer.audio[:, :splice], loaded.audio[:, :splice])


def test_style_sources(tmp_path: Path, studio: Studio, style: torch.Tensor) -> None:
    import numpy as np

    np.save(tmp_path / "s.npy", style.numpy())
    assert torch.equal(studio.style_embedding(tmp_path / "s.npy"), style)
    assert torch.equal(studio.style_embedding(style[None].numpy()), style)
    with pytest.raises(StudioError, match="512 values"):
        studio.style_embedding(torch.zeros(100))
    with pytest.raises(StudioError, match="not found"):
        studio.style_embedding(tmp_path / "missing.npy")
    with pytest.raises(StudioError, match="style is needed"):
        studio.style_embedding(None)


def test_lyrics_from_file_path(tmp_path: Path, studio: Studio) -> None:
    (tmp_path / "a.lrc").write_text(LYRICS, encoding="utf-8")
    expected = studio.encode_lyrics(LYRICS)[0]
    assert torch.equal(studio.encode_lyrics(tmp_path / "a.lrc")[0], expected)
    assert torch.equal(studio.encode_lyrics(str(tmp_path / "a.lrc"))[0], expected)  # a str path is not sung
    with pytest.raises(StudioError, match="not found"):
        studio.encode_lyrics(str(tmp_path / "missing.lrc"))


def test_load_from_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repo id goes through huggingface_hub (mocked: no network here) and loads the snapshot it returns."""
    import huggingface_hub

    snapshot = build_tiny_model(tmp_path / "snapshot")
    asked = []

    def fake_download(repo_id: str, **kwargs):
        asked.append(repo_id)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    loaded = Studio.load("someone/tiny-dr2")
    assert asked == ["someone/tiny-dr2"] and loaded.model_dir == snapshot


def test_bad_input_errors(studio: Studio, style: torch.Tensor, song: Song) -> None:
    with pytest.raises(StudioError, match="lyrics is empty"):
        studio.generate("  \n", style, 3.0, steps=STEPS)
    for bad in (-1.0, 0.0, math.inf, 10_000.0):
        with pytest.raises(StudioError, match="duration"):
            studio.generate(LYRICS, style, bad, steps=STEPS)
    with pytest.raises(StudioError, match="steps"):
        studio.generate(LYRICS, style, 1.0, steps=1)
    with pytest.raises(StudioError, match="seed"):
        studio.generate(LYRICS, style, 1.0, steps=STEPS, seed=-3)
    with pytest.raises(StudioError, match="before end"):
        studio.infill(song, 2.0, 1.0, MORE, steps=STEPS)
    with pytest.raises(StudioError, match="past the end"):
        studio.infill(song, 1.0, 30.0, MORE, steps=STEPS)
    with pytest.raises(StudioError, match="at least one frame"):
        studio.infill(song, 1.0, 1.1, MORE, steps=STEPS)
    with pytest.raises(StudioError, match="seconds"):
        studio.extend(song, MORE, seconds=-5, steps=STEPS)
    with pytest.raises(StudioError, match="crossfade"):
        studio.extend(song, MORE, seconds=1, crossfade=5.0, steps=STEPS)
    audio_only = Song(audio=song.audio, sample_rate=song.sample_rate)
    with pytest.raises(StudioError, match="give a style"):
        studio.extend(audio_only, MORE, seconds=1, steps=STEPS)


def test_extend_and_infill_without_sidecar_encode(studio: Studio, style: torch.Tensor, song: Song) -> None:
    audio_only = Song(audio=song.audio[:, : 7 * 9600 - 3000], sample_rate=song.sample_rate)  # 6.7 frames
    events = []
    longer = studio.extend(audio_only, MORE, seconds=1.0, style=style, steps=STEPS, seed=3, inversion_steps=2,
                           progress=lambda *a: events.append(a))
    edit = longer.settings["edits"][-1]
    assert edit["latents_from"]["method"] == "inversion"  # the tiny model has no encoder
    assert [e for e in events if e[2] == "encode"]
    assert edit["prefix_frames"] == 6  # the partial last frame is dropped, the splice stays on a frame
    splice = round(edit["splice"] * 48000)
    assert splice == 6 * 9600 - round(0.25 * 48000)
    assert torch.equal(longer.audio[:, :splice], audio_only.audio[:, :splice])
    assert longer.tokens.tolist() == studio.encode_lyrics(MORE)[0].tolist()  # no lyric context known
    fixed = studio.infill(audio_only, 0.4, 1.0, MORE, style=style, steps=STEPS, seed=3, inversion_steps=2)
    assert fixed.audio.shape == audio_only.audio.shape
    assert torch.equal(fixed.audio[:, round(1.25 * 48000):], audio_only.audio[:, round(1.25 * 48000):])
    assert torch.equal(fixed.audio[:, : round(0.15 * 48000)], audio_only.audio[:, : round(0.15 * 48000)])


@pytest.mark.slow
def test_reference_tiny_checkpoint(tiny_ref_dir: Path, tmp_path: Path) -> None:
    """The released-layout reference checkpoint (decoder.bin, released vocab) runs through the studio."""
    ref = Studio.load(tiny_ref_dir)
    style = torch.randn(512, generator=torch.Generator().manual_seed(1))
    song = ref.generate("[verse]\nhello world\n", style, 1.0, steps=STEPS, seed=1)
    assert song.audio.shape == (1, 5 * 9600) and song.tokens.max() < 512
    longer = ref.extend(Song.load(song.save(tmp_path / "r.wav")), MORE, seconds=1.0, steps=STEPS, seed=2)
    assert longer.audio.shape == (1, 10 * 9600)
    splice = round(longer.settings["edits"][-1]["splice"] * 48000)
    assert torch.equal(longer.audio[:, :splice], Song.load(tmp_path / "r.wav").audio[:, :splice])


def test_example_session_script_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import runpy
    import sys

    script = Path(__file__).resolve().parents[1] / "examples" / "scripted_session.py"
    model = build_tiny_model(tmp_path / "m", style_encoder=True)
    monkeypatch.setattr(sys, "argv", [str(script), "--model", str(model), "--out", str(tmp_path / "s"),
                                      "--seconds", "2", "--steps", "2"])
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    assert "unchanged: True" in printed and "3 takes" in printed
    assert (tmp_path / "s" / "fixed.dr2.safetensors").is_file()


def test_typed_requests_render_what_the_keyword_calls_render(studio: Studio, style: torch.Tensor, song: Song) -> None:
    """``Studio.run`` takes the typed request every front door builds; a request with the style as a 512-d
    list (the wire form) renders the same take as the keyword call with the tensor."""
    from dr2studio.requests import ExtendRequest, GenerateRequest, InfillRequest, SamplingRequest

    sampling = dict(steps=STEPS, seed=11)
    vector = [float(v) for v in style.tolist()]
    made = studio.run(GenerateRequest(lyrics=LYRICS, style_embedding=vector, duration=3.0,
                                      sampling=SamplingRequest(**sampling)))
    assert torch.equal(made.latents, song.latents) and torch.equal(made.audio, song.audio)
    longer = studio.run(ExtendRequest(lyrics=MORE, seconds=1.0, sampling=SamplingRequest(steps=STEPS, seed=3)), song)
    assert torch.equal(longer.audio, studio.extend(song, MORE, seconds=1.0, steps=STEPS, seed=3).audio)
    fixed = studio.run(InfillRequest(lyrics=MORE, start=1.0, end=2.0, sampling=SamplingRequest(steps=STEPS, seed=3)), song)
    assert torch.equal(fixed.audio, studio.infill(song, 1.0, 2.0, MORE, steps=STEPS, seed=3).audio)
    with pytest.raises(StudioError, match="needs the song"):
        studio.run(InfillRequest(lyrics=MORE, start=1.0, end=2.0))
