"""Block flow matching: the teacher-forced training objective of DiffRhythm 2.

Shape legend: B batch, N lyric tokens, T latent frames (padded to whole blocks), b block size,
M latent channels, S = N + 2T sequence length.

One sequence holds ``[lyrics (N) | clean latents (T) | noisy latents (T)]``. The block-causal mask
lets the lyrics see only themselves, clean block i see clean blocks ≤ i, and noisy block i see clean
blocks < i plus itself; everyone sees the lyrics. Positions restart at 0 for each stream, the
time is −1 for lyrics, +1 for clean frames and an independent ``t ~ U[0, 1]`` per noisy block.
This is exactly what the KV-cached sampler computes block by block (tested), so the model trained
here samples with :mod:`dr2studio.flow.sampler`.

End of prediction: after its last real frame every song is padded with all-ones frames up to the
next block boundary, a whole block when the length is already a multiple of b, so the final block
always ends in end frames -- the sampler stops on exactly that. (The issue text reads "n = l mod b
frames"; padding l mod b frames would not end on a block boundary, so we pad b − (l mod b).)
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from dr2studio.config import ConfigError, JsonConfig
from dr2studio.flow.repa import repa_loss, stochastic_block_weights
from dr2studio.models.dit import DiT, MaskedAttention, rotary_tables

__all__ = ["BlockFMConfig", "BlockFMOutput", "BlockFlowMatching", "pad_end_of_prediction", "block_causal_sequence_mask"]


@dataclasses.dataclass
class BlockFMConfig(JsonConfig):
    """Objective settings (defaults follow the paper where it states them)."""

    lyrics_dropout: float = 0.1  # probability of training a sample without lyrics (guidance)
    style_dropout: float = 0.1  # probability of training a sample with a zero style
    both_dropout: float = 0.1  # probability of dropping both together (the guidance null branch)
    repa_weight: float = 0.5
    repa_blocks: int = 10  # blocks sampled per sequence for stochastic block REPA
    end_padding: bool = True

    def validate(self) -> None:
        for name in ("lyrics_dropout", "style_dropout", "both_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"BlockFMConfig.{name} must be a probability in [0, 1], got {p}")
        if self.repa_blocks < 1:
            raise ConfigError(f"BlockFMConfig.repa_blocks must be >= 1, got {self.repa_blocks}")


@dataclasses.dataclass
class BlockFMOutput:
    loss: Tensor
    fm_loss: Tensor
    repa_loss: Tensor
    frames: int  # valid latent frames in the batch (for throughput)


def pad_end_of_prediction(latents: Tensor, lengths: Tensor, block_size: int, enabled: bool = True) -> tuple[Tensor, Tensor]:
    """Append all-ones end frames so every song ends at a block boundary.

    Args: latents ``[B, T, M]`` (frames past ``lengths`` are ignored), lengths ``[B]``.
    Returns: padded ``[B, T', M]`` (T' a multiple of b) and the padded lengths ``[B]``.
    """
    lengths = lengths.to(latents.device)
    if enabled:
        padded_len = (lengths // block_size + 1) * block_size
    else:
        padded_len = torch.div(lengths + block_size - 1, block_size, rounding_mode="floor") * block_size
    total = int(padded_len.max())
    bsz, t, m = latents.shape
    out = torch.zeros(bsz, total, m, dtype=latents.dtype, device=latents.device)
    n = min(t, total)
    idx = torch.arange(total, device=latents.device)[None, :]
    real = idx < lengths[:, None]
    out[:, :n] = latents[:, :n]
    out = torch.where(real[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    if enabled:
        eop = (idx >= lengths[:, None]) & (idx < padded_len[:, None])
        out = torch.where(eop[..., None], torch.ones((), dtype=out.dtype, device=out.device), out)
    return out, padded_len


def block_causal_sequence_mask(token_valid: Tensor, frame_valid: Tensor, block_size: int) -> Tensor:
    """The ``[B, 1, S, S]`` boolean mask of the ``[lyrics | clean | noisy]`` layout."""
    bsz, n = token_valid.shape
    t = frame_valid.shape[1]
    device = token_valid.device
    blk = torch.arange(t, device=device) // block_size
    le = blk[None, :] <= blk[:, None]  # key block <= query block
    lt = blk[None, :] < blk[:, None]
    eq = blk[None, :] == blk[:, None]
    z_tt = torch.zeros(t, t, dtype=torch.bool, device=device)
    z_nt = torch.zeros(n, t, dtype=torch.bool, device=device)
    ones_tn = torch.ones(t, n, dtype=torch.bool, device=device)
    ones_nn = torch.ones(n, n, dtype=torch.bool, device=device)
    top = torch.cat((ones_nn, z_nt, z_nt), dim=1)
    mid = torch.cat((ones_tn, le, z_tt), dim=1)
    bot = torch.cat((ones_tn, lt, eq), dim=1)
    mask = torch.cat((top, mid, bot), dim=0)[None].expand(bsz, -1, -1)
    key_valid = torch.cat((token_valid, frame_valid, frame_valid), dim=1)
    mask = mask & key_valid[:, None, :]
    mask = mask | torch.eye(n + 2 * t, dtype=torch.bool, device=device)[None]  # no empty rows for padding
    return mask[:, None]


class BlockFlowMatching(nn.Module):
    """Wraps a :class:`DiT` with the block flow matching loss (and stochastic block REPA)."""

    def __init__(self, model: DiT, config: BlockFMConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config or BlockFMConfig()
        self.config.validate()

    def velocity(
        self,
        clean: Tensor,
        noisy: Tensor,
        t_frames: Tensor,
        tokens: Tensor,
        style: Tensor,
        token_valid: Tensor,
        frame_valid: Tensor,
        *,
        return_repa: bool = False,
        beats_per_frame: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Teacher-forced velocity ``[B, T, M]`` for the noisy stream (and REPA projections ``[B, S, D]``).

        ``beats_per_frame [B]`` (NaN: no tempo) feeds a tempo-clock DiT; both streams start at frame 0.
        """
        model = self.model
        bsz, n = tokens.shape
        t = clean.shape[1]
        b = model.config.block_size
        x = torch.cat((model.embed_text(tokens), model.embed_latents(clean, 0, beats_per_frame),
                       model.embed_latents(noisy, 0, beats_per_frame)), dim=1)
        time = torch.cat(
            (
                torch.full((bsz, n), -1.0, device=clean.device),
                torch.ones(bsz, t, device=clean.device),
                t_frames.float(),
            ),
            dim=1,
        )
        pos = torch.cat((torch.arange(n), torch.arange(t), torch.arange(t))).to(clean.device)[None]
        rope = rotary_tables(pos, model.config.head_dim, model.dtype)
        mask = block_causal_sequence_mask(token_valid, frame_valid, b)
        out = model(x, time, style.to(model.dtype), rope, MaskedAttention(mask), return_repa=return_repa)
        if return_repa:
            v, repa = out
        else:
            v, repa = out, []
        return v[:, n + t :], repa

    def forward(
        self,
        latents: Tensor,
        latent_lengths: Tensor,
        tokens: Tensor,
        token_lengths: Tensor,
        style: Tensor,
        repa_targets: list[Tensor] | None = None,
        *,
        generator: torch.Generator | None = None,
        beats_per_frame: Tensor | None = None,
    ) -> BlockFMOutput:
        """Loss for a batch.

        Args:
            latents ``[B, T, M]``, latent_lengths ``[B]``; tokens ``[B, N]`` (0-padded),
            token_lengths ``[B]``; style ``[B, 512]``; repa_targets: one ``[B, T, D_k]`` SSL feature
            tensor per REPA projector, aligned with the latent frames; beats_per_frame ``[B]``: the
            stated tempo over the latent frame rate (NaN where unknown), for a tempo-clock DiT. It is
            part of the style condition, so it is dropped (NaN) wherever the style is.
        """
        cfg, model = self.config, self.model
        b = model.config.block_size
        device = latents.device
        bsz = latents.shape[0]
        z, padded_len = pad_end_of_prediction(latents.float(), latent_lengths, b, cfg.end_padding)
        total = z.shape[1]
        nb = total // b
        frame_valid = torch.arange(total, device=device)[None, :] < padded_len[:, None]
        n = tokens.shape[1]
        token_valid = torch.arange(n, device=device)[None, :] < token_lengths.to(device)[:, None]

        def rand(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator, device=generator.device if generator else device).to(device)

        # condition dropout for classifier-free guidance
        u = rand(bsz)
        drop_both = u < cfg.both_dropout
        drop_lyrics = drop_both | (rand(bsz) < cfg.lyrics_dropout)
        drop_style = drop_both | (rand(bsz) < cfg.style_dropout)
        tokens = torch.where(drop_lyrics[:, None], torch.zeros_like(tokens), tokens)
        style = torch.where(drop_style[:, None], torch.zeros_like(style), style)
        if beats_per_frame is not None:
            beats_per_frame = beats_per_frame.to(device).float()
            beats_per_frame = torch.where(drop_style, torch.full_like(beats_per_frame, float("nan")), beats_per_frame)

        z0 = torch.randn(z.shape, generator=generator, device=generator.device if generator else device).to(device)
        t_blocks = rand(bsz, nb)
        t_frames = t_blocks.repeat_interleave(b, dim=1)
        noisy = (1.0 - t_frames[..., None]) * z0 + t_frames[..., None] * z
        want_repa = bool(repa_targets) and model.projectors is not None and cfg.repa_weight > 0
        v, repa = self.velocity(z, noisy, t_frames, tokens, style, token_valid, frame_valid, return_repa=want_repa,
                                beats_per_frame=beats_per_frame)

        err = (v.float() - (z - z0)).pow(2).mean(-1) * frame_valid  # [B, T]
        per_block_n = frame_valid.view(bsz, nb, b).sum(-1)
        per_block = err.view(bsz, nb, b).sum(-1) / per_block_n.clamp(min=1)
        block_ok = per_block_n > 0
        fm = per_block[block_ok].mean()

        rl = fm.new_zeros(())
        if want_repa:
            for k, target in enumerate(repa_targets):
                tgt = torch.zeros(bsz, total, target.shape[-1], device=device)
                m = min(target.shape[1], total)
                tgt[:, :m] = target[:, :m].to(device).float()
                has_target = torch.arange(total, device=device)[None, :] < torch.minimum(latent_lengths.to(device), torch.tensor(m, device=device))[:, None]
                cw, nw, samples = stochastic_block_weights(has_target, b, cfg.repa_blocks, generator)
                proj = repa[k]
                rl = rl + repa_loss(proj[:, n : n + total], proj[:, n + total :], tgt, cw, nw, samples)
            rl = rl / len(repa_targets)
        loss = fm + cfg.repa_weight * rl if want_repa else fm
        return BlockFMOutput(loss=loss, fm_loss=fm.detach(), repa_loss=rl.detach(), frames=int(latent_lengths.sum()))
