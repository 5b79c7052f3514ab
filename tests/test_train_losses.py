"""Every loss option equals kohya sd-scripts' formula on the same tensors (issue 15, Deliver 2).

The reference below is written from kohya's code (library/train_util.py
`get_noise_noisy_latents_and_timesteps`, `get_huber_threshold_if_needed`, `conditional_loss`;
library/custom_train_functions.py; the order of train_network.py `post_process_loss`), step by
step the way kohya takes them: the schedule goes through betas and diffusers' DDPMScheduler
arithmetic, its SNR table is taken *before* the zero-terminal-SNR fix, and each random draw is
made in kohya's order. Only the source of randomness differs: kohya's global generators and
Python's `random` become one generator, drawn in the same sequence (`KohyaRandom`), so both sides
see identical noise. The UNet is the tiny real SD1 model; its prediction on the reference's own
noisy latents goes into the reference loss.
"""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest

from lora_forge.train.config import TrainConfig
from tests.train_support import FAST, squares

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOLERANCE = 2e-6
BATCH = 4


# ----------------------------------------------------------------------------- kohya, restated
class KohyaRandom:
    """kohya's random calls, served from one generator in the order kohya makes them."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int):
        return torch.randn(shape, generator=self.gen, dtype=torch.float32)

    def rand1(self):
        return torch.rand(1, generator=self.gen)

    def python_random(self) -> float:
        return float(torch.rand(1, generator=self.gen))

    def randint(self, low: int, high: int, n: int):
        return torch.randint(low, high, (n,), generator=self.gen)


def kohya_scheduler(alphas_cumprod, zero_terminal_snr: bool) -> SimpleNamespace:
    """DDPMScheduler state as kohya leaves it: betas from ᾱ, `all_snr` from the unfixed schedule
    (prepare_scheduler_for_custom_training runs first), then the optional ZTSNR beta fix."""
    ac = alphas_cumprod.float()
    betas = 1 - torch.cat([ac[:1], ac[1:] / ac[:-1]])
    sched = SimpleNamespace(betas=betas, alphas_cumprod=torch.cumprod(1 - betas, 0), num_train_timesteps=len(ac))
    alpha, sigma = sched.alphas_cumprod.sqrt(), (1 - sched.alphas_cumprod).sqrt()
    sched.all_snr = (alpha / sigma) ** 2
    if zero_terminal_snr:
        abar_sqrt = torch.cumprod(1 - betas, 0).sqrt()
        first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
        abar_sqrt -= last
        abar_sqrt *= first / (first - last)
        abar = abar_sqrt**2
        fixed = 1 - torch.cat([abar[0:1], abar[1:] / abar[:-1]])
        sched.betas = fixed
        sched.alphas_cumprod = torch.cumprod(1 - fixed, 0)
    return sched


def diffusers_add_noise(sched, x, noise, t):
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    return a**0.5 * x + (1 - a) ** 0.5 * noise


def diffusers_velocity(sched, x, noise, t):
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    return a**0.5 * noise - (1 - a) ** 0.5 * x


def kohya_pyramid(noise, rnd: KohyaRandom, iterations: int, discount: float):
    b, c, w, h = noise.shape
    upsample = torch.nn.Upsample(size=(w, h), mode="bilinear")
    for i in range(iterations):
        r = rnd.python_random() * 2 + 2
        wn, hn = max(1, int(w / (r**i))), max(1, int(h / (r**i)))
        noise += upsample(rnd.randn(b, c, wn, hn)) * discount**i
        if wn == 1 or hn == 1:
            break
    return noise / noise.std()


def kohya_noise(args, sched, latents, rnd: KohyaRandom):
    noise = rnd.randn(*latents.shape)
    if args.noise_offset:
        offset = rnd.rand1() * args.noise_offset if args.noise_offset_random_strength else args.noise_offset
        if args.adaptive_noise_scale:
            offset = offset + args.adaptive_noise_scale * torch.abs(latents.mean(dim=(2, 3), keepdim=True))
            offset = torch.clamp(offset, 0.0, None)
        noise = noise + offset * rnd.randn(latents.shape[0], latents.shape[1], 1, 1)
    if args.multires_noise_iterations:
        noise = kohya_pyramid(noise, rnd, args.multires_noise_iterations, args.multires_noise_discount)
    t = rnd.randint(args.min_timestep, args.max_timestep, latents.shape[0]).long()
    if args.ip_noise_gamma:
        strength = rnd.rand1() * args.ip_noise_gamma if args.ip_noise_gamma_random_strength else args.ip_noise_gamma
        noisy = diffusers_add_noise(sched, latents, noise + strength * rnd.randn(*latents.shape), t)
    else:
        noisy = diffusers_add_noise(sched, latents, noise, t)
    return noise, noisy, t


def kohya_huber_c(args, t, sched):
    if args.loss_type not in ("huber", "smooth_l1"):
        return None
    if args.huber_schedule == "exponential":
        alpha = -math.log(args.huber_c) / sched.num_train_timesteps
        return torch.exp(-alpha * t) * args.huber_scale
    if args.huber_schedule == "snr":
        a = torch.index_select(sched.alphas_cumprod, 0, t)
        sigmas = ((1.0 - a) / a) ** 0.5
        return (1 - args.huber_c) / (1 + sigmas) ** 2 + args.huber_c
    return torch.full((t.shape[0],), args.huber_c * args.huber_scale)


def kohya_elementwise(pred, target, loss_type, c):
    if loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    c = c.view(-1, 1, 1, 1)
    if loss_type == "huber":
        return 2 * c * (torch.sqrt((pred - target) ** 2 + c**2) - c)
    return 2 * (torch.sqrt((pred - target) ** 2 + c**2) - c)


def kohya_post_process(loss, t, sched, args, v: bool):
    snr = torch.stack([sched.all_snr[i] for i in t])
    capped = torch.minimum(snr, torch.ones_like(snr) * 1000)
    if args.min_snr_gamma:
        clipped = torch.minimum(snr, torch.full_like(snr, args.min_snr_gamma))
        loss = loss * (clipped / (snr + 1) if v else clipped / snr)
    if args.scale_v_pred_loss_like_noise_pred:
        loss = loss * (capped / (capped + 1))
    if args.v_pred_like_loss:
        loss = loss + loss / (capped / (capped + 1)) * args.v_pred_like_loss
    if args.debiased_estimation_loss:
        loss = (1 / (capped + 1) if v else 1 / torch.sqrt(capped)) * loss
    return loss


def kohya_loss(predict, x0, alphas_cumprod, v, args, seed):
    sched = kohya_scheduler(alphas_cumprod, args.zero_terminal_snr)
    noise, noisy, t = kohya_noise(args, sched, x0, KohyaRandom(seed))
    pred = predict(noisy, t)
    target = diffusers_velocity(sched, x0, noise, t) if v else noise
    loss = kohya_elementwise(pred.float(), target.float(), args.loss_type, kohya_huber_c(args, t, sched))
    return kohya_post_process(loss.mean(dim=(1, 2, 3)), t, sched, args, v)


# ----------------------------------------------------------------------------- the cases
OPTIONS = {
    "plain": {"min_snr_gamma": 0},
    "min_snr_gamma": {"min_snr_gamma": 5},
    "scale_v_pred_loss_like_noise_pred": {"min_snr_gamma": 0, "scale_v_pred_loss_like_noise_pred": True},
    "v_pred_like_loss": {"min_snr_gamma": 0, "v_pred_like_loss": 0.2},
    "debiased_estimation_loss": {"min_snr_gamma": 0, "debiased_estimation_loss": True},
    "noise_offset": {"min_snr_gamma": 0, "noise_offset": 0.1},
    "noise_offset_random_adaptive": {
        "min_snr_gamma": 0,
        "noise_offset": 0.05,
        "noise_offset_random_strength": True,
        "adaptive_noise_scale": 0.02,
    },
    "multires_noise": {"min_snr_gamma": 0, "multires_noise_iterations": 6, "multires_noise_discount": 0.3},
    "ip_noise_gamma": {"min_snr_gamma": 0, "ip_noise_gamma": 0.1},
    "ip_noise_gamma_random_strength": {
        "min_snr_gamma": 0,
        "ip_noise_gamma": 0.1,
        "ip_noise_gamma_random_strength": True,
    },
    "huber_snr": {"min_snr_gamma": 0, "loss_type": "huber", "huber_schedule": "snr", "huber_c": 0.1},
    "huber_exponential": {
        "min_snr_gamma": 0,
        "loss_type": "huber",
        "huber_schedule": "exponential",
        "huber_scale": 1.5,
    },
    "huber_constant": {"min_snr_gamma": 0, "loss_type": "huber", "huber_schedule": "constant", "huber_c": 0.3},
    "smooth_l1": {"min_snr_gamma": 0, "loss_type": "smooth_l1", "huber_schedule": "snr"},
    "l1": {"min_snr_gamma": 0, "loss_type": "l1"},
    "late_timesteps": {"min_snr_gamma": 5, "min_timestep": 990, "debiased_estimation_loss": True},
    "combined": {
        "min_snr_gamma": 5,
        "debiased_estimation_loss": True,
        "noise_offset": 0.05,
        "multires_noise_iterations": 4,
        "multires_noise_discount": 0.5,
        "ip_noise_gamma": 0.1,
        "loss_type": "huber",
        "huber_schedule": "snr",
    },
}
V_ONLY = {"scale_v_pred_loss_like_noise_pred"}
EPS_ONLY = {"v_pred_like_loss"}


def _cases():
    for pred in ("eps", "v"):
        for ztsnr in (False, True):
            for name in OPTIONS:
                if (name in V_ONLY and pred == "eps") or (name in EPS_ONLY and pred == "v"):
                    continue
                yield pytest.param(pred, ztsnr, name, id=f"{pred}-{'ztsnr' if ztsnr else 'plain-schedule'}-{name}")


def _combined_with_v_weight(pred: str) -> dict:
    extra = {"scale_v_pred_loss_like_noise_pred": True} if pred == "v" else {"v_pred_like_loss": 0.1}
    return {**OPTIONS["combined"], **extra}


@pytest.fixture(scope="module")
def sd1(tiny_host):
    return tiny_host.sd_model()


def _inputs(seed: int = 7):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 4, 8, 8, generator=gen), torch.randn(BATCH, 77, 32, generator=gen)


@pytest.mark.parametrize(("pred", "ztsnr", "name"), list(_cases()))
def test_loss_equals_kohyas_formula_on_the_same_tensors(sd1, pred, ztsnr, name):
    from lora_forge.model.schedule import schedule_from_model
    from lora_forge.train.losses import draw_noise, loss_per_sample

    options = _combined_with_v_weight(pred) if name == "combined" else OPTIONS[name]
    config = TrainConfig.from_dict({**options, "v_parameterization": str(pred == "v"),
                                    "zero_terminal_snr": str(ztsnr)}).validate()  # fmt: skip
    schedule = schedule_from_model(sd1, "cpu", v=pred == "v", zero_terminal_snr=ztsnr)
    unet = sd1.model.diffusion_model
    x0, cond = _inputs()
    seed = 1000 + len(name)
    with torch.no_grad():
        drawn = draw_noise(x0, torch.Generator().manual_seed(seed), schedule, config)
        ours = loss_per_sample(unet(drawn.noisy, timesteps=drawn.t, context=cond), x0, drawn, schedule, config)
        args = SimpleNamespace(**{**config.to_dict(), "zero_terminal_snr": ztsnr})
        ref = kohya_loss(
            lambda x, t: unet(x, timesteps=t, context=cond), x0, sd1.alphas_cumprod.float(), pred == "v", args, seed
        )
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=TOLERANCE, atol=TOLERANCE)
    assert ours.std() > 0  # four samples, four different timesteps: the weights really vary


def test_the_training_loss_is_the_mean_of_those_per_sample_losses(sd1):
    from lora_forge.model.schedule import schedule_from_model
    from lora_forge.train.loop import diffusion_loss
    from lora_forge.train.session import precision_for

    config = TrainConfig.from_dict({**_combined_with_v_weight("v"), "mixed_precision": "no"})
    schedule = schedule_from_model(sd1, "cpu", v=True, zero_terminal_snr=True)
    unet = sd1.model.diffusion_model
    x0, cond = _inputs()
    prec = precision_for(config, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        ours = diffusion_loss(unet, x0, lambda: cond, schedule, config, prec, torch.Generator().manual_seed(3))
        args = SimpleNamespace(**{**config.to_dict(), "zero_terminal_snr": True})
        ref = kohya_loss(lambda x, t: unet(x, timesteps=t, context=cond), x0, sd1.alphas_cumprod.float(), True, args, 3)
        ref = ref.mean()
    assert abs(float(ours) - float(ref)) <= TOLERANCE * max(1.0, abs(float(ref)))


def test_zero_terminal_snr_schedule_is_kohyas_and_the_webuis(sd1):
    """ᾱ after the fix equals kohya's beta route, and the WebUI's own rescale except the last
    entry, which the WebUI keeps at 4.9e-8 for its samplers and training needs at exactly 0."""
    from lora_forge.model.schedule import rescale_zero_terminal_snr, schedule_from_model

    ac = sd1.alphas_cumprod.float()
    ours = rescale_zero_terminal_snr(ac)
    torch.testing.assert_close(ours, kohya_scheduler(ac, True).alphas_cumprod, rtol=1e-5, atol=1e-7)
    webui = ac.sqrt() - ac.sqrt()[-1]
    webui = (webui * (ac.sqrt()[0] / (ac.sqrt()[0] - ac.sqrt()[-1]))) ** 2
    torch.testing.assert_close(ours[:-1], webui[:-1], rtol=1e-5, atol=1e-7)
    assert float(ours[-1]) == 0.0 and float(ours[0]) == pytest.approx(float(ac[0]), rel=1e-6)
    schedule = schedule_from_model(sd1, "cpu", v=True, zero_terminal_snr=True)
    t = torch.tensor([999, 999])
    # the last step is pure noise, and the v target there is -x0
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(schedule.add_noise(x0, noise, t), noise)
    torch.testing.assert_close(schedule.target(x0, noise, t), -x0)
    # kohya's SNR weights read the unfixed schedule: finite even where the fixed SNR is 0
    assert torch.isfinite(schedule.min_snr_weight(t, 5.0)).all()


# ----------------------------------------------------------------------------- choosing ε / v and ZTSNR
def _checkpoint_with(tmp_path, keys: dict):
    from safetensors.torch import save_file

    path = tmp_path / "noob-vpred.safetensors"
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4), **keys}, str(path))
    return SimpleNamespace(filename=str(path))


def test_auto_follows_what_the_host_renders_and_warns_about_the_files_markers(sd1, tmp_path, monkeypatch):
    from lora_forge.model.prediction import checkpoint_markers, resolve

    markers = {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}
    monkeypatch.setattr(sd1, "sd_checkpoint_info", _checkpoint_with(tmp_path, markers), raising=False)
    assert checkpoint_markers(sd1) == {"v_pred", "ztsnr"}
    # the WebUI 1.10.1 ignores the markers: ε and no ZTSNR unless a yaml / the setting say otherwise
    plain = resolve(sd1, "auto", "auto", host_ztsnr=False)
    assert (plain.v, plain.zero_terminal_snr) == (False, False)
    assert any("marked v-prediction" in w for w in plain.warnings)
    assert any("Zero Terminal SNR" in w for w in plain.warnings)
    monkeypatch.setattr(sd1, "parameterization", "v")  # what extend_sdxl sets for a VScaling yaml
    webui = resolve(sd1, "auto", "auto", host_ztsnr=True)
    assert (webui.v, webui.zero_terminal_snr, webui.warnings) == (True, True, ())
    by_hand = resolve(sd1, "false", "False", host_ztsnr=True)
    assert (by_hand.v, by_hand.zero_terminal_snr) == (False, False)
    assert any("renders as v-prediction" in w for w in by_hand.warnings)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"v_parameterization": "yes please"}, "v_parameterization"),
        ({"zero_terminal_snr": "maybe"}, "zero_terminal_snr"),
        (
            {"scale_v_pred_loss_like_noise_pred": True, "v_parameterization": "false"},
            "scale_v_pred_loss_like_noise_pred",
        ),
        ({"v_pred_like_loss": 0.1, "v_parameterization": "true"}, "v_pred_like_loss"),
        ({"adaptive_noise_scale": 0.01}, "adaptive_noise_scale"),
        ({"loss_type": "mse"}, "loss_type"),
        ({"huber_schedule": "cosine"}, "huber_schedule"),
        ({"huber_c": 0}, "huber_c"),
        ({"multires_noise_iterations": 6, "multires_noise_discount": 0}, "multires_noise_discount"),
        ({"ip_noise_gamma": -0.1}, "ip_noise_gamma"),
    ],
)
def test_bad_loss_options_are_rejected_naming_the_key(changes, key):
    from lora_forge.errors import ForgeError

    with pytest.raises(ForgeError, match=key):
        TrainConfig.from_dict(changes).validate()


def test_a_kohya_config_brings_its_loss_options_over(tmp_path):
    from lora_forge.train.importer import import_config

    path = tmp_path / "kohya.toml"
    path.write_text(
        "v_parameterization = true\nzero_terminal_snr = true\nscale_v_pred_loss_like_noise_pred = true\n"
        'debiased_estimation_loss = true\nip_noise_gamma = 0.1\nloss_type = "huber"\nhuber_schedule = "snr"\n'
        "huber_c = 0.1\nmultires_noise_iterations = 8\nmultires_noise_discount = 0.3\n",
        encoding="utf-8",
    )
    values, warnings = import_config(path)
    config = TrainConfig.from_dict(values).validate()
    assert (config.v_parameterization, config.zero_terminal_snr) == ("true", "true")
    assert config.scale_v_pred_loss_like_noise_pred and config.debiased_estimation_loss
    assert (config.loss_type, config.huber_c, config.multires_noise_iterations) == ("huber", 0.1, 8)
    assert not warnings
    # kohya_ss GUI files say false for both everywhere and hold both noise kinds: false stays auto,
    # and only the kind noise_offset_type names is used
    gui = tmp_path / "kohya_ss.json"
    gui.write_text(
        '{"v_parameterization": false, "zero_terminal_snr": false, "noise_offset_type": "Multires", "huber_c": 0.1, '
        '"v_pred_like_loss": 0, "scale_v_pred_loss_like_noise_pred": false, "adaptive_noise_scale": 0, '
        '"noise_offset": 0.05, "multires_noise_iterations": 6, "multires_noise_discount": 0.4}',
        encoding="utf-8",
    )
    values, warnings = import_config(gui)
    config = TrainConfig.from_dict(values).validate()
    assert (config.v_parameterization, config.zero_terminal_snr, config.noise_offset) == ("auto", "auto", 0.0)
    assert (config.multires_noise_iterations, config.multires_noise_discount) == (6, 0.4)
    off = tmp_path / "kohya_ss_off.json"  # what kohya_ss's own SDXL presets hold when multires is off
    off.write_text('{"noise_offset": 0.0357, "adaptive_noise_scale": 0.00357, '
                   '"multires_noise_iterations": 0, "multires_noise_discount": 0}', encoding="utf-8")  # fmt: skip
    config = TrainConfig.from_dict(import_config(off)[0]).validate()
    assert (config.noise_offset, config.adaptive_noise_scale, config.multires_noise_iterations) == (0.0357, 0.00357, 0)
    off.write_text('{"noise_offset": 0, "adaptive_noise_scale": 0.00357}', encoding="utf-8")  # kohya: a no-op
    values, warnings = import_config(off)
    assert TrainConfig.from_dict(values).validate().adaptive_noise_scale == 0 and "adaptive_noise_scale" in warnings[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return squares(tmp_path_factory.mktemp("loss-data"), ("red", "blue"), seed=1, caption="zkw, {name} square")


def test_a_v_pred_ztsnr_run_trains_and_marks_its_file_as_kohya_does(tiny_host, dataset, tmp_path):
    from lora_forge.lora.fileformat import read_metadata
    from lora_forge.train.loop import prepare, train

    config = TrainConfig.from_dict(
        {
            **FAST,
            "max_train_steps": 3,
            "network_dim": 4,
            "network_alpha": 4,
            "v_parameterization": "true",
            "zero_terminal_snr": "true",
            "scale_v_pred_loss_like_noise_pred": True,
            "multires_noise_iterations": 6,
            "ip_noise_gamma": 0.1,
            "loss_type": "huber",
        }
    )
    events = []
    result = train(tiny_host, prepare(config, dataset), tmp_path, progress=events.append)
    assert len(result.losses) == 3 and all(math.isfinite(x) for x in result.losses)
    assert any(e.data.get("prediction", "").startswith("v-prediction (from v_parameterization)") for e in events)
    assert any("renders as ε-prediction" in e.data.get("warning", "") for e in events)
    meta = read_metadata(result.final_file)
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_base_model_version"] == "sd_v1_v"
    assert (meta["ss_v_parameterization"], meta["ss_zero_terminal_snr"]) == ("True", "True")
    with pytest.raises(Exception, match="scale_v_pred_loss_like_noise_pred needs v-prediction"):
        train(tiny_host, prepare(config.replace(v_parameterization="auto"), dataset), tmp_path / "eps")


# ----------------------------------------------------------------------------- SDXL
VSCALING = "sgm.modules.diffusionmodules.denoiser_scaling.VScaling"


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_files):
    """The tiny SDXL built from a NoobAI-style v-prediction yaml (VScaling denoiser), with what the
    WebUI's extend_sdxl sets on it (host/sdxl_object.py): parameterization, fp32 LegacyDDPM ᾱ."""
    from safetensors.torch import load_file

    from lora_forge.host.ldm_build import instantiate, load_config
    from lora_forge.host.sdxl_object import extend_sdxl

    config = load_config(tiny_sdxl_files.config)
    config.model.params.denoiser_config.params.scaling_config.target = VSCALING
    model = instantiate(config, on_meta=False)
    model.load_state_dict(load_file(str(tiny_sdxl_files.checkpoint)), strict=True)
    extend_sdxl(model, "cpu")
    assert model.parameterization == "v"
    return model.eval()


@pytest.mark.parametrize("name", ["plain", "min_snr_gamma", "combined"])
@pytest.mark.parametrize("ztsnr", [False, True], ids=["plain-schedule", "ztsnr"])
@pytest.mark.parametrize("pred", ["eps", "v"])
def test_sdxl_loss_equals_kohyas_formula_on_the_same_tensors(sdxl, pred, ztsnr, name):
    from lora_forge.model.schedule import schedule_from_model
    from lora_forge.train.losses import draw_noise, loss_per_sample

    options = _combined_with_v_weight(pred) if name == "combined" else OPTIONS[name]
    config = TrainConfig.from_dict({**options, "v_parameterization": "auto" if pred == "v" else "false"})
    schedule = schedule_from_model(sdxl, "cpu", v=None if pred == "v" else False, zero_terminal_snr=ztsnr)
    assert schedule.parameterization == pred  # "auto" read the VScaling model as v
    gen = torch.Generator().manual_seed(11)
    x0 = torch.randn(BATCH, 4, 8, 8, generator=gen)
    cond = {"crossattn": torch.randn(BATCH, 77, 80, generator=gen), "vector": torch.randn(BATCH, 224, generator=gen)}

    def predict(x, t):  # what the WebUI's sd_models_xl.apply_model runs
        return sdxl.model(x, t, cond)

    with torch.no_grad():
        drawn = draw_noise(x0, torch.Generator().manual_seed(5), schedule, config)
        ours = loss_per_sample(predict(drawn.noisy, drawn.t), x0, drawn, schedule, config)
        args = SimpleNamespace(**{**config.to_dict(), "zero_terminal_snr": ztsnr})
        ref = kohya_loss(predict, x0, sdxl.alphas_cumprod, pred == "v", args, 5)
    torch.testing.assert_close(ours, ref, rtol=TOLERANCE, atol=TOLERANCE)


# ----------------------------------------------------------------------------- inside the (stand-in) WebUI
@pytest.fixture
def webui_zero_terminal_snr(tmp_path, tiny_host):
    """The stand-in WebUI on the tiny model, with Settings → Noise schedule = Zero Terminal SNR."""
    from tests.test_webui_train import start_stub

    start_stub(tmp_path / "webui", tiny_host.sd_model())
    from modules import shared

    shared.opts.data["sd_noise_schedule"] = "Zero Terminal SNR"
    yield
    shared.opts.data.pop("sd_noise_schedule", None)
    shared.sd_model = None


def test_in_the_webui_zero_terminal_snr_follows_its_noise_schedule_setting(webui_zero_terminal_snr, dataset):
    from lora_forge.app.train import Runs
    from lora_forge.host.webui import host
    from lora_forge.lora.fileformat import read_metadata

    assert host().zero_terminal_snr_sampling()
    runs = Runs()
    changes = {"resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128, "num_repeats": 1,
               "max_train_steps": 2, "network_dim": 4, "network_alpha": 2.0, "sample_every_n_steps": 0,
               "cache_latents_to_disk": False, "mixed_precision": "no", "v_parameterization": "true"}  # fmt: skip
    status = runs.wait(runs.start(host(), str(dataset), "custom", changes).id, timeout=300)
    assert status.state == "finished", status.error
    meta = read_metadata(status.files[-1])
    assert (meta["ss_zero_terminal_snr"], meta["modelspec.prediction_type"]) == ("True", "v")
    assert any("renders as ε-prediction" in w for w in status.warnings)  # v by hand on an ε model


def test_a_noobai_style_sdxl_file_trains_v_pred_and_warns_about_its_ztsnr_marker(tiny_sdxl_files, dataset, tmp_path):
    """A v-pred SDXL file carrying NoobAI's `v_pred` / `ztsnr` keys, with its v-pred yaml beside it, on the
    standalone host: "auto" trains what the host renders (v), says the ZTSNR marker is not followed, and
    the file is marked as kohya marks it."""
    import shutil

    from safetensors.torch import load_file, save_file

    from lora_forge.host.standalone import StandaloneHost
    from lora_forge.lora.fileformat import read_metadata
    from lora_forge.train.loop import prepare, train

    folder = tmp_path / "model"
    shutil.copytree(tiny_sdxl_files.checkpoint.parent, folder)
    ckpt = folder / tiny_sdxl_files.checkpoint.name
    state = load_file(str(ckpt))
    save_file({**state, "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, str(ckpt))
    yaml = ckpt.with_suffix(".yaml")  # the v-pred yaml users put beside NoobAI v-pred (VScaling)
    yaml.write_text(yaml.read_text(encoding="utf-8").replace(VSCALING.replace("VScaling", "EpsScaling"), VSCALING),
                    encoding="utf-8")  # fmt: skip
    assert VSCALING in yaml.read_text(encoding="utf-8")
    host = StandaloneHost(ckpt, lora_dir=tmp_path / "Lora")
    config = TrainConfig.from_dict(
        {"resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128, "sample_every_n_steps": 0,
         "cache_latents_to_disk": False, "mixed_precision": "no", "num_repeats": 1, "max_train_steps": 2,
         "network_dim": 4, "network_alpha": 4, "min_snr_gamma": 5, "debiased_estimation_loss": True}
    )  # fmt: skip
    events = []
    result = train(host, prepare(config, dataset), tmp_path / "out", progress=events.append)
    assert all(math.isfinite(x) for x in result.losses)
    prediction = next(e.data["prediction"] for e in events if "prediction" in e.data)
    assert prediction.startswith("v-prediction (from the loaded model)") and "zero-terminal SNR off" in prediction
    assert any("marked zero-terminal SNR" in e.data.get("warning", "") for e in events)
    meta = read_metadata(result.final_file)
    assert (meta["ss_base_model_version"], meta["modelspec.prediction_type"]) == ("sdxl_base_v1-0", "v")
    assert meta["ss_zero_terminal_snr"] == "False"


def _noobai_files(tiny_sdxl_files, folder, v_yaml: bool):
    """A copy of the tiny SDXL (optionally with its v-pred yaml) and the same file with NoobAI's `v_pred` /
    `ztsnr` keys. The WebUI loads the marked file with strict=False; the stand-in's builder loads strictly
    to prove the layout, so it gets the plain copy and `sd_checkpoint_info` names the marked one."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_sdxl_files.checkpoint.parent, folder)
    ckpt = folder / tiny_sdxl_files.checkpoint.name
    marked = folder / "noobai-vpred.safetensors"
    save_file({**load_file(str(ckpt)), "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, str(marked))
    yaml = ckpt.with_suffix(".yaml")
    if v_yaml:
        eps = VSCALING.replace("VScaling", "EpsScaling")
        yaml.write_text(yaml.read_text(encoding="utf-8").replace(eps, VSCALING), encoding="utf-8")
    return SimpleNamespace(checkpoint=ckpt, config=yaml), marked


@pytest.mark.parametrize("v_yaml", [True, False], ids=["v-pred-yaml-and-ztsnr-setting", "no-yaml-default-schedule"])
def test_in_the_webui_a_noobai_file_trains_as_the_webui_renders_it(tiny_sdxl_files, dataset, tmp_path, v_yaml):
    """The stand-in WebUI with a NoobAI-style SDXL loaded: with the v-pred yaml and Settings → Noise schedule
    = Zero Terminal SNR (the setup its users follow) the run trains v + ZTSNR with no warning; without them it
    trains ε as the WebUI renders, and says what the file's markers ask for."""
    from lora_forge.app.train import Runs
    from lora_forge.lora.fileformat import read_metadata
    from tests.sdxl_support import webui_sdxl_model
    from tests.test_webui_train import host, start_stub

    files, marked = _noobai_files(tiny_sdxl_files, tmp_path / "model", v_yaml)
    model = webui_sdxl_model(files)
    model.sd_checkpoint_info = SimpleNamespace(filename=str(marked))  # what load_model_weights sets
    start_stub(tmp_path / "webui", model)
    from modules import shared

    shared.opts.data["sd_noise_schedule"] = "Zero Terminal SNR" if v_yaml else "Default"
    try:
        runs = Runs()
        changes = {"resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128, "num_repeats": 1,
                   "max_train_steps": 2, "network_dim": 4, "network_alpha": 2.0, "conv_dim": 2, "conv_alpha": 2,
                   "sample_every_n_steps": 0, "cache_latents_to_disk": False, "mixed_precision": "no"}  # fmt: skip
        status = runs.wait(runs.start(host(), str(dataset), "custom", changes).id, timeout=600)
    finally:
        shared.opts.data.pop("sd_noise_schedule", None)
        networks = sys.modules.get("networks")
        if networks is not None:
            networks.load_networks([])
        shared.sd_model = None
    assert status.state == "finished", status.error
    meta = read_metadata(status.files[-1])
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert (meta["modelspec.prediction_type"], meta["ss_zero_terminal_snr"]) == (
        ("v", "True") if v_yaml else ("epsilon", "False"))  # fmt: skip
    marker_warnings = [w for w in status.warnings if "checkpoint is marked" in w]
    assert len(marker_warnings) == (0 if v_yaml else 2), status.warnings
