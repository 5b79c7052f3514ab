"""LoRA injection on the real tiny SD1 `ldm` model: same result as merged weights, exact removal.

Tolerance: outputs of the injected network (W·x + m·s·up(down(x))) and of the merged weights
((W + m·s·up@down)·x) are compared in float32 with rtol = atol = 1e-4; they differ only by
summation order (observed ≤ 5e-6), while the LoRA itself moves the outputs by > 1e-2.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from lora_forge.lora import LoraNetwork, merge

PROMPTS = ["a photo of a cat", "a dog on a red sofa"]
TOL = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def sd_model(tiny_host):
    return tiny_host.sd_model()


@pytest.fixture(scope="module")
def inputs(sd_model):
    g = torch.Generator().manual_seed(1)
    width = sd_model.cond_stage_model.transformer.config.hidden_size
    x = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 400, 900])
    ctx = torch.randn(3, 7, width, generator=g)
    return x, t, ctx


def unet_out(sd_model, inputs):
    x, t, ctx = inputs
    with torch.no_grad():
        return sd_model.model.diffusion_model(x, t, context=ctx)


def te_out(sd_model, prompts=PROMPTS):
    with torch.no_grad():
        return sd_model.cond_stage_model(prompts)


def randomize_up(net, kinds=None, seed=0):
    """Non-zero up weights (kohya starts them at zero, which would make every check trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in net.loras:
            if kinds is None or lora.target.kind in kinds:
                lora.lora_up.weight.normal_(0.0, 0.3, generator=g)


def state_hashes(model):
    return {
        k: hashlib.sha256(v.detach().contiguous().view(torch.uint8).numpy()).hexdigest()
        for k, v in model.state_dict().items()
    }


def module_snapshot(model):
    snapshot = []
    for name, m in model.named_modules():
        params = [(p.dtype, p.requires_grad) for p in m.parameters(recurse=False)]
        buffers = [b.dtype for b in m.buffers(recurse=False)]
        snapshot.append((name, type(m), sorted(m.__dict__), params, buffers))
    return snapshot


@pytest.mark.parametrize("kind", ["linear", "conv1x1", "conv"])
def test_injected_equals_merged_unet(sd_model, inputs, kind):
    """Each module type alone (Linear, 1×1 proj conv / shortcut, 3×3 LoCon conv) gives the same UNet
    output injected at m and merged as W + m·ΔW."""
    net = LoraNetwork.create(sd_model, rank=4, alpha=2.0, conv_rank=3, conv_alpha=1.5, train_text_encoder=False)
    assert any(lora.target.kind == kind for lora in net.loras)
    randomize_up(net, kinds={kind})
    base = unet_out(sd_model, inputs)
    with net.injected():
        net.multiplier = 0.7
        injected = unet_out(sd_model, inputs)
    assert (injected - base).abs().max() > 1e-2, "the LoRA must change the output for the check to mean anything"
    merged = merge(sd_model, net.kohya_state_dict(torch.float32), 0.7)
    try:
        merged_out = unet_out(sd_model, inputs)
    finally:
        merged.unmerge()
    torch.testing.assert_close(injected, merged_out, **TOL)


def test_injected_equals_merged_text_encoder(sd_model):
    net = LoraNetwork.create(sd_model, rank=4, alpha=4.0, train_unet=False)
    randomize_up(net)
    base = te_out(sd_model)
    with net.injected():
        net.multiplier = -0.6
        injected = te_out(sd_model)
    assert (injected - base).abs().max() > 1e-2
    merged = merge(sd_model, net.kohya_state_dict(torch.float32), -0.6)
    try:
        merged_out = te_out(sd_model)
    finally:
        merged.unmerge()
    torch.testing.assert_close(injected, merged_out, **TOL)


def test_per_sample_multipliers_match_separate_runs(sd_model, inputs):
    """One batch at strengths [0, 0.5, 1.2] equals three runs at one strength each; a batch twice as
    long (CFG's cond + uncond halves) tiles the strengths over both halves."""
    net = LoraNetwork.create(sd_model, rank=4, alpha=1.0, conv_rank=2)
    randomize_up(net)
    strengths = [0.0, 0.5, 1.2]
    x, t, ctx = inputs
    with net.injected():
        net.multiplier = torch.tensor(strengths)
        batched = unet_out(sd_model, inputs)
        doubled = unet_out(sd_model, (torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, ctx])))
        te_batched = te_out(sd_model, PROMPTS + PROMPTS[:1])
        separate, te_separate = [], []
        for s in strengths:
            net.multiplier = s
            separate.append(unet_out(sd_model, inputs))
            te_separate.append(te_out(sd_model, PROMPTS + PROMPTS[:1]))
    for i in range(3):
        torch.testing.assert_close(batched[i], separate[i][i], **TOL)
        torch.testing.assert_close(doubled[i], separate[i][i], **TOL)
        torch.testing.assert_close(doubled[3 + i], separate[i][i], **TOL)
        torch.testing.assert_close(te_batched[i], te_separate[i][i], **TOL)
    assert (separate[2][2] - separate[0][2]).abs().max() > 1e-2


def test_two_networks_at_once_equal_both_merged_and_remove_in_any_order(sd_model, inputs):
    base_hashes = state_hashes(sd_model)
    base = unet_out(sd_model, inputs)
    a = LoraNetwork.create(sd_model, rank=4, alpha=4.0)
    b = LoraNetwork.create(sd_model, rank=2, alpha=1.0, conv_rank=2)
    randomize_up(a, seed=1)
    randomize_up(b, seed=2)
    a.multiplier, b.multiplier = 0.5, -0.8
    a.apply_to()
    b.apply_to()
    try:
        both = unet_out(sd_model, inputs)
    finally:
        a.remove()  # the first applied leaves first: b must still be live
    only_b = unet_out(sd_model, inputs)
    b.remove()
    ma = merge(sd_model, a.kohya_state_dict(torch.float32), 0.5)
    mb = merge(sd_model, b.kohya_state_dict(torch.float32), -0.8)
    merged_both = unet_out(sd_model, inputs)
    mb.unmerge()  # merges undo last-in first-out
    ma.unmerge()
    mb = merge(sd_model, b.kohya_state_dict(torch.float32), -0.8)
    merged_b = unet_out(sd_model, inputs)
    mb.unmerge()
    torch.testing.assert_close(both, merged_both, **TOL)
    torch.testing.assert_close(only_b, merged_b, **TOL)
    assert torch.equal(unet_out(sd_model, inputs), base)
    assert state_hashes(sd_model) == base_hashes


def test_removal_restores_the_model_exactly(sd_model, inputs):
    """After inject → forward → backward → remove: same state-dict hashes, flags, dtypes, module
    tree, instance dicts, forwards and bit-identical outputs."""
    hashes, snapshot = state_hashes(sd_model), module_snapshot(sd_model)
    names_before = [n for n, _ in sd_model.named_modules()]
    base_unet, base_te = unet_out(sd_model, inputs), te_out(sd_model)
    net = LoraNetwork.create(sd_model, rank=4, alpha=1.0, conv_rank=2, dropout=0.1, rank_dropout=0.1)
    randomize_up(net)
    with net.injected():
        assert [n for n, _ in sd_model.named_modules()] == names_before  # names kept while injected
        assert not any(p is q for p in sd_model.parameters() for q in net.parameters())
        net.train()
        x, t, _ = inputs
        loss = sd_model.model.diffusion_model(x, t, context=sd_model.cond_stage_model(PROMPTS[:1] * 3)).square().mean()
        loss.backward()
    assert all(lora.lora_down.weight.grad is not None for lora in net.loras)
    for p in sd_model.parameters():
        p.grad = None  # the host's own trainable flags let grads reach it; that is the trainer's business
    assert state_hashes(sd_model) == hashes
    assert module_snapshot(sd_model) == snapshot
    for _, m in sd_model.named_modules():
        assert "forward" not in m.__dict__
        assert m.forward.__func__ is type(m).forward
    assert torch.equal(unet_out(sd_model, inputs), base_unet)
    assert torch.equal(te_out(sd_model), base_te)


def test_merge_then_unmerge_is_bit_exact(sd_model, inputs):
    hashes = state_hashes(sd_model)
    net = LoraNetwork.create(sd_model, rank=8, alpha=8.0, conv_rank=4)
    randomize_up(net)
    merged = merge(sd_model, net.kohya_state_dict(torch.float16), 1.3)
    assert state_hashes(sd_model) != hashes
    merged.unmerge()
    assert state_hashes(sd_model) == hashes


def test_fresh_network_is_a_no_op_and_kohya_init(sd_model, inputs):
    """kohya init: up = 0 (the untrained LoRA changes nothing), down ~ kaiming-uniform(a=√5)."""
    net = LoraNetwork.create(sd_model, rank=4, alpha=1.0)
    base = unet_out(sd_model, inputs)
    with net.injected():
        assert torch.equal(unet_out(sd_model, inputs), base)
    lora = net.loras[0]
    fan_in = lora.lora_down.weight.shape[1]
    bound = 1.0 / fan_in**0.5  # kaiming_uniform with a=√5 → U(-1/√fan_in, 1/√fan_in)
    assert lora.lora_down.weight.abs().max() <= bound
    assert lora.lora_down.weight.abs().max() > 0.5 * bound
    assert not lora.lora_up.weight.any()
    assert lora.scale == pytest.approx(1.0 / 4)


def test_dropouts_act_only_in_training_mode(sd_model, inputs):
    """Module dropout 1.0 skips every module while training; in eval mode nothing is dropped.
    Rank dropout rescales the kept ranks, so on average it leaves the delta where it was."""
    base = unet_out(sd_model, inputs)
    net = LoraNetwork.create(sd_model, rank=4, alpha=4.0, train_text_encoder=False, module_dropout=1.0)
    randomize_up(net)
    with net.injected():
        net.eval()
        full = unet_out(sd_model, inputs)
        net.train()
        assert torch.equal(unet_out(sd_model, inputs), base)
    assert (full - base).abs().max() > 1e-2

    lora = LoraNetwork.create(sd_model, rank=8, alpha=8.0, train_unet=False, rank_dropout=0.5).loras[0]
    lora.lora_up.weight.data.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4096, lora.target.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lora.eval()
        exact = lora(x)
        lora.train()
        torch.manual_seed(0)
        dropped = lora(x)
    all_dropped = (dropped == 0).all(dim=1).float().mean()
    assert 0 < all_dropped < 0.02  # a row loses all 8 ranks with p = 0.5**8 ≈ 0.004
    assert not torch.equal(dropped, exact)
    ratio = (dropped * exact).sum() / (exact * exact).sum()
    assert 0.9 < ratio < 1.1  # unbiased: kept ranks are scaled by 1/(1-p)
