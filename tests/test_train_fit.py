"""Fitting the card: Adafactor with a fused backward pass, AdamW8bit, FP8 base weights, and the
memory estimate's verdict, on the tiny real ldm model."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path

import pytest

from lora_forge.errors import ForgeError
from lora_forge.train.config import TrainConfig
from tests.test_train_loop import dataset, run  # noqa: F401  (dataset is a fixture)
from tests.train_support import FAST, nonzero_lora, weights_hash

torch = pytest.importorskip("torch")


def _step_once(model, config, steps: int = 2) -> dict[str, torch.Tensor]:
    """`steps` full training steps from a fixed non-zero LoRA; the trained tensors afterwards."""
    from lora_forge.model.schedule import schedule_from_model
    from lora_forge.train.loop import backward, diffusion_loss, optimizer_for, optimizer_step
    from lora_forge.train.optim import make_scheduler
    from lora_forge.train.session import open_session, precision_for

    session = open_session(model, config)
    try:
        nonzero_lora(session.network)
        optimizer, params = optimizer_for(session, config)
        scheduler = make_scheduler(optimizer, config, 10)
        prec = precision_for(config, torch.device("cpu"), torch.float32)
        schedule = schedule_from_model(model, "cpu")
        gen = torch.Generator().manual_seed(1)
        x0 = torch.randn(2, 4, 8, 8, generator=gen)
        cond = torch.randn(2, 77, 32, generator=gen)
        for _ in range(steps):
            session.begin_step(prec.autocast_dtype)
            loss = diffusion_loss(session.unet, x0, lambda: cond, schedule, config, prec, gen)
            backward(loss, config, prec)
            optimizer_step(optimizer, scheduler, params, config, prec)
            session.end_step()
        return {n: p.detach().clone() for n, p in session.network.named_parameters()}
    finally:
        session.close()


BASE = dict(network_dim=4, network_alpha=2, network_train_unet_only=True, mixed_precision="no", learning_rate=1e-3)


@pytest.mark.parametrize("optimizer", ["Adafactor", "AdamW8bit"])
@pytest.mark.parametrize("ckpt", [False, True], ids=["no-checkpointing", "checkpointing"])
def test_fused_backward_makes_the_same_update_as_the_optimizer_after_backward(tiny_host, ckpt, optimizer):
    model = tiny_host.sd_model()
    config = TrainConfig(**BASE, optimizer_type=optimizer, max_grad_norm=0.0, gradient_checkpointing=ckpt)
    if optimizer == "AdamW8bit":
        pytest.importorskip("bitsandbytes")
        # bitsandbytes keeps tensors under 4096 elements in 32-bit state: rank 128 puts most in 8-bit
        config = config.replace(network_dim=128, network_alpha=64)
    before = _step_once(model, config, steps=0)
    plain = _step_once(model, config)
    fused = _step_once(model, config.replace(fused_backward_pass=True))
    moved = 0
    for name, value in plain.items():
        torch.testing.assert_close(fused[name], value, rtol=1e-6, atol=1e-7)
        moved += int(not torch.equal(value, before[name]))
    assert moved > len(plain) // 2  # the steps did change the weights


def test_fused_backward_frees_each_gradient_during_backward(tiny_host):
    """No trained tensor has a gradient after backward: each was stepped and dropped in its hook."""
    from lora_forge.model.schedule import schedule_from_model
    from lora_forge.train.loop import backward, diffusion_loss, optimizer_for
    from lora_forge.train.session import open_session, precision_for

    model = tiny_host.sd_model()
    config = TrainConfig(**BASE, optimizer_type="Adafactor", fused_backward_pass=True)
    session = open_session(model, config)
    try:
        optimizer, params = optimizer_for(session, config)
        seen = []
        ours = [p.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad is None)) for p in params]
        prec = precision_for(config, torch.device("cpu"), torch.float32)
        session.begin_step(None)
        x0 = torch.randn(1, 4, 8, 8)
        loss = diffusion_loss(session.unet, x0, lambda: torch.randn(1, 77, 32), schedule_from_model(model, "cpu"),
                              config, prec, torch.Generator().manual_seed(0))  # fmt: skip
        backward(loss, config, prec)
        assert len(seen) == len(params) > 100 and all(seen)  # our hook ran first and freed the gradient
        assert all(p.grad is None for p in params)
        assert len(optimizer.state) == len(params)  # every tensor was stepped
    finally:
        for h in ours:
            h.remove()
        session.close()
    assert not any(p._post_accumulate_grad_hooks for p in params)  # the session took its hooks away


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"fused_backward_pass": True, "optimizer_type": "AdamW"}, "optimizer_type Adafactor or AdamW8bit"),
        ({"fused_backward_pass": True, "optimizer_type": "Adafactor", "gradient_accumulation_steps": 2},
         "gradient_accumulation_steps 1"),
        ({"fp8_base": True, "mixed_precision": "no"}, "fp8_base needs mixed_precision"),
    ],
)  # fmt: skip
def test_combinations_that_cannot_work_are_refused_by_the_config(changes, key):
    with pytest.raises(ForgeError, match=key):
        TrainConfig(**changes).validate()


def test_adafactor_and_fused_backward_train_end_to_end(tiny_host, dataset, tmp_path):  # noqa: F811
    result = run(tiny_host, dataset, tmp_path, max_train_steps=6, optimizer_type="Adafactor",
                 fused_backward_pass=True, learning_rate=1e-3, save_state=True)  # fmt: skip
    assert result.steps == 6 and all(loss == loss for loss in result.losses)
    assert result.report["stopped"] == ""


def test_adamw8bit_runs_when_bitsandbytes_is_installed(tiny_host):
    pytest.importorskip("bitsandbytes")
    model = tiny_host.sd_model()
    config = TrainConfig(**BASE, optimizer_type="AdamW8bit")
    before = _step_once(model, config, steps=0)
    after = _step_once(model, config)
    assert any(not torch.equal(after[n], before[n]) for n in before)


def test_adamw8bit_without_bitsandbytes_says_what_to_install(monkeypatch):
    import importlib.util

    from lora_forge.train.optim import check_optimizer

    real = importlib.util.find_spec
    hidden = lambda name, *a: None if name == "bitsandbytes" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    with pytest.raises(ForgeError, match="pip install bitsandbytes"):
        check_optimizer("AdamW8bit", "cpu")


# ------------------------------------------------------------------------------------------ FP8


def _grads(model, config) -> dict[str, torch.Tensor]:
    from tests.test_train_loop import lora_grads

    return lora_grads(model, config, begin_step=True, by_name=True)


def _relative_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and len(a) > 300
    fa = torch.cat([g.flatten().float() for g in a.values()])
    fb = torch.cat([g.flatten().float() for g in b.values()])
    assert fb.abs().sum() > 0
    return float((fa - fb).norm() / fb.norm())


@contextlib.contextmanager
def _weights_rounded_to_fp8(unet):
    """The same model, its Linear/Conv weights and biases rounded through float8_e4m3fn but kept in
    their own dtype: what FP8 storage computes, without FP8 storage."""
    layers = [m for m in unet.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    saved = [(p, p.data) for m in layers for p in m.parameters(recurse=False)]
    try:
        for p, data in saved:
            p.data = data.to(torch.float8_e4m3fn).to(data.dtype)
        yield
    finally:
        for p, data in saved:
            p.data = data


@pytest.mark.parametrize("ckpt", [False, True], ids=["no-checkpointing", "checkpointing"])
def test_fp8_base_gives_the_gradients_of_its_rounded_weights(tiny_host, ckpt):
    """FP8 storage computes exactly what bf16 compute over the FP8-rounded weights computes (bf16
    rounding apart); against the unrounded base the gap is FP8's own rounding, which is larger."""
    model = tiny_host.sd_model()
    config = TrainConfig(**{**BASE, "mixed_precision": "bf16"}, gradient_checkpointing=ckpt)
    fp8 = _grads(model, config.replace(fp8_base=True))
    with _weights_rounded_to_fp8(model.model.diffusion_model):
        rounded = _grads(model, config)
    exact = _grads(model, config)
    assert _relative_gap(fp8, rounded) < 0.02
    assert _relative_gap(fp8, exact) < 0.5  # e4m3: 3 mantissa bits on every weight of a random UNet


def test_fp8_base_with_checkpointing_on_and_off_gives_the_same_gradients(tiny_host):
    """FP8 needs mixed precision, and bf16 alone moves this tiny UNet's LoRA gradients by ~7 % between
    checkpointing on and off (the forms and the order of the sums differ; fp32 agrees to 1e-5):
    FP8 storage adds nothing to that."""
    model = tiny_host.sd_model()
    gaps = {}
    for fp8 in (False, True):
        config = TrainConfig(**{**BASE, "mixed_precision": "bf16"}, fp8_base=fp8)
        on = _grads(model, config.replace(gradient_checkpointing=True))
        off = _grads(model, config.replace(gradient_checkpointing=False))
        gaps[fp8] = _relative_gap(on, off)
    assert gaps[True] < 1.5 * gaps[False] + 0.01, gaps


def test_fp8_training_leaves_the_model_bit_identical(tiny_host, dataset, tmp_path):  # noqa: F811
    model = tiny_host.sd_model()
    before = weights_hash(model)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    result = run(tiny_host, dataset, tmp_path, max_train_steps=3, mixed_precision="bf16", fp8_base=True)
    assert result.steps == 3 and result.losses and all(loss == loss for loss in result.losses)
    assert weights_hash(model) == before
    assert {n: p.dtype for n, p in model.named_parameters()} == dtypes
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_fp8_layers_keep_only_fp8_weights_for_backward(tiny_host):
    """What autograd saves in an FP8 layer is the FP8 tensor, not an upcast copy."""
    from lora_forge.model import fp8

    layer = torch.nn.Linear(64, 64)
    with fp8.fp8_storage(layer):
        assert fp8.is_fp8(layer.weight)
        saved = []
        x = torch.randn(3, 64, requires_grad=True)
        hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t)
        with hooks, torch.autocast("cpu", dtype=torch.bfloat16):
            y = fp8.linear(x, layer.weight, layer.bias)
        y.float().sum().backward()
        assert [t.dtype for t in saved] == [fp8.fp8_dtype()]
        reference = torch.ones(3, 64) @ layer.weight.to(torch.bfloat16).float()
        torch.testing.assert_close(x.grad, reference, rtol=1e-2, atol=1e-2)


def test_fp8_on_a_torch_without_float8_is_refused_before_work(tiny_host, dataset, tmp_path, monkeypatch):  # noqa: F811
    model = tiny_host.sd_model()
    before = weights_hash(model)
    monkeypatch.delattr(torch, "float8_e4m3fn")
    with pytest.raises(ForgeError, match=r"FP8 base weights need torch 2\.1"):
        run(tiny_host, dataset, tmp_path, max_train_steps=2, mixed_precision="bf16", fp8_base=True)
    assert not list(Path(tmp_path).iterdir())  # no run folder: refused before any work
    assert weights_hash(model) == before


def test_fp8_storage_puts_back_the_original_tensors_exactly():
    from lora_forge.model import fp8

    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Linear(8, 8).half())
    raw = {n: p.detach().clone() for n, p in net.named_parameters()}
    with fp8.fp8_storage(net):
        assert fp8.stored_fp8(net)
        assert net[1].weight.dtype == torch.float32  # norms stay as they were
    for n, p in net.named_parameters():
        assert p.dtype == raw[n].dtype and torch.equal(p, raw[n]), n
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()
    assert digest == hashlib.sha256(b"".join(t.numpy().tobytes() for t in raw.values())).hexdigest()


# ------------------------------------------------------------------------------- the estimate

GB = 1024**3


def _estimate(total_gb: float, fp8_gb: float, card_gb: float = 0.0):
    from lora_forge.train import memory

    est = memory.Estimate(0, 0, 0, 0, int(total_gb * GB), int(fp8_gb * GB), int(card_gb * GB))
    est.verdict = memory.verdict(est)
    return est


@pytest.mark.parametrize(
    "total, fp8, card, said",
    [
        (7.2, 4.9, 8, "fits 8 GB"),
        (7.2, 4.9, 6, "needs FP8 for 6 GB"),
        (10.3, 7.9, 6, "needs 10.3 GB"),
        (7.2, 7.2, 0, "fits 8 GB"),  # no card known (CPU): the smallest common card
        (7.2, 5.3, 0, "fits 8 GB; needs FP8 for 6 GB"),
        (90.0, 60.0, 0, "needs 90.0 GB"),
    ],
)
def test_the_estimate_says_whether_the_run_fits_the_card(total, fp8, card, said):
    est = _estimate(total, fp8, card)
    assert est.verdict == said
    assert est.summary().endswith("; " + said)


def test_a_run_that_cannot_fit_the_card_is_refused_with_what_would_make_it_fit():
    from lora_forge.train.fit import check_fits

    check_fits(_estimate(7.2, 4.9, 8), TrainConfig())  # fits: nothing to say
    with pytest.raises(ForgeError, match=r"about 7\.2 GB .* the card has 6\.0 GB; turn on FP8 .* about 4\.9 GB"):
        check_fits(_estimate(7.2, 4.9, 6), TrainConfig())
    with pytest.raises(ForgeError, match=r"about 10\.3 GB .* lower the resolution"):
        check_fits(_estimate(10.3, 7.9, 6), TrainConfig())


def test_a_run_over_the_cards_memory_stops_before_any_work(tiny_host, dataset, tmp_path, monkeypatch):  # noqa: F811
    from lora_forge.train import fit

    model = tiny_host.sd_model()
    before = weights_hash(model)
    monkeypatch.setattr(fit, "capacity", lambda device: 64 * 1024**2)  # a 64 MiB "card"
    with pytest.raises(ForgeError, match=r"GB of graphics memory but the card has 0\.1 GB"):
        run(tiny_host, dataset, tmp_path, max_train_steps=2)
    assert not list(Path(tmp_path).iterdir()) and weights_hash(model) == before


def _session_estimate(model, config):
    from lora_forge.train import memory
    from lora_forge.train.session import open_session

    session = open_session(model, config)
    try:
        return memory.estimate(model, session.network, config, None, torch.device("cpu"))
    finally:
        session.close()


def test_the_estimate_counts_fp8_weights_adafactor_state_and_the_fused_backward(tiny_host):
    from lora_forge.model.fp8 import fp8_weight_bytes

    model = tiny_host.sd_model()
    unet = model.model.diffusion_model
    config = TrainConfig(**{**BASE, "mixed_precision": "bf16"}, resolution="64", max_bucket_reso=128)
    plain = _session_estimate(model, config)
    fp8 = _session_estimate(model, config.replace(fp8_base=True))
    unet_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    assert fp8.frozen_weights == plain.frozen_weights - unet_bytes + fp8_weight_bytes(unet)
    assert plain.fp8_total - plain.total == fp8_weight_bytes(unet) - unet_bytes < 0
    adamw = plain.trainable
    adafactor = _session_estimate(model, config.replace(optimizer_type="Adafactor")).trainable
    fused = _session_estimate(model, config.replace(optimizer_type="Adafactor", fused_backward_pass=True)).trainable
    assert fused < adafactor < adamw


def test_the_adafactor_state_estimate_is_what_adafactor_keeps(tiny_host):
    from lora_forge.train.memory import optimizer_state_bytes
    from lora_forge.train.optim import make_optimizer

    params = [torch.nn.Parameter(torch.randn(*s)) for s in [(4, 96), (320, 4), (8, 64, 1, 1), (40,)]]
    optimizer = make_optimizer("Adafactor", [{"params": params, "lr": 1e-3}])
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    kept = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    kept -= sum(s["RMS"].numel() * 4 if torch.is_tensor(s.get("RMS")) else 0 for s in optimizer.state.values())
    assert optimizer_state_bytes(params, "Adafactor") == kept


def test_cli_fp8_flag_trains_over_fp8_weights_and_says_so_in_the_plan(tiny_files, dataset, tmp_path, capsys):  # noqa: F811
    from lora_forge.cli import main

    args = ["train", "--ckpt", str(tiny_files.checkpoint), "--data", str(dataset), "--name", "cli8", "--out",
            str(tmp_path), "--fp8-base", "--json"]  # fmt: skip
    sets = [f"{k}={v}" for k, v in {**FAST, "max_train_steps": 2, "mixed_precision": "bf16"}.items()]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"memory plan: ≈ .*; fits \d+ GB", printed)  # the verdict, before the first step
    out = json.loads(printed.strip().splitlines()[-1])
    assert out["steps"] == 2 and "fp8_base = true" in (Path(out["run_dir"]) / "config.toml").read_text("utf-8")
    sets[sets.index("mixed_precision=bf16")] = "mixed_precision=no"
    assert main(args + [x for s in sets for x in ("--set", s)]) == 2
    assert "fp8_base needs mixed_precision" in capsys.readouterr().err
