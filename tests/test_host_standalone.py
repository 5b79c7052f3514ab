"""The standalone host over the real tiny `ldm` model: loading, determinism, configs, safety."""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from lora_forge.errors import ForgeError
from lora_forge.host.base import LoraRef, RenderRequest


def _req(seed: int, **kw) -> RenderRequest:
    kw.setdefault("steps", 4)
    return RenderRequest(kw.pop("prompt", "a photo of a cat"), seed=seed, width=64, height=64, **kw)


def _px(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _copy_model(tiny_files, dest: Path, with_yaml: bool = True) -> Path:
    """The tiny checkpoint (and its yaml) in a folder of the test's own."""
    dest.mkdir(parents=True, exist_ok=True)
    ckpt = Path(shutil.copy(tiny_files.checkpoint, dest / tiny_files.checkpoint.name))
    if with_yaml:
        shutil.copy(tiny_files.config, ckpt.with_suffix(".yaml"))
    return ckpt


def test_loaded_model_is_the_webui_kind_of_object(tiny_host, tiny_files):
    from ldm.models.diffusion.ddpm import LatentDiffusion
    from transformers import CLIPTextModel

    m = tiny_host.sd_model()
    assert isinstance(m, LatentDiffusion)
    assert isinstance(m.cond_stage_model.transformer, CLIPTextModel)
    assert (m.is_sd1, m.is_sd2, m.is_sdxl, m.parameterization) == (True, False, False, "eps")
    assert m.alphas_cumprod_original.dtype.is_floating_point and m.alphas_cumprod_original.dtype.itemsize == 4
    assert m.alphas_cumprod_original.data_ptr() != m.alphas_cumprod.data_ptr()
    assert m.sd_checkpoint_info.filename == str(tiny_files.checkpoint)
    info = m.sd_checkpoint_info
    assert info.sha256 == hashlib.sha256(tiny_files.checkpoint.read_bytes()).hexdigest()
    assert info.title == f"tiny-sd1.safetensors [{info.sha256[:10]}]" and len(info.hash) == 8
    assert info.metadata["lora_forge_tiny"] == "sd1"
    assert tiny_host.config_path == tiny_files.config  # the yaml beside the checkpoint was used
    tokens = m.cond_stage_model.tokenizer("a photo of a cat")["input_ids"]
    assert tokens == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_weights_come_back_exactly_as_saved(tiny_host, tiny_files):
    from safetensors.torch import load_file

    saved = load_file(str(tiny_files.checkpoint))
    live = tiny_host.sd_model().state_dict()
    assert set(saved) == set(live)
    assert all(np.array_equal(saved[k].numpy(), live[k].cpu().numpy()) for k in saved)


def test_same_seed_same_image_other_seed_different(tiny_host):
    a1, a2, b = (tiny_host.txt2img([_req(s)])[0] for s in (1, 1, 2))
    assert a1.size == (64, 64) and a1.mode == "RGB"
    assert a1.tobytes() == a2.tobytes()
    assert np.abs(_px(a1) - _px(b)).mean() > 5


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_every_sampler_is_deterministic_and_prompt_dependent(tiny_host, sampler):
    a, a2, other = tiny_host.txt2img(
        [_req(3, sampler=sampler), _req(3, sampler=sampler), _req(3, sampler=sampler, prompt="a red car")]
    )
    assert a.tobytes() == a2.tobytes()
    assert a.tobytes() != other.tobytes()


def test_sample_is_the_same_alone_or_in_a_batch(tiny_host):
    events = []
    batch = tiny_host.txt2img([_req(s) for s in (5, 6, 7)], progress=events.append)
    alone = tiny_host.txt2img([_req(6)])[0]
    # same noise, same result; only float rounding of batched kernels may move a value by 1/255
    diff = np.abs(_px(batch[1]) - _px(alone))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.001
    assert [e.step for e in events] == list(range(1, 5))  # three seeds went through as one batch
    assert events[-1].total == 4


def test_bad_requests_are_refused_clearly(tiny_host, tmp_path):
    with pytest.raises(ForgeError, match="multiple of 8"):
        tiny_host.txt2img([RenderRequest("x", width=60, height=64)])
    with pytest.raises(ForgeError, match="no sampler"):
        tiny_host.txt2img([_req(1, sampler="DPM++ 9M Turbo")])
    with pytest.raises(ForgeError, match="not found"):
        tiny_host.txt2img([_req(1, loras=[LoraRef(tmp_path / "missing.safetensors")])])


def test_lora_files_render_with_per_sample_strengths(tiny_host, tmp_path):
    import torch

    from lora_forge.lora import LoraNetwork, minimal_metadata, save_lora

    m = tiny_host.sd_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    net = LoraNetwork.create(m, rank=4, alpha=4)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    path = save_lora(tmp_path / "noisy.safetensors", net.kohya_state_dict(torch.float32), minimal_metadata(net))

    plain = tiny_host.txt2img([_req(9)])[0]
    zero, one, half = tiny_host.txt2img([_req(9, loras=[LoraRef(path, s)]) for s in (0.0, 1.0, 0.5)])
    alone = tiny_host.txt2img([_req(9, loras=[LoraRef(path, 1.0)])])[0]
    assert np.abs(_px(zero) - _px(plain)).max() <= 1  # strength 0 is the model itself
    assert np.abs(_px(one) - _px(plain)).mean() > 2
    assert np.abs(_px(one) - _px(alone)).max() <= 1  # its batch neighbours' strengths do not leak in
    assert np.abs(_px(half) - _px(plain)).mean() > 1 and np.abs(_px(half) - _px(one)).mean() > 1
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the LoRA left the model untouched
    assert tiny_host.txt2img([_req(9)])[0].tobytes() == plain.tobytes()


def test_missing_tokenizer_names_what_is_missing_and_how_to_get_it(tiny_files, tmp_path, monkeypatch):
    from lora_forge.host.standalone import StandaloneHost

    ckpt = _copy_model(tiny_files, tmp_path / "m")
    yaml = ckpt.with_suffix(".yaml")
    text = yaml.read_text(encoding="utf-8")
    yaml.write_text(text.replace(str(tiny_files.clip_folder.resolve()), "openai/clip-vit-large-patch14"), "utf-8")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LORA_FORGE_MODELS", str(tmp_path / "no-models"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ForgeError) as err:
        StandaloneHost(ckpt)
    message = str(err.value)
    assert "openai/clip-vit-large-patch14" in message and "tokenizer" in message
    assert "HF_ENDPOINT=https://hf-mirror.com" in message and "clip_folder" in message

    half = tmp_path / "half-clip"
    shutil.copytree(tiny_files.clip_folder, half)
    (half / "merges.txt").unlink()
    with pytest.raises(ForgeError, match=r"merges\.txt"):
        StandaloneHost(ckpt, clip_folder=half)
    # the tiny yaml names its own CLIP folder; when that folder is gone, the error says so
    moved = _copy_model(tiny_files, tmp_path / "moved")
    gone = moved.with_suffix(".yaml")
    gone.write_text(text.replace(str(tiny_files.clip_folder.resolve()), str(tmp_path / "deleted-clip")), "utf-8")
    with pytest.raises(ForgeError, match="deleted-clip"):
        StandaloneHost(moved)
    # the same files, given by hand, load without weights files for the text model
    assert not list(Path(tiny_files.clip_folder).glob("*.bin")) and not list(tiny_files.clip_folder.glob("*.safet*"))
    host = StandaloneHost(ckpt, clip_folder=tiny_files.clip_folder)
    assert host.sd_model().cond_stage_model.tokenizer("a cat")["input_ids"] == [49406, 320, 2368, 49407]


def test_clip_files_are_found_in_the_huggingface_cache(tiny_files, tmp_path, monkeypatch):
    from lora_forge.host.clip_files import resolve_clip_folder

    cache = tmp_path / "hub"
    snapshot = cache / "models--openai--clip-vit-large-patch14" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_files.clip_folder, snapshot)
    (cache / "models--openai--clip-vit-large-patch14" / "refs").mkdir()
    (cache / "models--openai--clip-vit-large-patch14" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert resolve_clip_folder("openai/clip-vit-large-patch14") == snapshot


def test_malicious_ckpt_is_refused_and_its_payload_never_runs(tmp_path):
    from lora_forge.host.standalone import StandaloneHost

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps({"state_dict": {"x": Payload()}}, protocol=2))
    with pytest.raises(ForgeError, match="unsafe pickle"):
        StandaloneHost(bad)
    assert not marker.exists()


def test_plain_ckpt_with_tensors_loads(tiny_files, tmp_path):
    import torch
    from safetensors.torch import load_file

    from lora_forge.host.standalone import StandaloneHost

    ckpt = tmp_path / "tiny-sd1.ckpt"
    torch.save({"state_dict": load_file(str(tiny_files.checkpoint)), "global_step": 1}, ckpt)
    shutil.copy(tiny_files.config, ckpt.with_suffix(".yaml"))
    host = StandaloneHost(ckpt)
    assert host.sd_model().sd_checkpoint_info.name == "tiny-sd1.ckpt"


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "safetensors"), (b"\xff\xd8\xff\xe0 JFIF not a model", "safetensors")],
)
def test_broken_checkpoints_give_one_clear_error(tmp_path, content, match):
    from lora_forge.host.standalone import StandaloneHost

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(content)
    with pytest.raises(ForgeError, match=match):
        StandaloneHost(bad)


def test_separate_vae_file_is_applied(tiny_host, tiny_files, tmp_path):
    from lora_forge.host.standalone import StandaloneHost
    from lora_forge.host.tiny import write_tiny_vae

    vae = write_tiny_vae(tiny_files, tmp_path / "other.vae.safetensors", seed=7)
    host = StandaloneHost(tiny_files.checkpoint, vae=vae)
    with_vae = host.txt2img([_req(4)])[0]
    base = tiny_host.txt2img([_req(4)])[0]
    assert np.abs(_px(with_vae) - _px(base)).mean() > 5
    assert host.sd_model().loaded_vae_file == str(vae)
    # the UNet and text encoder are the checkpoint's either way
    a, b = host.sd_model().model.state_dict(), tiny_host.sd_model().model.state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_wrong_file_as_vae_is_refused(tiny_files, tmp_path):
    from safetensors.torch import load_file, save_file

    from lora_forge.host.standalone import StandaloneHost

    unet_only = {k: v for k, v in load_file(str(tiny_files.checkpoint)).items() if k.startswith("model.")}
    save_file(unet_only, str(tmp_path / "unet.safetensors"))
    with pytest.raises(ForgeError, match="not a VAE"):
        StandaloneHost(tiny_files.checkpoint, vae=tmp_path / "unet.safetensors")


def test_yaml_beside_the_checkpoint_wins_over_the_builtin_config(tiny_files, tmp_path):
    from lora_forge.host.ldm_build import CONFIG_DIR
    from lora_forge.host.standalone import StandaloneHost

    ckpt = _copy_model(tiny_files, tmp_path / "without", with_yaml=False)
    # without its yaml the tiny file is taken for SD1 and gets the full-size built-in config,
    # which its tiny weights do not fit
    with pytest.raises(ForgeError, match="yaml"):
        StandaloneHost(ckpt, clip_folder=tiny_files.clip_folder)
    # an explicit config wins too
    host = StandaloneHost(ckpt, config=tiny_files.config)
    assert host.config_path == tiny_files.config
    assert (CONFIG_DIR / "sd1.yaml").is_file()


def test_builtin_configs_describe_the_real_model_families():
    from omegaconf import OmegaConf

    from lora_forge.host.ldm_build import CONFIG_DIR

    sd1, sd2, sd2v = (OmegaConf.load(CONFIG_DIR / n).model.params for n in ("sd1.yaml", "sd2.yaml", "sd2-v.yaml"))
    assert sd1.unet_config.params.context_dim == 768 and sd2.unet_config.params.context_dim == 1024
    assert (sd1.parameterization, sd2.parameterization, sd2v.parameterization) == ("eps", "eps", "v")
    assert sd1.cond_stage_config.target.endswith("FrozenCLIPEmbedder")
    assert sd2v.cond_stage_config.target.endswith("FrozenOpenCLIPEmbedder")
    assert sd2v.unet_config.params.use_linear_in_transformer and not sd1.unet_config.params.get(
        "use_linear_in_transformer", False
    )


@pytest.mark.parametrize("v", [True, False])
def test_tiny_sd2_loads_with_its_parameterization(tmp_path, v):
    from lora_forge.host.standalone import StandaloneHost
    from lora_forge.host.tiny import build_tiny_sd2
    from lora_forge.model.family import model_family

    files = build_tiny_sd2(tmp_path, v=v)
    host = StandaloneHost(files.checkpoint)
    m = host.sd_model()
    assert (m.is_sd1, m.is_sd2) == (False, True)
    assert m.parameterization == ("v" if v else "eps")
    assert model_family(m) == ("sd2-v" if v else "sd2")
    a, a2, b = (host.txt2img([_req(s)])[0] for s in (1, 1, 2))
    assert a.tobytes() == a2.tobytes() != b.tobytes()


def test_exclusive_keeps_jobs_apart(tiny_host):
    import threading

    order = []

    def grid() -> None:
        with tiny_host.exclusive("grid"):
            order.append("grid")

    with tiny_host.exclusive("train"):
        t = threading.Thread(target=grid)
        t.start()
        t.join(0.3)  # the grid waits while training holds the lock
        order.append("train done")
    t.join(5)
    assert order == ["train done", "grid"]


def test_txt2img_waits_for_another_threads_job_but_runs_inside_its_own(tiny_host):
    import threading

    order = []

    def grid() -> None:
        tiny_host.txt2img([_req(1, steps=1)])
        order.append("grid rendered")

    with tiny_host.exclusive("train"):
        tiny_host.txt2img([_req(1, steps=1)])  # a training job's own sample: no deadlock
        t = threading.Thread(target=grid)
        t.start()
        t.join(0.5)
        order.append("train done")
    t.join(30)
    assert order == ["train done", "grid rendered"]


def test_checkpoint_with_old_transformers_key_names_loads_the_same(tiny_host, tiny_files, tmp_path):
    from safetensors.torch import load_file, save_file

    from lora_forge.host.standalone import StandaloneHost

    old = {
        k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
        for k, v in load_file(str(tiny_files.checkpoint)).items()
    }
    assert "cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight" in old
    ckpt = tmp_path / "old-keys.safetensors"
    save_file(old, str(ckpt))
    shutil.copy(tiny_files.config, ckpt.with_suffix(".yaml"))
    host = StandaloneHost(ckpt)
    # two model instances with equal weights may round differently (kernels follow memory
    # alignment), so equal means within one 8-bit step, not byte for byte
    ours, reference = _px(host.txt2img([_req(2)])[0]), _px(tiny_host.txt2img([_req(2)])[0])
    assert np.abs(ours - reference).max() <= 1


def test_half_precision_on_cpu_is_refused(tiny_files):
    import torch

    from lora_forge.host.standalone import StandaloneHost

    with pytest.raises(ForgeError, match="CUDA"):
        StandaloneHost(tiny_files.checkpoint, dtype=torch.float16)


def test_clip_files_are_found_in_our_models_folder(tiny_files, tmp_path, monkeypatch):
    from lora_forge.host.clip_files import resolve_clip_folder

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("LORA_FORGE_MODELS", str(tmp_path / "models"))
    with pytest.raises(ForgeError, match="openai--clip-vit-large-patch14"):
        resolve_clip_folder("openai/clip-vit-large-patch14")
    ours = tmp_path / "models" / "openai--clip-vit-large-patch14"
    shutil.copytree(tiny_files.clip_folder, ours)
    assert resolve_clip_folder("openai/clip-vit-large-patch14") == ours
