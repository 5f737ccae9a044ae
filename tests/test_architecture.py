import warnings
from pathlib import Path

import pytest
import torch

from cnet.architecture import TINY, build_tokenizer


def test_tokenizer_keeps_corpus_words_whole_and_still_tokenizes_any_word(tmp_path: Path):
    tokenizer = build_tokenizer(["a red sphere", "a blue cube"] * 5, tmp_path, num_merges=50)
    tokens = tokenizer.tokenize("a red sphere")
    assert tokens == ["a</w>", "red</w>", "sphere</w>"]
    unseen = tokenizer("zqxjk ünïcödé 🙂", add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in unseen
    assert tokenizer.decode(unseen, skip_special_tokens=True) == "zqxjk ünïcödé 🙂"
    assert tokenizer.model_max_length == 77


def test_tiny_model_dir_opens_as_a_controlnet_pipeline(tiny_model_dir: Path):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    controlnet = ControlNetModel.from_pretrained(tiny_model_dir / "controlnet" / "canny")
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_model_dir / "base", controlnet=controlnet
    )
    assert pipe.vae_scale_factor == TINY.vae_scale_factor == 8
    size = TINY.sample_size
    image = torch.zeros(1, 3, size, size)
    out = pipe(
        "a red sphere",
        image=image,
        num_inference_steps=2,
        height=size,
        width=size,
        output_type="np",
    ).images
    assert out.shape == (1, size, size, 3)


def test_a_pipeline_built_from_the_components_asks_nothing_of_its_scheduler(tmp_path: Path):
    from diffusers import StableDiffusionPipeline

    from cnet.architecture import build_components

    components = build_components(TINY, build_tokenizer(["a red sphere"], tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None)
    # diffusers asks for a pull request on a scheduler config whose steps_offset is not 1
    assert not [w for w in caught if "steps_offset" in str(w.message)]


def test_the_noise_schedule_ends_in_pure_noise_and_sampling_starts_there():
    from cnet.architecture import noise_schedule

    schedule = noise_schedule()
    assert float(schedule.alphas_cumprod[-1]) == 0.0
    assert schedule.config.prediction_type == "v_prediction"
    schedule.set_timesteps(20)
    assert int(schedule.timesteps[0]) == 999

    sd15 = noise_schedule(zero_terminal_snr=False)  # 7 % of the image left at the last step
    assert float(sd15.alphas_cumprod[-1].sqrt()) == pytest.approx(0.068, abs=1e-3)
    assert sd15.config.prediction_type == "epsilon"
