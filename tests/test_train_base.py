"""Training the embedded base from scratch: two phases, a folder diffusers opens, resume."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from cnet.engine import DEFAULT_PROMPT
from cnet.train.base import BaseTrainConfig, train_base
from cnet.train.embedded import describe_run
from cnet.train.lineage import recorded_runs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_run(out, **overrides) -> BaseTrainConfig:
    settings = dict(
        output_dir=str(out),
        architecture="tiny",
        corpus_examples=100,
        batch_size=2,
        vae_steps=2,
        unet_steps=2,
        checkpoint_every=1,
        checkpoints_to_keep=None,
        validate_every=2,
        num_validation_images=2,
        validation_inference_steps=2,
        warmup_steps=0,
        cooldown_steps=0,
        vae_learning_rate=1e-3,
        unet_learning_rate=1e-3,
    )
    settings.update(overrides)
    return BaseTrainConfig(**settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_base(tiny_run(out)), out
    finally:
        torch.set_num_threads(threads)


def test_the_base_is_a_pipeline_folder_the_controlnet_pipeline_opens(trained):
    from diffusers import StableDiffusionControlNetPipeline, UNet2DConditionModel

    from cnet.train.controlnet import new_controlnet

    base_dir, out = trained
    assert (base_dir / "model_index.json").is_file()
    unet = UNet2DConditionModel.from_pretrained(base_dir, subfolder="unet")
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        base_dir, controlnet=new_controlnet(unet, str(base_dir)), safety_checker=None
    )
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red cube", image=Image.new("RGB", (64, 64)), num_inference_steps=2).images[0]
    assert image.size == (64, 64)
    assert pipe.vae.config.latent_channels == 4
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8
    # The latent scale is measured on the data, not SD's constant.
    summary = json.loads((out / "training.json").read_text())
    assert pipe.vae.config.scaling_factor == pytest.approx(summary["scaling_factor"])
    assert pipe.vae.config.scaling_factor != pytest.approx(0.18215)
    assert summary["steps"] == {"vae": 2, "unet": 2}
    assert {p.name for p in (out / "validation").glob("*.png")} == {
        "vae-step-0000002.png",
        "unet-step-0000002.png",
    }


def test_the_tokenizer_learns_the_data_words_and_still_tokenizes_any_word(trained):
    from transformers import CLIPTokenizer

    base_dir, _ = trained
    tokenizer = CLIPTokenizer.from_pretrained(base_dir, subfolder="tokenizer")
    common = tokenizer("background", add_special_tokens=False).input_ids
    assert len(common) < len("background")  # merges learned from the scene prompts
    unseen = "zyxwvut quokka"
    ids = tokenizer(unseen, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids).strip() == unseen


def weights(folder):
    from safetensors.torch import load_file

    return load_file(next(folder.glob("*.safetensors")))


def changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_phase_one_trains_the_vae_and_phase_two_keeps_it_locked(trained):
    _, out = trained
    step = {n: out / "checkpoints" / f"step-{n:07d}" for n in (1, 2, 3, 4)}
    assert changed(weights(step[1] / "vae"), weights(step[2] / "vae"))
    assert not (step[2] / "unet").exists()
    assert not changed(weights(step[2] / "vae"), weights(step[4] / "vae"))
    assert changed(weights(step[3] / "unet"), weights(step[4] / "unet"))
    assert changed(weights(step[3] / "text_encoder"), weights(step[4] / "text_encoder"))


def test_killed_and_resumed_base_training_gives_the_same_losses(trained, tmp_path):
    _, out = trained
    full = json.loads((out / "checkpoints" / "step-0000004" / "state.json").read_text())
    killed = tiny_run(tmp_path, unet_steps=1, validate_every=0)  # killed after unet step 1
    train_base(killed)
    killed.resume, killed.unet_steps = "latest", 2
    train_base(killed)
    resumed = json.loads((tmp_path / "checkpoints" / "step-0000004" / "state.json").read_text())
    assert resumed["losses"] == full["losses"]


def test_a_resume_in_the_unet_phase_with_another_vae_steps_keeps_the_checkpoint_names(
    trained, tmp_path, capsys
):
    """--vae-steps changed on resume must not name new UNet checkpoints below the old ones, or
    "latest" would keep finding the old one."""
    killed = tiny_run(tmp_path, unet_steps=1, validate_every=0)
    train_base(killed)
    killed.resume, killed.unet_steps, killed.vae_steps = "latest", 2, 0  # the README's default
    killed.architecture = "small"  # left out of the resumed command: the default
    with pytest.raises(ValueError, match="made with --architecture tiny, which shapes its weig"):
        train_base(killed)
    killed.architecture = "tiny"
    train_base(killed)
    assert "Settings changed since that checkpoint (was, now): {'vae_steps': (2, 0)" in (
        capsys.readouterr().out
    )
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names[-1] == "step-0000004"  # VAE 2 steps + UNet 2, as the run did them
    state = json.loads((tmp_path / "checkpoints" / names[-1] / "state.json").read_text())
    assert (state["phase"], state["step"]) == ("unet", 2)


def test_a_controlnet_checkpoint_is_refused_as_a_base_resume(tmp_path):
    from cnet.train.checkpoint import CHECKPOINTS, STATE

    folder = tmp_path / CHECKPOINTS / "step-0000001"
    folder.mkdir(parents=True)
    (folder / STATE).write_text(json.dumps({"step": 1}))
    with pytest.raises(ValueError, match="is not a checkpoint of `cnet train base`"):
        train_base(tiny_run(tmp_path, resume=str(folder)))


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "no such file"), ("", "holds no sentences"), ("\n  \n", "holds no sentences")],
)
def test_a_corpus_that_is_missing_or_empty_is_refused_before_anything_is_built(
    tmp_path, text, message
):
    corpus = tmp_path / "corpus.txt"
    if text is not None:
        corpus.write_text(text)
    with pytest.raises((FileNotFoundError, ValueError), match=f"--corpus {corpus}.*{message}"):
        train_base(tiny_run(tmp_path / "run", corpus=str(corpus)))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["base_init", "vae_init"])
def test_a_start_folder_that_is_not_there_is_named_before_anything_is_built(tmp_path, flag):
    missing = tmp_path / "nothere"
    dashed = "--" + flag.replace("_", "-")
    with pytest.raises(FileNotFoundError, match=f"{dashed} {missing}: no such folder; give a"):
        train_base(tiny_run(tmp_path / "run", **{flag: str(missing)}))
    assert not (tmp_path / "run").exists()


def test_a_time_boxed_base_stops_within_its_phase_exports_no_random_unet_and_resumes_exactly(
    trained, tmp_path, capsys
):
    _, out = trained
    full = json.loads((out / "checkpoints" / "step-0000004" / "state.json").read_text())
    boxed = tiny_run(tmp_path, validate_every=0, max_minutes=1e-9)  # spent in the first step
    assert train_base(boxed) is None
    said = capsys.readouterr()
    assert "1e-09-minute time box (--max-minutes) is spent. Checkpoint written; run" in said.out
    assert "Stopped in the VAE phase, so no pipeline was exported" in said.out
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["steps"] == {"vae": 1, "unet": 0}  # the UNet phase never started
    assert not (tmp_path / "base").exists()  # a random UNet is not exported as a pipeline
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000001"]
    boxed.resume, boxed.max_minutes = "latest", None
    assert train_base(boxed) == tmp_path / "base"
    resumed = json.loads((tmp_path / "checkpoints" / "step-0000004" / "state.json").read_text())
    assert resumed["losses"] == full["losses"]
    assert (tmp_path / "base" / "model_index.json").is_file()


def test_a_base_init_run_stopped_in_its_vae_phase_exports_the_earlier_unet(trained, tmp_path):
    base_dir, _ = trained
    boxed = tiny_run(tmp_path, base_init=str(base_dir), validate_every=0, max_minutes=1e-9)
    assert train_base(boxed) == tmp_path / "base"
    assert not changed(weights(base_dir / "unet"), weights(tmp_path / "base" / "unet"))


def test_vae_crops_are_random_windows_of_the_asked_size():
    import torch

    from cnet.train.base import random_crop

    pixels = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    crops = [random_crop(pixels, 8, torch.Generator().manual_seed(s)) for s in range(6)]
    assert all(c.shape == (2, 3, 8, 8) for c in crops)
    assert len({int(c[0, 0, 0, 0]) for c in crops}) > 1  # the window moves
    again = random_crop(pixels, 8, torch.Generator().manual_seed(0))
    assert torch.equal(crops[0], again)
    assert random_crop(pixels, None, torch.Generator()) is pixels
    assert random_crop(pixels, 16, torch.Generator()) is pixels


def test_each_phase_reads_batches_of_its_own_size(tmp_path, monkeypatch):
    import cnet.train.base as base

    sizes = []
    real_stream = base.BatchStream

    def recording_stream(dataset, batch_size, *args, **kwargs):
        sizes.append(batch_size)
        return real_stream(dataset, batch_size, *args, **kwargs)

    monkeypatch.setattr(base, "BatchStream", recording_stream)
    config = tiny_run(tmp_path, vae_steps=1, unet_steps=1, vae_batch_size=3, validate_every=0)
    train_base(config)
    assert sizes[0] == 3 and sizes[-1] == 2  # the VAE phase first, the UNet phase last


class Grey(torch.nn.Module):
    """A VAE objective that reconstructs every image as flat grey (0), whatever it is given."""

    def __init__(self):
        super().__init__()
        self.vae = self

    def forward(self, pixel_values, generator, weights=None):
        from cnet.train.base import VAEObjective

        return VAEObjective.forward(self, pixel_values, generator, weights)

    def encode(self, pixels):
        class Posterior:
            def sample(self, generator):
                return pixels

            def kl(self):
                return torch.zeros(1)

        return type("Out", (), {"latent_dist": Posterior()})()

    def decode(self, latents):
        return type("Out", (), {"sample": torch.zeros_like(latents)})()


def test_object_pixels_weigh_more_in_the_vae_loss():
    from cnet.train.base import object_weights, vae_loss

    kinds = torch.zeros(1, 4, 4, dtype=torch.uint8)
    kinds[0, :2, :2] = 2  # an object in a quarter of the image
    pixels = torch.zeros(1, 3, 4, 4)
    pixels[..., :2, :2] = 1.0  # the grey reconstruction misses the object by 1 everywhere
    weights = object_weights(kinds, 4.0)
    assert weights[0, 0, 0, 0] == 5.0 and weights[0, 0, 3, 3] == 1.0
    around = object_weights(kinds, 4.0, margin=1)
    assert around[0, 0, 2, 2] == 5.0 and around[0, 0, 3, 3] == 1.0  # one pixel out: weighed
    batch = {"pixel_values": pixels, "kinds": kinds}
    plain = vae_loss(Grey(), batch, torch.Generator(), 0.0)
    weighted = vae_loss(Grey(), batch, torch.Generator(), 0.0, object_weight=4.0)
    assert plain.item() == pytest.approx(0.25)
    assert weighted.item() == pytest.approx(5 * 4 / (5 * 4 + 12))  # object share of the weight
    cropped = vae_loss(Grey(), batch, torch.Generator().manual_seed(0), 0.0, 2, 4.0)
    assert 0.0 <= cropped.item() <= 1.0


def test_the_image_border_weighs_more_in_the_vae_loss_with_a_frame_weight():
    from cnet.train.base import FRAME_WIDTH, frame_mask, vae_loss

    size = 2 * FRAME_WIDTH + 4  # a 4 x 4 inside
    assert frame_mask(size, size).sum() == size * size - 16
    pixels = torch.zeros(2, 3, size, size)
    pixels[..., :FRAME_WIDTH, :] = 1.0  # the grey reconstruction misses the top band by 1
    batch = {"pixel_values": pixels}
    plain = vae_loss(Grey(), batch, torch.Generator(), 0.0)
    framed = vae_loss(Grey(), batch, torch.Generator(), 0.0, frame_weight=4.0)
    band = FRAME_WIDTH * size
    assert plain.item() == pytest.approx(band / size**2)
    assert framed.item() == pytest.approx(5 * band / (5 * (size**2 - 16) + 16))
    # with object weights too, both add up; a crop keeps the image's own border weights
    kinds = torch.zeros(2, size, size, dtype=torch.uint8)
    both = vae_loss(Grey(), {**batch, "kinds": kinds}, torch.Generator(), 0.0, None, 4.0, 0, 4.0)
    assert both.item() == pytest.approx(framed.item())  # no object: the frame alone
    cropped = vae_loss(Grey(), batch, torch.Generator().manual_seed(0), 0.0, 4, 0.0, 0, 4.0)
    assert 0.0 <= cropped.item() <= 1.0


def test_a_vae_grown_to_more_latent_channels_starts_where_the_trained_one_was(tmp_path):
    from dataclasses import replace

    from cnet.architecture import TINY, build_vae
    from cnet.train.base import NEW_LATENT_LOGVAR, load_vae_into

    torch.manual_seed(0)
    trained = build_vae(TINY)
    trained.save_pretrained(tmp_path / "trained")
    grown = build_vae(replace(TINY, latent_channels=8))
    load_vae_into(grown, tmp_path / "trained")

    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = trained.encode(images).latent_dist
        after = grown.encode(images).latent_dist
        assert torch.allclose(after.mean[:, :4], before.mean, atol=1e-5)
        assert torch.allclose(after.logvar[:, :4], before.logvar, atol=1e-5)
        assert (after.logvar[:, 4:] == NEW_LATENT_LOGVAR).all()  # not drowned in noise
        reconstruction = trained.decode(before.mean).sample
        noisy = torch.cat([before.mean, torch.randn(2, 4, 4, 4)], dim=1)  # new channels: ignored
        assert torch.allclose(grown.decode(noisy).sample, reconstruction, atol=1e-5)
    grown.save_pretrained(tmp_path / "grown")
    with pytest.raises(ValueError, match="more than"):
        load_vae_into(trained, tmp_path / "grown")


def test_a_base_continued_from_another_starts_from_all_its_parts(trained, tmp_path):
    base_dir, first = trained
    out = tmp_path / "continued"
    # Learning rate 0: the weights stay where they started, so they show where that was.
    frozen = dict(unet_learning_rate=0.0, text_encoder_learning_rate=0.0, validate_every=0)
    (out / "tokenizer").mkdir(parents=True)  # left by a run refused for another base
    (out / "tokenizer" / "tokenizer_config.json").write_text("{}")
    continued = train_base(tiny_run(out, base_init=str(base_dir), vae_steps=0, **frozen))
    for part in ("vae", "text_encoder", "unet"):
        assert not changed(weights(base_dir / part), weights(continued / part)), part
    vocab = (out / "tokenizer" / "tokenizer.json").read_text()
    assert vocab == (base_dir / "tokenizer" / "tokenizer.json").read_text()
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == {"vae": 0, "unet": 2}
    assert (
        summary["scaling_factor"]
        == json.loads((first / "training.json").read_text())["scaling_factor"]
    )


def test_a_base_init_of_another_architecture_is_one_line_naming_the_part(trained):
    from cnet.train.base import load_base_into

    base_dir, _ = trained
    with pytest.raises(ValueError) as refused:
        load_base_into({"vae": torch.nn.Linear(2, 2)}, base_dir, "small")
    message = str(refused.value)
    assert message.startswith(
        f"--base-init {base_dir}: its vae is not of the small architecture this run builds ("
    )
    assert "\n" not in message


def test_a_decoder_only_vae_phase_keeps_the_encoder_so_the_unet_latents_stay(trained, tmp_path):
    base_dir, first = trained
    out = tmp_path / "decoder"
    run = tiny_run(out, base_init=str(base_dir), vae_decoder_only=True, unet_steps=0)
    tuned = train_base(run)
    before, after = weights(base_dir / "vae"), weights(tuned / "vae")

    def part(state: dict, prefixes: tuple[str, ...]) -> dict:
        return {name: value for name, value in state.items() if name.startswith(prefixes)}

    frozen = ("encoder.", "quant_conv.")
    assert part(before, frozen) and not changed(part(before, frozen), part(after, frozen))
    assert changed(part(before, ("decoder.",)), part(after, ("decoder.",)))
    for locked in ("text_encoder", "unet"):
        assert not changed(weights(base_dir / locked), weights(tuned / locked)), locked
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == {"vae": 2, "unet": 0}
    assert (
        summary["scaling_factor"]
        == json.loads((first / "training.json").read_text())["scaling_factor"]
    )
    runs = recorded_runs(tuned)  # the earlier base's run, then this one
    assert [r["steps"] for r in runs] == [{"vae": 2, "unet": 2}, {"vae": 2, "unet": 0}]
    assert describe_run(runs[1]) == "its decoder 2 steps at batch 4, learning rate 0.001; 1 x cpu"
    assert describe_run(runs[0]).startswith("VAE 2 steps at batch 4, learning rate 0.001; UNet")


def test_a_base_init_and_a_vae_init_together_are_refused(trained, tmp_path):
    base_dir, _ = trained
    run = tiny_run(tmp_path, base_init=str(base_dir), vae_init=str(base_dir / "vae"))
    with pytest.raises(ValueError, match="leave out --vae-init"):
        train_base(run)


def test_a_decoder_only_phase_without_a_trained_encoder_of_the_same_width_is_refused(tmp_path):
    from dataclasses import replace

    from cnet.architecture import TINY, build_vae

    with pytest.raises(ValueError, match="give that VAE with --base-init"):
        train_base(tiny_run(tmp_path / "run", vae_decoder_only=True))
    build_vae(replace(TINY, latent_channels=2)).save_pretrained(tmp_path / "narrow")
    narrow = tiny_run(tmp_path / "run", vae_init=str(tmp_path / "narrow"), vae_decoder_only=True)
    with pytest.raises(ValueError, match="2 latent channels and this architecture 4"):
        train_base(narrow)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("zero_terminal_snr", [True, False])
def test_the_unet_learns_v_at_zero_terminal_snr_and_the_noise_otherwise(zero_terminal_snr):
    from types import SimpleNamespace

    from cnet.architecture import noise_schedule
    from cnet.train.base import unet_loss

    scheduler = noise_schedule(zero_terminal_snr)
    latents = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = {}

    class VAE(torch.nn.Module):
        dtype = torch.float32
        config = SimpleNamespace(scaling_factor=1.0)

        def encode(self, pixels):
            dist = SimpleNamespace(sample=lambda generator: latents)
            return SimpleNamespace(latent_dist=dist)

    def unet(noisy, timesteps, text, return_dict):
        seen.update(noisy=noisy, timesteps=timesteps)
        return (torch.zeros_like(noisy),)

    class Tokenizer:
        model_max_length = 4

        def __call__(self, prompts, **kwargs):
            seen["prompts"] = list(prompts)
            return SimpleNamespace(input_ids=torch.zeros(len(prompts), 4, dtype=torch.long))

    parts = {
        "vae": VAE(),
        "unet": unet,
        "text_encoder": lambda ids: (torch.zeros(len(ids), 4, 8),),
        "tokenizer": Tokenizer(),
        "scheduler": scheduler,
    }
    batch = {"pixel_values": torch.zeros(3, 3, 32, 32), "prompt": ["a red cube"] * 3}
    loss = unet_loss(parts, batch, torch.Generator().manual_seed(0), torch.Generator(), 0.0)

    signal = scheduler.alphas_cumprod[seen["timesteps"]].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - signal**2).sqrt()
    noise = (seen["noisy"] - signal * latents) / sigma
    target = signal * noise - sigma * latents if zero_terminal_snr else noise
    assert loss.item() == pytest.approx(target.pow(2).mean().item(), rel=1e-4)
    assert seen["prompts"] == ["a red cube"] * 3

    # every prompt dropped, all of those given the default prompt
    unet_loss(parts, batch, torch.Generator(), torch.Generator(), 1.0, default_prompt_share=1.0)
    assert seen["prompts"] == [DEFAULT_PROMPT] * 3


def test_a_base_whose_time_box_runs_out_on_its_last_step_has_finished(tmp_path, capsys):
    run = tiny_run(tmp_path, vae_steps=0, unet_steps=1, validate_every=0, max_minutes=1e-9)
    assert train_base(run) == tmp_path / "base"
    assert "time box" not in "".join(capsys.readouterr())
    assert json.loads((tmp_path / "training.json").read_text())["steps"] == {"vae": 0, "unet": 1}
    assert not list(tmp_path.glob("*.partial"))  # the export renamed into place
