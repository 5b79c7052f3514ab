"""The training engine on the tiny real ldm model: learning, resume, checkpointing, safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lora_forge.errors import ForgeError
from lora_forge.events import StopFlag
from lora_forge.rundir import RunDir
from lora_forge.train.config import TrainConfig
from lora_forge.train.loop import prepare, train
from lora_forge.train.presets import PRESETS, preset_config
from tests.train_support import FAST, nonzero_lora, squares, weights_hash

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return squares(tmp_path_factory.mktemp("train-data"))


def run(host, data_dir, out, stop=None, progress=None, **changes):
    config = TrainConfig.from_dict({**FAST, **changes})
    prepared = prepare(config, data_dir, frozenset(changes) | {"num_repeats"})
    return train(host, prepared, out, stop=stop, **({"progress": progress} if progress else {}))


def tensor_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[8 + int.from_bytes(raw[:8], "little") :]


def metadata(path: Path) -> dict:
    from lora_forge.lora.fileformat import read_metadata

    clock = {"modelspec.date", "ss_training_started_at", "ss_training_finished_at"}
    return {k: v for k, v in read_metadata(path).items() if k not in clock}


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_training_leaves_the_base_model_exactly_as_it_was(tiny_host, dataset, tmp_path):
    model = tiny_host.sd_model()
    before = weights_hash(model)
    flags = [p.requires_grad for p in model.parameters()]
    forwards = [m for m in model.modules() if "forward" in m.__dict__]
    from ldm.modules.attention import CrossAttention

    attention = CrossAttention.forward
    result = run(tiny_host, dataset, tmp_path, max_train_steps=2, trigger_word="zkw")
    assert weights_hash(model) == before
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m for m in model.modules() if "forward" in m.__dict__] == forwards
    assert CrossAttention.forward is attention
    assert not model.training
    assert result.final_file.is_file() and (result.run_dir / "config.toml").is_file()
    assert len((result.run_dir / "loss.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_loss_falls_clearly_over_200_steps(tiny_host, dataset, tmp_path):
    """The mean loss of the last 20 steps is clearly below that of the first 20 (4 images)."""
    result = run(
        tiny_host, dataset, tmp_path, max_train_steps=200, network_dim=8, network_alpha=8,
        unet_lr=2e-3, learning_rate=2e-3, lr_scheduler="constant", min_snr_gamma=0, train_batch_size=1,
        network_train_unet_only=True, shuffle_caption=False, gradient_checkpointing=False,
    )  # fmt: skip
    losses = result.losses
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.8 * first, (first, last)


def test_stop_then_resume_gives_the_same_lora_bytes(tiny_host, dataset, tmp_path):
    common = dict(max_train_steps=6, network_dim=4, network_alpha=2, unet_lr=1e-3, text_encoder_lr=1e-4, seed=7,
                  trigger_word="zkw", train_batch_size=1, caption_tag_dropout_rate=0.2, noise_offset=0.05)  # fmt: skip
    whole = run(tiny_host, dataset, tmp_path / "whole", **common)
    stop = StopFlag()

    def progress(event):
        if event.data.get("step") == 3:
            stop.request("test stop")

    part = run(tiny_host, dataset, tmp_path / "part", stop=stop, progress=progress, **common)
    assert part.steps == 3 and part.stopped == "test stop" and part.final_file.is_file()
    resumed = run(tiny_host, dataset, tmp_path / "resumed", resume=str(part.run_dir), **common)
    assert resumed.steps == 6
    assert tensor_bytes(resumed.final_file) == tensor_bytes(whole.final_file)
    # the metadata too, except the wall-clock date of each run's start
    assert metadata(resumed.final_file) == metadata(whole.final_file)
    a, b = tensors(whole.final_file), tensors(part.final_file)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the stopped file really is an earlier state


def test_a_stop_after_the_last_step_is_a_finished_run(tiny_host, dataset, tmp_path):
    """Stop pressed while the last step runs: the run is complete, so its result and report say
    finished, not stopped (the app would offer Resume for a run with nothing left to train)."""
    stop = StopFlag()

    def progress(event):
        if event.data.get("step") == 4:
            stop.request("test stop")

    result = run(tiny_host, dataset, tmp_path, max_train_steps=4, network_dim=4, train_batch_size=1,
                 stop=stop, progress=progress)  # fmt: skip
    assert stop.requested and result.steps == 4 and result.stopped == ""
    assert json.loads(RunDir(result.run_dir).report.read_text(encoding="utf-8"))["stopped"] == ""


def test_a_run_whose_state_has_the_old_file_names_still_resumes(tiny_host, dataset, tmp_path):
    """Runs saved before the state left the WebUI's Lora list kept it as state/lora.safetensors and
    state/optimizer.pt; they resume to the same bytes as an uninterrupted run."""
    common = dict(max_train_steps=4, network_dim=4, network_alpha=2, unet_lr=1e-3, seed=5, train_batch_size=1)
    whole = run(tiny_host, dataset, tmp_path / "whole", **common)
    stop = StopFlag()

    def progress(event):
        if event.data.get("step") == 2:
            stop.request("test stop")

    part = run(tiny_host, dataset, tmp_path / "part", stop=stop, progress=progress, **common)
    state = part.run_dir / "state"
    assert sorted(p.name for p in state.iterdir()) == ["optimizer.state", "rng.json", "state.json", "weights.state"]
    assert not list(part.run_dir.rglob("*.pt")) and all(
        p.parent == part.run_dir for p in part.run_dir.rglob("*.safetensors")
    )
    (state / "weights.state").rename(state / "lora.safetensors")
    (state / "optimizer.state").rename(state / "optimizer.pt")
    record = json.loads((state / "state.json").read_text(encoding="utf-8"))  # old runs had no commit record
    record = {k: v for k, v in record.items() if k not in ("files", "format")}
    # and it predates a setting (noise_offset): its config file lacks the key, its hash covers the rest
    from lora_forge.train.config import read_config_file
    from lora_forge.train.state import config_hash

    config_file = part.run_dir / "config.toml"
    lines = config_file.read_text(encoding="utf-8").splitlines(keepends=True)
    config_file.write_text("".join(x for x in lines if not x.startswith("noise_offset ")), encoding="utf-8")
    old = TrainConfig.from_dict(read_config_file(config_file))
    record["config_hash"] = config_hash(old, read_config_file(config_file))
    (state / "state.json").write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(ForgeError, match="config differs"):  # the added setting changed: not the same training
        run(tiny_host, dataset, tmp_path / "other", resume=str(part.run_dir), noise_offset=0.1, **common)
    resumed = run(tiny_host, dataset, tmp_path / "resumed", resume=str(part.run_dir), **common)
    assert resumed.steps == 4 and tensor_bytes(resumed.final_file) == tensor_bytes(whole.final_file)


class _Killed(BaseException):
    """A process killed mid-run (a WebUI restart): nothing after the raise runs, no final file."""


def test_a_run_killed_after_an_epoch_resumes_from_that_epoch(tiny_host, dataset, tmp_path):
    common = dict(max_train_epochs=2, network_dim=4, network_alpha=2, unet_lr=1e-3, seed=3, trigger_word="zkw",
                  train_batch_size=1, save_every_n_epochs=1)  # fmt: skip
    whole = run(tiny_host, dataset, tmp_path / "whole", **common)
    assert whole.steps == 8  # 4 images x 1 repeat x 2 epochs

    def progress(event):
        if event.data.get("step") == 6:
            raise _Killed

    with pytest.raises(_Killed):
        run(tiny_host, dataset, tmp_path / "killed", progress=progress, **common)
    killed = tmp_path / "killed" / "lora"
    assert (killed / "lora-000001.safetensors").is_file() and not (killed / "lora.safetensors").exists()
    assert json.loads((killed / "state" / "state.json").read_text())["step"] == 4
    from lora_forge.lora.fileformat import read_metadata

    saved = read_metadata(killed / "lora-000001.safetensors")  # what the WebUI's metadata view shows
    assert (saved["ss_steps"], saved["ss_epoch"]) == ("4", "1")
    resumed = run(tiny_host, dataset, tmp_path / "resumed", resume=str(killed), **common)
    assert resumed.steps == 8 and resumed.report["steps_this_run"] == 4
    assert tensor_bytes(resumed.final_file) == tensor_bytes(whole.final_file)


def lora_grads(model, config, begin_step: bool, batch: int = 2, by_name: bool = False) -> dict:
    """Gradients of every trained tensor after one loss/backward with fixed non-zero LoRA weights."""
    from lora_forge.model.schedule import schedule_from_model
    from lora_forge.train.loop import backward, diffusion_loss
    from lora_forge.train.session import open_session, precision_for

    session = open_session(model, config)
    try:
        nonzero_lora(session.network)
        gen = torch.Generator().manual_seed(1)
        x0 = torch.randn(batch, 4, 8, 8, generator=gen)
        cond = torch.randn(batch, 77, 32, generator=gen)
        prec = precision_for(config, torch.device("cpu"), torch.float32)
        if begin_step:
            session.begin_step(None)
        schedule = schedule_from_model(model, "cpu")
        torch.manual_seed(2)  # LoRA dropout, when on
        loss = diffusion_loss(session.unet, x0, lambda c=cond: c, schedule, config, prec, gen)
        backward(loss, config, prec)
        if session.fast is not None and begin_step:
            if not by_name:
                return {i: p.grad.clone() for i, p in enumerate(session.fast.params)}
            names = {id(p): n for n, p in session.network.named_parameters()}
            grads = {}
            for params, flat in zip(session.fast.layout, session.fast.params, strict=True):
                for p, g in zip(params, flat.grad.split([p.numel() for p in params]), strict=True):
                    grads[names[id(p)]] = g.view_as(p).clone()
            return grads
        return {n: p.grad.clone() for n, p in session.network.named_parameters() if p.requires_grad}
    finally:
        session.close()


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["fast-forward", "lora-forward-with-dropout"])
def test_checkpointing_on_and_off_give_the_same_gradients(tiny_host, dropout):
    grads = {}
    for ckpt in (False, True):
        config = TrainConfig(network_dim=4, network_alpha=4, gradient_checkpointing=ckpt, mixed_precision="no",
                             network_train_unet_only=True, network_dropout=dropout)  # fmt: skip
        grads[ckpt] = lora_grads(tiny_host.sd_model(), config, begin_step=True)
    assert grads[True].keys() == grads[False].keys()
    for name, g in grads[False].items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(grads[True][name], g, rtol=1e-5, atol=1e-7)


def test_fast_training_forward_matches_the_lora_modules_forward(tiny_host):
    """The trainer's merged/unmerged forward computes what lora/'s injection computes."""
    model = tiny_host.sd_model()
    config = TrainConfig(network_dim=4, network_alpha=2, gradient_checkpointing=False, mixed_precision="no",
                         network_train_unet_only=True)  # fmt: skip
    fast = lora_grads(model, config, begin_step=False)  # live weights through the fast forwards
    general = lora_grads(model, config.replace(rank_dropout=1e-9), begin_step=False)  # lora/'s forward
    assert fast.keys() == general.keys() and len(fast) > 300
    for name, g in fast.items():
        torch.testing.assert_close(g, general[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("form", ["merged", "unmerged"])
def test_each_fast_form_in_a_step_matches_the_lora_modules_forward(tiny_host, monkeypatch, form, batch):
    """Each of the fast forward's forms (forced here; normally chosen per call by cost), inside a
    training step (flat weights, one cast per step), gives lora/'s gradients: the merged weight,
    and the unmerged branch including the one-image 1×1-conv matmul path."""
    from lora_forge.train import fastlora

    huge = 1 << 60
    monkeypatch.setattr(fastlora, "_costs", lambda *a: (0, huge, 0) if form == "merged" else (huge, 0, 0))
    model = tiny_host.sd_model()
    config = TrainConfig(network_dim=4, network_alpha=2, gradient_checkpointing=True, mixed_precision="no",
                         network_train_unet_only=True)  # fmt: skip
    fast = lora_grads(model, config, begin_step=True, batch=batch, by_name=True)
    general = lora_grads(model, config.replace(rank_dropout=1e-9), begin_step=False, batch=batch)
    assert fast.keys() == general.keys() and len(fast) > 300
    for name, g in fast.items():
        torch.testing.assert_close(g, general[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_a_few_steps(tiny_host, dataset, tmp_path, preset):
    config = preset_config(preset, {**FAST, "max_train_steps": 2, "trigger_word": "zkw"})
    prepared = prepare(config, dataset, frozenset({"max_train_steps", "num_repeats"}))
    result = train(tiny_host, prepared, tmp_path)
    assert result.steps == 2 and all(np.isfinite(result.losses))
    meta = __import__("lora_forge.lora.fileformat", fromlist=["read_metadata"]).read_metadata(result.final_file)
    assert meta["ss_network_dim"] == str(config.network_dim) and meta["ss_output_name"] == "lora"


def test_epoch_files_samples_and_report(tiny_host, dataset, tmp_path):
    result = run(tiny_host, dataset, tmp_path, max_train_epochs=2, sample_every_n_steps=4, sample_steps=2,
                 trigger_word="zkw")  # fmt: skip
    names = sorted(p.name for p in result.run_dir.glob("*.safetensors"))
    assert names == ["lora-000001.safetensors", "lora-000002.safetensors", "lora.safetensors"]
    samples = sorted(p.name for p in (result.run_dir / "samples").glob("*.png"))
    assert samples == ["step000004-0.png", "step000004-1.png", "step000008-0.png", "step000008-1.png"]
    report = result.report
    assert report["steps"] == 8 and report["peak_memory_bytes"] > 0 and report["it_per_s"] > 0


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["fast-forward", "lora-forward-with-dropout"])
def test_on_saved_sees_each_file_with_the_live_modules_which_it_can_mute(tiny_host, dataset, tmp_path, dropout):
    """A host's per-save check: called right after each file is written, while the trained modules
    are live; `session.muted()` gives the bare model, and the file applied on it gives the live output."""
    from lora_forge.lora.network import LoraNetwork

    model = tiny_host.sd_model()
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([500])

    def step():
        with torch.no_grad():
            return model.apply_model(x, t, model.get_learned_conditioning(["a photo"]))

    bare = step()
    seen = []

    def on_saved(path, session):
        live = step()
        with session.muted():
            muted = step()
            with LoraNetwork.from_file(model, path).injected():
                from_file = step()
        assert step().equal(live)  # our modules are back
        on_disk = sorted(p.name for p in path.parent.glob("*.safetensors"))
        seen.append((path.name, on_disk, live, muted, from_file))
        return f"{path.name} looked odd" if path.name == "lora.safetensors" else ""

    config = TrainConfig.from_dict({**FAST, "max_train_epochs": 2, "unet_lr": 1e-2, "network_dropout": dropout})
    prepared = prepare(config, dataset, frozenset({"max_train_epochs", "num_repeats"}))
    result = train(tiny_host, prepared, tmp_path, on_saved=on_saved)
    files = ["lora-000001.safetensors", "lora-000002.safetensors", "lora.safetensors"]
    assert [(name, on_disk) for name, on_disk, *_ in seen] == [(f, files[: i + 1]) for i, f in enumerate(files)]
    for _, _, live, muted, from_file in seen:
        effect = (live - bare).norm()
        assert effect > 1e-3 * bare.norm()
        torch.testing.assert_close(muted, bare, rtol=1e-4, atol=1e-5)
        assert (from_file - live).norm() < 0.01 * effect  # fp16 file vs the fp32 live modules
    assert result.report["save_checks"] == ["lora.safetensors looked odd"]
    assert json.loads((result.run_dir / "report.json").read_text(encoding="utf-8"))["save_checks"] == [
        "lora.safetensors looked odd"
    ]


def test_progress_events_carry_what_the_ui_shows(tiny_host, dataset, tmp_path):
    events = []
    run(tiny_host, dataset, tmp_path, max_train_steps=3, progress=events.append)
    steps = [e for e in events if e.data.get("step")]
    assert [e.step for e in steps] == [1, 2, 3] and all(e.total == 3 for e in steps)
    for key in ("loss", "loss_avg", "lr", "it_s", "eta_s", "memory", "epoch"):
        assert key in steps[-1].data
    plan = [e for e in events if e.message.startswith("memory plan")]
    assert plan and plan[0].data["total"] > plan[0].data["frozen_weights"] > 0


def test_continue_from_an_existing_lora_file(tiny_host, dataset, tmp_path):
    first = run(tiny_host, dataset, tmp_path / "a", max_train_steps=2, network_dim=4, network_alpha=4, unet_lr=1e-2)
    tiny_lr = {"unet_lr": 1e-9, "learning_rate": 1e-9, "text_encoder_lr": 1e-9}
    second = run(tiny_host, dataset, tmp_path / "b", max_train_steps=1, network_dim=4, network_alpha=4,
                 network_weights=str(first.final_file), **tiny_lr)  # fmt: skip
    a, b = tensors(first.final_file), tensors(second.final_file)
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=2e-3, rtol=1e-2)


def test_refusals_before_training(tiny_host, dataset, tmp_path):
    with pytest.raises(ForgeError, match="fp16 needs a CUDA GPU"):
        run(tiny_host, dataset, tmp_path, max_train_steps=1, mixed_precision="fp16")
    with pytest.raises(ForgeError, match="lion-pytorch"):
        run(tiny_host, dataset, tmp_path, max_train_steps=1, optimizer_type="Lion")
    assert not list(tmp_path.iterdir())  # nothing written


def test_nan_stops_with_a_message_naming_the_causes(tiny_host, dataset, tmp_path):
    with pytest.raises(ForgeError, match="learning rate"):
        run(tiny_host, dataset, tmp_path, max_train_steps=3, unet_lr=0.09, learning_rate=0.09, noise_offset=0.0,
            max_grad_norm=0, min_snr_gamma=0, network_alpha=1e6)  # fmt: skip


def test_cli_trains_and_reports_json(tiny_files, dataset, tmp_path, capsys):
    from lora_forge.cli import main

    args = ["train", "--ckpt", str(tiny_files.checkpoint), "--data", str(dataset), "--name", "cli", "--out",
            str(tmp_path), "--preset", "person", "--trigger", "zkw", "--json"]  # fmt: skip
    sets = [f"{k}={v}" for k, v in {**FAST, "max_train_steps": 2}.items()]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 2 and Path(out["final"]).is_file()
    assert 'trigger_word = "zkw"' in (Path(out["run_dir"]) / "config.toml").read_text(encoding="utf-8")


def test_cli_rejects_a_bad_dataset_before_loading_the_model(tmp_path, capsys):
    from lora_forge.cli import main

    (tmp_path / "data").mkdir()
    code = main(["train", "--ckpt", str(tmp_path / "missing.safetensors"), "--data", str(tmp_path / "data"),
                 "--name", "x", "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2 and "no images found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bf16_step_gradients_equal_a_plain_cast_of_the_masters_over_two_micro_steps(tiny_host):
    """The bf16 step's (down, up) come from buffers kept between steps (fastlora._CastBuffers):
    the gradients the optimizer sees, over two accumulated micro-steps and two optimizer steps, are
    bit for bit those of `master.to(bf16).split(...)` with autograd's own backward."""
    from lora_forge.model.schedule import schedule_from_model
    from lora_forge.train.loop import backward, diffusion_loss
    from lora_forge.train.session import open_session, precision_for

    model = tiny_host.sd_model()
    config = TrainConfig(network_dim=4, network_alpha=2, gradient_checkpointing=True, mixed_precision="bf16",
                         network_train_unet_only=True, gradient_accumulation_steps=2)  # fmt: skip
    prec = precision_for(config, torch.device("cpu"), torch.float32)
    schedule = schedule_from_model(model, "cpu")

    def plain_begin_step(fast) -> None:  # what begin_step did before the buffers
        views = []
        for master, params in zip(fast.params, fast.layout, strict=True):
            parts = master.to(torch.bfloat16).split([p.numel() for p in params])
            views.append([part.view_as(p) for part, p in zip(parts, params, strict=True)])
        fast.current = [(views[gd][pd], views[gu][pu], torch.bfloat16) for (gd, pd), (gu, pu) in fast.slots]

    def grads(plain: bool) -> list[list]:
        session = open_session(model, config)
        try:
            nonzero_lora(session.network)
            gen = torch.Generator().manual_seed(1)
            seen = []
            for _step in range(2):
                for _micro in range(2):
                    session.begin_step(torch.bfloat16)
                    if plain:
                        plain_begin_step(session.fast)
                    x0 = torch.randn(1, 4, 8, 8, generator=gen)
                    cond = torch.randn(1, 77, 32, generator=gen)
                    loss = diffusion_loss(session.unet, x0, lambda c=cond: c, schedule, config, prec, gen)
                    backward(loss, config, prec)
                    session.end_step()
                seen.append([p.grad.clone() for p in session.fast.params])
                with torch.no_grad():  # a different point for the second step, as an optimizer step makes
                    for p in session.fast.params:
                        p.add_(p.grad, alpha=-0.01)
                        p.grad = None
            return seen
        finally:
            session.close()

    ours, plain = grads(plain=False), grads(plain=True)
    assert [g.abs().sum() > 0 for step in ours for g in step] == [True] * 2 * len(ours[0])
    for a, b in zip(ours, plain, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


@pytest.mark.parametrize("form", ["merged", "unmerged"])
def test_per_tensor_bf16_step_casts_each_pair_in_use_with_the_same_gradients(tiny_host, monkeypatch, form):
    """Adafactor and AdamW8bit keep per-tensor parameters, and their bf16 step hands the forwards
    the fp32 masters, each pair cast where it is used (no low-precision copy of the network lives
    through the step). The gradients they see over two accumulated micro-steps are bit for bit
    those of casting every master once at the start of the step, in either fast form."""
    from lora_forge.model.schedule import schedule_from_model
    from lora_forge.train import fastlora
    from lora_forge.train.loop import backward, diffusion_loss
    from lora_forge.train.session import open_session, precision_for

    huge = 1 << 60
    monkeypatch.setattr(fastlora, "_costs", lambda *a: (0, huge, 0) if form == "merged" else (huge, 0, 0))
    model = tiny_host.sd_model()
    config = TrainConfig(network_dim=4, network_alpha=2, gradient_checkpointing=True, mixed_precision="bf16",
                         network_train_unet_only=True, gradient_accumulation_steps=2,
                         optimizer_type="Adafactor")  # fmt: skip
    prec = precision_for(config, torch.device("cpu"), torch.float32)
    schedule = schedule_from_model(model, "cpu")

    def grads(cast_at_start: bool) -> list:
        session = open_session(model, config)
        try:
            assert not session.fast.flat
            nonzero_lora(session.network)
            gen = torch.Generator().manual_seed(1)
            for _micro in range(2):
                session.begin_step(torch.bfloat16)
                masters = [down for down, _, _ in session.fast.current]
                if cast_at_start:
                    session.fast.current = [(d.to(torch.bfloat16), u.to(torch.bfloat16), dt)
                                            for d, u, dt in session.fast.current]  # fmt: skip
                else:
                    assert all(m.dtype == torch.float32 and m.requires_grad for m in masters)
                x0 = torch.randn(1, 4, 8, 8, generator=gen)
                cond = torch.randn(1, 77, 32, generator=gen)
                loss = diffusion_loss(session.unet, x0, lambda c=cond: c, schedule, config, prec, gen)
                backward(loss, config, prec)
                session.end_step()
            return [p.grad.clone() for p in session.fast.params]
        finally:
            session.close()

    ours, at_start = grads(cast_at_start=False), grads(cast_at_start=True)
    assert len(ours) > 300 and all(g.dtype == torch.float32 for g in ours)
    assert sum(bool(g.abs().sum() > 0) for g in ours) > 0.95 * len(ours)  # a few underflow in bf16 here
    for a, b in zip(ours, at_start, strict=True):
        assert torch.equal(a, b)
