"""Training plumbing without Ray: configs, CLI precedence, checkpoints, export, start from released weights."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from dr2studio.config import ConfigError
from dr2studio.data import DataPosition
from training import block_fm, common, cppo, vae
from training.export import export_dit


def test_stage_configs_round_trip_and_reject_bad_values(tmp_path):
    for cls, smoke in ((block_fm.BlockFMTrainConfig, block_fm.smoke_config), (vae.VAETrainConfig, vae.smoke_config),
                       (cppo.CPPOTrainConfig, cppo.smoke_config)):
        cfg = smoke()
        cfg.save(tmp_path / "c.json")
        assert cls.load(tmp_path / "c.json") == cfg
    with pytest.raises(common.ConfigError, match="fsdp"):
        block_fm.BlockFMTrainConfig(strategy="fsdp", use_gpu=False).validate()
    with pytest.raises(common.ConfigError, match="betas"):
        common.TrainConfig(betas=[0.8]).validate()
    with pytest.raises(common.ConfigError, match="merge_weights"):
        cppo.CPPOTrainConfig(merge_weights=[1.0]).validate()
    defaults = common.TrainConfig()
    assert defaults.betas == [0.8, 0.9] and defaults.weight_decay == 1e-2 and defaults.grad_clip == 0.5


def test_cli_precedence_smoke_then_file_then_set_then_flags(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"lr": 0.5, "max_steps": 7, "name": "from-file"}))
    cfg, args = common.parse_args(
        block_fm.BlockFMTrainConfig, block_fm.smoke_config,
        ["--smoke", "--config", str(tmp_path / "c.json"), "--set", "max_steps=9", "--set", 'model={"dim": 32}',
         "--name", "flag", "--max-steps", "11"])
    assert args.smoke and cfg.lr == 0.5 and cfg.max_steps == 11 and cfg.name == "flag" and cfg.model == {"dim": 32}
    assert cfg.batch_size == block_fm.smoke_config().batch_size  # untouched smoke value
    with pytest.raises(SystemExit, match="bad training config"):
        common.parse_args(block_fm.BlockFMTrainConfig, block_fm.smoke_config, ["--set", "strategy=zero3"])


def test_warmup_is_linear_then_constant():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = common.warmup_scheduler(opt, 4)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_decay_phase_anneals_to_zero_and_a_resumed_longer_run_continues_then_decays():
    def lrs(sched, opt, n):
        out = []
        for _ in range(n):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = common.make_scheduler(opt, common.TrainConfig(warmup_steps=2, max_steps=8, decay_steps=4))
    assert lrs(sched, opt, 8) == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25])
    # a constant-rate run saved at step 4, resumed with a longer max_steps and a decay phase
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    first = common.make_scheduler(opt, common.TrainConfig(warmup_steps=2, max_steps=4))
    lrs(first, opt, 4)
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    opt2.load_state_dict(opt.state_dict())
    resumed = common.make_scheduler(opt2, common.TrainConfig(warmup_steps=2, max_steps=8, decay_steps=2))
    resumed.load_state_dict(first.state_dict())
    assert lrs(resumed, opt2, 4) == pytest.approx([1.0, 1.0, 1.0, 0.5])
    with pytest.raises(ConfigError, match="decay_steps"):
        common.TrainConfig(max_steps=8, decay_steps=9).validate()


def test_checkpoint_holds_modules_optimisers_schedulers_step_and_position(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = common.make_optimizer(model.parameters(), common.TrainConfig(lr=0.1))
    sched = common.warmup_scheduler(opt, 3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    common.save_checkpoint(tmp_path, modules={"net": model}, optimizers={"adamw": (model, opt)},
                           schedulers={"warmup": sched}, step=7, position=DataPosition(2, 5),
                           config=common.TrainConfig(name="x"))
    meta = common.read_checkpoint_meta(tmp_path)
    assert meta["step"] == 7 and DataPosition.from_dict(meta["position"]) == DataPosition(2, 5)
    assert meta["config"]["name"] == "x"
    sd = common.load_checkpoint_module(tmp_path, "net")
    assert torch.equal(sd["weight"], model.weight.detach())
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    opt2 = common.make_optimizer(torch.nn.Linear(3, 2).parameters(), common.TrainConfig(lr=0.1))
    opt2.load_state_dict(state["optimizers"]["adamw"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert state["schedulers"]["warmup"]["last_epoch"] == 1
    with pytest.raises(FileNotFoundError, match="no module 'other'"):
        common.load_checkpoint_module(tmp_path, "other")


def test_start_from_released_weights_and_export_a_complete_model_dir(tiny_ref_dir, tmp_path):
    from dr2studio.checkpoints import load_dit

    cfg = block_fm.BlockFMTrainConfig(init_from=str(tiny_ref_dir))
    model = block_fm.build_dit(cfg)
    released = load_dit(tiny_ref_dir, device="cpu")
    assert model.training and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), released.state_dict().values()))
    assert cfg.dit_config() == released.config
    out = export_dit(model.state_dict(), cfg.dit_config(), tmp_path / "out", assets_dir=str(tiny_ref_dir))
    for name in ("model.json", "model.safetensors", "decoder.json", "decoder.bin", "vocab.json", "dr2studio.json"):
        assert (out / name).is_file(), name
    again = load_dit(out, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), released.state_dict().values()))
    info = json.loads((out / "dr2studio.json").read_text())
    assert info["training"]["block_fm"]["assets_from"] == str(tiny_ref_dir)


def test_relative_paths_are_made_absolute_for_ray_workers(tmp_path, monkeypatch) -> None:
    """Ray Train workers run in another folder: a relative --set path must reach them absolute."""
    (tmp_path / "songs").mkdir()
    (tmp_path / "songs" / "m.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    cfg, _ = common.parse_args(vae.VAETrainConfig, vae.VAETrainConfig, [
        "--set", "manifest=songs/m.jsonl", "--export-dir", "out", "--set", "encoder_from=ASLP-lab/DiffRhythm2"])
    assert cfg.manifest == str(tmp_path / "songs" / "m.jsonl")
    assert cfg.export_dir == str(tmp_path / "out")  # created later, still anchored here
    assert cfg.encoder_from == "ASLP-lab/DiffRhythm2"  # not a local path: left alone
    assert "PATH_FIELDS" not in cfg.to_dict()
    bfm = common.absolute_paths(block_fm.BlockFMTrainConfig(data="songs", storage_path="s3://bucket/runs"))
    assert bfm.data == str(tmp_path / "songs") and bfm.storage_path == "s3://bucket/runs"


def test_vae_decoder_fine_tune_with_a_frozen_encoder_keeps_the_latent_space(tmp_path):
    from dr2studio.models.bigvgan import save_decoder
    from dr2studio.models.encoder import save_encoder

    cfg = vae.smoke_config()
    gen, _ = vae.build_models(cfg)
    save_encoder(gen.encoder, tmp_path)
    save_decoder(gen.decoder, tmp_path)
    tuned = vae.VAETrainConfig.from_dict({**cfg.to_dict(), "encoder_from": str(tmp_path), "decoder_from": str(tmp_path),
                                          "train_decoder": True, "train_encoder": False})
    tuned.validate()
    gen2, _ = vae.build_models(tuned)
    assert not any(p.requires_grad for p in gen2.encoder.parameters())
    assert all(p.requires_grad for p in gen2.decoder.parameters())
    opt = common.make_optimizer(gen2.parameters(), tuned)
    trainable = {id(p) for group in opt.param_groups for p in group["params"]}
    assert trainable == {id(p) for p in gen2.decoder.parameters()}  # the optimiser never sees the encoder
    for bad, message in (({"encoder_from": ""}, "needs encoder_from"), ({"train_decoder": False}, "nothing to train")):
        with pytest.raises(common.ConfigError, match=message):
            vae.build_models(vae.VAETrainConfig.from_dict({**tuned.to_dict(), **bad}))


def test_a_fine_tuned_dit_keeps_the_record_of_the_run_it_started_from(tmp_path):
    from dr2studio.checkpoints import save_dit
    from dr2studio.models.dit import DiT, DiTConfig
    from training.export import write_training_info

    first = tmp_path / "first"
    save_dit(DiT(DiTConfig(dim=32, depth=1, heads=2, ff_mult=2, mel_dim=4, text_num_embeds=16, block_size=2)), first)
    write_training_info(first, "block_fm", {"run": "first", "step": 3000})
    cfg = block_fm.BlockFMTrainConfig(name="second", init_from=str(first), model={"tempo_clock": [1.0]}, lr=5e-4)
    info = block_fm.stage_info(cfg, 1500)
    assert info["run"] == "second" and info["step"] == 1500 and info["init_from"] == str(first)
    assert info["tempo_clock"] == [1.0] and info["previous"] == {"run": "first", "step": 3000}
    assert "previous" not in block_fm.stage_info(block_fm.BlockFMTrainConfig(name="fresh"), 10)


def test_a_run_name_taken_by_another_user_stage_or_config_is_refused_unless_resume(tmp_path, monkeypatch):
    """Ray resumes any run folder of the same name: the record in it keeps people off each other's runs."""
    cfg, _ = common.parse_args(block_fm.BlockFMTrainConfig, block_fm.smoke_config,
                               ["--smoke", "--storage-path", str(tmp_path), "--name", "shared"])
    record = common.claim_run(cfg)
    assert record == tmp_path / "shared" / common.RUN_RECORD and json.loads(record.read_text())["stage"] == "BlockFMTrainConfig"
    # the same run started again, longer or on more workers, continues
    for change in ({}, {"max_steps": 500, "decay_steps": 50, "num_workers": 4, "checkpoint_every": 7}):
        assert common.claim_run(dataclasses.replace(cfg, **change)) == record
    with pytest.raises(common.RunClaimError, match=rf"has other settings \(lr: {cfg.lr} -> 0.5\): .*--resume"):
        common.claim_run(dataclasses.replace(cfg, lr=0.5))
    with pytest.raises(SystemExit, match="is a BlockFMTrainConfig run, not VAETrainConfig"):
        common.claim_run(vae.VAETrainConfig(name="shared", storage_path=str(tmp_path)))
    monkeypatch.setattr(common, "_owner", lambda: "bob")
    with pytest.raises(SystemExit, match=r"was started by '.+', not 'bob'"):
        common.claim_run(cfg)
    resumed, _ = common.parse_args(block_fm.BlockFMTrainConfig, block_fm.smoke_config,
                                   ["--smoke", "--storage-path", str(tmp_path), "--name", "shared", "--resume",
                                    "--set", "lr=0.5"])
    assert resumed.resume and common.claim_run(resumed) == record  # an explicit --resume continues it
    assert json.loads(record.read_text())["owner"] != "bob"  # and it stays the first owner's run
    # a folder with checkpoints from before the record existed needs --resume too
    (tmp_path / "old" / "checkpoint_00000010").mkdir(parents=True)
    with pytest.raises(SystemExit, match="has checkpoints but no dr2run.json"):
        common.claim_run(dataclasses.replace(cfg, name="old"))
    assert common.claim_run(dataclasses.replace(cfg, name="old", resume=True)).is_file()


def test_exports_and_checkpoints_are_readable_by_the_group(tmp_path):
    """safetensors writes through a private temp file (0600); what we export gets the umask's mode."""
    old = os.umask(0o022)
    try:
        model = torch.nn.Linear(3, 2)
        opt = common.make_optimizer(model.parameters(), common.TrainConfig())
        common.save_checkpoint(tmp_path / "ckpt", modules={"net": model}, optimizers={"adamw": (model, opt)},
                               schedulers={}, step=1, position=DataPosition(0, 1), config=common.TrainConfig())
        cfg = block_fm.smoke_config()
        out = export_dit(block_fm.build_dit(cfg).state_dict(), cfg.dit_config(), tmp_path / "out")
        files = [*(tmp_path / "ckpt").rglob("*.*"), *out.iterdir()]
        assert {p.name for p in files} >= {"net.safetensors", "meta.json", "model.safetensors", "dr2studio.json"}
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o644" for p in files}
        os.umask(0o027)  # a stricter umask is kept: group-readable, not world-readable
        assert common.default_file_mode() == 0o640
        (tmp_path / "keep").write_text("x")
        os.chmod(tmp_path / "keep", 0o600)
        common.make_group_readable(tmp_path / "keep", tmp_path / "missing")
        assert (tmp_path / "keep").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_job_runtime_env_names_this_venv_without_resolving_its_symlink(tmp_path):
    import sys

    from training.runtime_env import job_runtime_env, main

    env = job_runtime_env()
    assert env["py_executable"] == str(Path(sys.executable).absolute())  # the venv's python, not its target
    assert env["env_vars"]["PATH"] == f"{Path(sys.executable).absolute().parent}:${{PATH}}"  # Ray expands ${PATH}
    with pytest.raises(SystemExit, match="is not an executable Python interpreter"):
        main(["--python", str(tmp_path / "nope")])


def test_solver_owns_the_step_tail_cadence_and_the_final_checkpoint(tmp_path, monkeypatch):
    import ray.train

    from training.solver import Solver

    reports: list[tuple[dict, dict | None]] = []

    def report(metrics, checkpoint=None, checkpoint_dir_name=None):  # what Ray Train would receive
        meta = common.read_checkpoint_meta(checkpoint.path) if checkpoint is not None else None
        reports.append((metrics, meta))

    monkeypatch.setattr(ray.train, "report", report)
    cfg = common.TrainConfig(name="solver", storage_path=str(tmp_path), max_steps=5, checkpoint_every=2,
                             report_every=1, warmup_steps=4, grad_clip=1e-3)
    ctx = common.WorkerContext(0, 1, torch.device("cpu"))
    model = torch.nn.Linear(3, 1)
    opt = common.make_optimizer(model.parameters(), cfg)
    sched = common.make_scheduler(opt, cfg)
    solver = Solver(cfg, ctx, {"config": cfg.to_dict()}, modules={"net": model}, optimizers={"adamw": (model, opt)},
                    schedulers={"warmup": sched})
    assert solver.step == 0 and solver.position == DataPosition()
    norms = []
    for done in solver.steps():
        before = model.weight.detach().clone()
        norm = solver.optimize(model(torch.ones(4, 3)).pow(2).mean() + 10, model, opt)
        assert norm > cfg.grad_clip and not torch.equal(before, model.weight)  # clipped, then stepped
        norms.append(norm)
        solver.end_step({"loss": 1.0, "grad_norm": norm}, units=12.0, position=DataPosition(0, done + 1))
    assert solver.step == 5 and len(norms) == 5
    assert [m["step"] for m, _ in reports] == [1, 2, 3, 4, 5]
    assert [m["lr"] for m, _ in reports] == pytest.approx([cfg.lr * f for f in (0.5, 0.75, 1.0, 1.0, 1.0)])
    # checkpoints every 2 steps and at the end, each with its own step and data position
    saved = [(meta["step"], meta["position"]["batch"]) for _, meta in reports if meta is not None]
    assert saved == [(2, 2), (4, 4), (5, 5)]
    assert [m["step"] for m in common.read_metrics(cfg)] == [1, 2, 3, 4, 5]


def test_fault_injection_is_a_test_switch_outside_the_training_config(monkeypatch):
    from training import faults

    assert "kill_at_step" not in {f.name for f in dataclasses.fields(common.TrainConfig)}
    legacy = common.TrainConfig.from_dict({"kill_at_step": 3})  # an old config file still loads
    assert legacy.extra == {"kill_at_step": 3}
    monkeypatch.delenv(faults.KILL_AT_STEP_ENV, raising=False)
    assert faults.from_environment() == faults.FaultPlan()
    monkeypatch.setenv(faults.KILL_AT_STEP_ENV, "15")
    plan = faults.from_environment()
    assert plan.kill_at_step == 15
    assert faults.FaultPlan.from_loop_config({"config": {}, faults.LOOP_CONFIG_KEY: plan.to_dict()}) == plan
    assert faults.FaultPlan.from_loop_config({"config": {}}) == faults.FaultPlan()
    monkeypatch.setenv(faults.KILL_AT_STEP_ENV, "soon")
    with pytest.raises(SystemExit, match=faults.KILL_AT_STEP_ENV):
        faults.from_environment()


def test_stages_run_as_modules_without_path_edits():
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    for stage in ("vae", "block_fm", "cppo", "prepare_data", "synth_songs", "runtime_env"):
        source = (repo / "training" / f"{stage}.py").read_text(encoding="utf-8")
        assert "sys.path" not in source, stage
    done = subprocess.run([sys.executable, "-m", "training.block_fm", "--help"], cwd=repo, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--smoke" in done.stdout, done.stderr[-2000:]
