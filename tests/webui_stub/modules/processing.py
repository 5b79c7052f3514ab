"""modules/processing.py: the txt2img job object and process_images, rendering for real.

Field names and defaults follow StableDiffusionProcessing / StableDiffusionProcessingTxt2Img of
1.10.1 (the ones an extension passes); sampling is lora_forge.host.sampling over the loaded
ldm model, so the images are the tiny model's real output.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from modules import devices, extra_networks, images, shared


class InterruptedError_(Exception):
    """Raised inside sampling when shared.state.interrupted is set (sd_samplers_common.InterruptedException)."""


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list[str] = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict[str, Any] = None
    overlay_images: list = None
    eta: float = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float = None
    override_settings: dict[str, Any] = None
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = False

    scripts: Any = field(default=None, init=False)
    script_args: Any = field(default=None, init=False)
    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    iteration: int = field(default=0, init=False)
    prompts: list = field(default=None, init=False)
    negative_prompts: list = field(default=None, init=False)
    seeds: list = field(default=None, init=False)
    extra_network_data: dict = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.comments: dict[str, int] = {}
        self.styles = self.styles or []
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}

    @property
    def sd_model(self) -> Any:  # noqa: F811 - the WebUI's pattern: the argument is accepted and ignored
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value: Any) -> None:
        pass

    def comment(self, text: str) -> None:
        self.comments[text] = 1

    def close(self) -> None:
        pass


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0
    hr_upscaler: str = None
    hr_second_pass_steps: int = 0
    hr_sampler_name: str = None
    hr_scheduler: str = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str = None


class Processed:
    def __init__(
        self,
        p: StableDiffusionProcessing,
        images_list: list[Any],
        seed: int = -1,
        info: str = "",
        all_seeds: list[int] | None = None,
        index_of_first_image: int = 0,
        infotexts: list[str] | None = None,
        comments: str = "",
    ) -> None:
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.info = info
        self.comments = "".join(f"{c}\n" for c in p.comments)
        self.width, self.height = p.width, p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.index_of_first_image = index_of_first_image
        self.all_prompts = p.all_prompts or [p.prompt]
        self.all_seeds = all_seeds or p.all_seeds or [seed]
        self.infotexts = infotexts or [info] * len(images_list)


def get_fixed_seed(seed: Any) -> Any:
    if seed == "" or seed is None:
        seed = -1
    elif isinstance(seed, str):
        seed = int(seed)
    if seed == -1:
        return int(random.randrange(4294967294))
    return seed


def fix_seed(p: StableDiffusionProcessing) -> None:
    p.seed = get_fixed_seed(p.seed)


def _infotext(p: StableDiffusionProcessing, prompt: str, seed: int) -> str:
    params = f"Steps: {p.steps}, Sampler: {p.sampler_name}, CFG scale: {p.cfg_scale}, Seed: {seed}"
    return f"{prompt}\nNegative prompt: {p.negative_prompt}\n{params}, Size: {p.width}x{p.height}"


def _sample_batch(
    p: StableDiffusionProcessing, prompts: list[str], negatives: list[str], seeds: list[int]
) -> list[Any]:
    import torch

    from lora_forge.host import sampling

    model = shared.sd_model
    if p.sampler_name not in sampling.SAMPLERS:
        raise ValueError(f"bad sampler name: {p.sampler_name}")
    from modules.prompt_parser import SdConditioning

    # as 1.10.1's setup_conds, under devices.autocast() as process_images_inner: the render size
    # travels with the prompts (SDXL conditions on it)
    with devices.autocast():
        cond = model.get_learned_conditioning(SdConditioning(prompts, width=p.width, height=p.height))
        uncond = model.get_learned_conditioning(
            SdConditioning(negatives, is_negative_prompt=True, width=p.width, height=p.height)
        )
    timesteps, sigmas = sampling.schedule(model.alphas_cumprod_original, p.steps, p.sampler_name)
    noise, generators = sampling.seeded_noise(seeds, (4, p.height // 8, p.width // 8))
    denoise = sampling.make_denoiser(model, cond, uncond, p.cfg_scale, devices.dtype_unet)
    shared.state.sampling_steps = p.steps

    def on_step(step: int) -> None:
        shared.state.sampling_step = step
        if shared.state.interrupted or shared.state.skipped:
            raise InterruptedError_

    with devices.autocast():
        latent = sampling.sample(denoise, noise.to(devices.device), generators, timesteps, sigmas, p.sampler_name,
                                 on_step)  # fmt: skip
    devices.test_for_nans(latent, "unet")  # as 1.10.1's process_images / decode_latent_batch do
    pixels = model.decode_first_stage(latent.float())
    for sample in pixels:
        devices.test_for_nans(sample, "vae")
    arr = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to("cpu", dtype=torch.uint8)
    from PIL import Image

    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arr]


def process_images(p: StableDiffusionProcessing) -> Processed:
    import torch

    assert p.prompt is not None
    seed = get_fixed_seed(p.seed)
    count = p.batch_size * p.n_iter
    p.all_prompts = p.prompt if isinstance(p.prompt, list) else [p.prompt] * count
    p.all_negative_prompts = p.negative_prompt if isinstance(p.negative_prompt, list) else [p.negative_prompt] * count
    p.all_seeds = seed if isinstance(seed, list) else [int(seed) + x for x in range(count)]
    if shared.state.job_count == -1:
        shared.state.job_count = p.n_iter
    output, infotexts = [], []
    with torch.no_grad():
        for n in range(p.n_iter):
            p.iteration = n
            if shared.state.skipped:
                shared.state.skipped = False
            if shared.state.interrupted or shared.state.stopping_generation:
                break
            sl = slice(n * p.batch_size, (n + 1) * p.batch_size)
            p.prompts, p.negative_prompts, p.seeds = p.all_prompts[sl], p.all_negative_prompts[sl], p.all_seeds[sl]
            if not p.prompts:
                break
            clean, p.extra_network_data = extra_networks.parse_prompts(p.prompts)
            if not p.disable_extra_networks:
                extra_networks.activate(p, p.extra_network_data)
            try:
                batch = _sample_batch(p, clean, p.negative_prompts, p.seeds)
            except InterruptedError_:
                break
            for prompt, s, image in zip(p.prompts, p.seeds, batch, strict=True):
                info = _infotext(p, prompt, s)
                if not p.do_not_save_samples and shared.opts.data.get("samples_save", True):
                    images.save_image(image, p.outpath_samples, "", s, prompt, info=info, p=p)
                output.append(image)
                infotexts.append(info)
            shared.state.nextjob()
    if not p.disable_extra_networks and p.extra_network_data is not None:
        extra_networks.deactivate(p, p.extra_network_data)
    index_of_first_image = 0
    if len(output) > 1 and not p.do_not_save_grid and shared.opts.data.get("return_grid", True):
        output.insert(0, images.image_grid(output, p.batch_size))
        infotexts.insert(0, infotexts[0])
        index_of_first_image = 1
    return Processed(
        p, output, p.all_seeds[0], infotexts[0] if infotexts else "", p.all_seeds, index_of_first_image, infotexts
    )
