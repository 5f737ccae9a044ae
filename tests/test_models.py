"""Presets, --preset auto, single-file ControlNets, unsafe pickles, missing-weight messages."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from cnet import models
from cnet.models import (
    SD15_BASE,
    LRUCache,
    ModelMissingError,
    UnsafeCheckpointError,
    conditioning_shape,
    load_controlnet,
    read_checkpoint,
    resolve_preset,
)

# Original ControlNet (ldm) names of a diffusers resnet's layers.
RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _resnet(parts: list[str]) -> str:
    return ".".join([RESNET_NAMES.get(parts[0], parts[0]), *parts[1:]])


def original_key(key: str, layers_per_block: int, hint_blocks: int) -> str:
    """The key a diffusers ControlNetModel tensor has in the original ControlNet code (cldm).

    input_blocks.0 is conv_in; then per resolution `layers_per_block` (resnet .0, attention .1)
    followed by a downsampler (.0.op); zero_convs.i follow input_blocks.i; the hint encoder is
    one nn.Sequential with SiLUs at the odd indices.
    """
    parts = key.split(".")
    stride = layers_per_block + 1
    if parts[0] == "time_embedding":
        return f"time_embed.{0 if parts[1] == 'linear_1' else 2}.{parts[2]}"
    if parts[0] == "conv_in":
        return f"input_blocks.0.0.{parts[1]}"
    if parts[0] == "controlnet_cond_embedding":
        if parts[1] == "conv_in":
            return f"input_hint_block.0.{parts[2]}"
        if parts[1] == "conv_out":
            return f"input_hint_block.{2 * (hint_blocks + 1)}.{parts[2]}"
        return f"input_hint_block.{2 * (int(parts[2]) + 1)}.{parts[3]}"
    if parts[0] == "down_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * stride}.0.op.{parts[-1]}"
        layer = 1 + block * stride + int(parts[3])
        if kind == "resnets":
            return f"input_blocks.{layer}.0.{_resnet(parts[4:])}"
        return f"input_blocks.{layer}.1.{'.'.join(parts[4:])}"
    if parts[0] == "mid_block":
        if parts[1] == "resnets":
            return f"middle_block.{2 * int(parts[2])}.{_resnet(parts[3:])}"
        return f"middle_block.1.{'.'.join(parts[3:])}"
    if parts[0] == "controlnet_down_blocks":
        return f"zero_convs.{parts[1]}.0.{parts[2]}"
    if parts[0] == "controlnet_mid_block":
        return f"middle_block_out.0.{parts[1]}"
    raise KeyError(key)


def original_state_dict(controlnet, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ControlNet's weights in the original single-file layout."""
    hint_blocks = len(controlnet.controlnet_cond_embedding.blocks)
    layers = controlnet.config.layers_per_block
    return {
        prefix + original_key(key, layers, hint_blocks): value.clone().contiguous()
        for key, value in controlnet.state_dict().items()
    }


@pytest.fixture(scope="module")
def canny(tiny_model_dir: Path):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(tiny_model_dir / "controlnet" / "canny")


def assert_same_weights(a, b) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def test_single_safetensors_file_in_original_format(tiny_model_dir, canny, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "control_tiny_canny.safetensors"
    save_file(original_state_dict(canny, prefix="control_model."), path)
    loaded = load_controlnet(str(path), str(tiny_model_dir / "base"), "float32", "cpu")
    assert tuple(loaded.config.conditioning_embedding_out_channels) == (8, 8, 8, 16)
    assert_same_weights(canny, loaded)


def test_single_pth_file_in_original_format(tiny_model_dir, canny, tmp_path):
    path = tmp_path / "control_tiny_canny.pth"
    torch.save({"state_dict": original_state_dict(canny)}, path)
    loaded = load_controlnet(str(path), str(tiny_model_dir / "base"), "float32", "cpu")
    assert_same_weights(canny, loaded)


def test_a_safetensors_file_of_any_case_loads_and_a_file_of_no_checkpoint_is_explained(
    tiny_model_dir, canny, tmp_path
):
    from safetensors.torch import save_file

    upper = tmp_path / "CANNY.SAFETENSORS"
    save_file(original_state_dict(canny), upper)
    assert_same_weights(
        canny, load_controlnet(str(upper), str(tiny_model_dir / "base"), "float32", "cpu")
    )
    for name in ("notes.pth", "garbage.safetensors"):
        (tmp_path / name).write_text("not weights at all")
        with pytest.raises(ValueError, match=f"{name} is not a readable checkpoint"):
            read_checkpoint(tmp_path / name)


def test_a_diffusers_folders_weights_file_given_alone_is_sent_to_its_folder(
    tiny_model_dir, tmp_path
):
    folder = tiny_model_dir / "controlnet" / "canny"
    weights = folder / "diffusion_pytorch_model.safetensors"
    base = str(tiny_model_dir / "base")
    with pytest.raises(ValueError, match=f"holds the weights of a diffusers ControlNet folder, .*"
                       f"give the folder, {folder}\\."):  # fmt: skip
        load_controlnet(str(weights), base, "float32", "cpu")
    alone = tmp_path / "canny.safetensors"
    shutil.copy(weights, alone)
    with pytest.raises(ValueError, match="give the folder they came from"):
        load_controlnet(str(alone), base, "float32", "cpu")


def test_a_single_file_controlnet_for_another_base_is_refused_and_flagged_early(canny, tmp_path):
    from safetensors.torch import save_file

    from cnet.engine import load_engine
    from cnet.models import ModelMismatchError

    path = tmp_path / "control_tiny_canny.safetensors"
    save_file(original_state_dict(canny, prefix="control_model."), path)
    engine = load_engine("embedded", controlnets={"canny": str(path)}, device="cpu")
    assert engine.mismatched() == ["canny"]  # from the file's header, before loading
    with pytest.raises(ModelMismatchError, match=r"first block width 16 \(the base's 48\)"):
        engine.controlnet("canny")


def test_conditioning_shape_reads_the_hint_encoder(canny):
    assert conditioning_shape(original_state_dict(canny)) == (3, (8, 8, 8, 16))
    with pytest.raises(ValueError, match="input_hint_block"):
        conditioning_shape({"unrelated.weight": torch.zeros(1)})


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="safetensors"):
        read_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: a plain load runs it
    assert marker.exists()


def test_model_dir_preset(tiny_model_dir):
    preset, reason = resolve_preset(model_dir=str(tiny_model_dir), device="cpu")
    assert preset.name == "tiny" and preset.resolution == 64
    assert (preset.device, preset.dtype) == ("cpu", "float32")
    assert preset.base == str(tiny_model_dir / "base")
    assert preset.controlnet_source("canny") == str(tiny_model_dir / "controlnet" / "canny")
    assert preset.captioner == str(tiny_model_dir / "captioner")
    assert str(tiny_model_dir) in reason


PAPER_ADDED = "best quality, extremely detailed"
PAPER_NEGATIVE = (
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality"
)


def test_preset_json_may_set_the_sampling_and_the_added_and_negative_prompts(
    tiny_model_dir, tmp_path
):
    import json

    paper = resolve_preset(model_dir=str(tiny_model_dir), device="cpu")[0]
    assert (paper.cfg, paper.sampler) == (9.0, "DDPM")
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    settings = json.loads((folder / "preset.json").read_text())
    assert (paper.added_prompt, paper.negative_prompt) == (PAPER_ADDED, PAPER_NEGATIVE)
    own_settings = {"cfg": 2.5, "sampler": "DDIM", "added_prompt": "", "negative_prompt": "dull"}
    (folder / "preset.json").write_text(json.dumps({**settings, **own_settings}))
    own = resolve_preset(model_dir=str(folder), device="cpu")[0]
    assert (own.cfg, own.sampler) == (2.5, "DDIM")
    assert (own.added_prompt, own.negative_prompt) == ("", "dull")
    # a trainer given the base folder samples its validation images the same way
    from cnet.models import sampling_defaults

    assert sampling_defaults(str(folder / "base")) == (2.5, "DDIM")
    paper = (9.0, "DDPM")
    assert sampling_defaults(str(tiny_model_dir / "base")) == sampling_defaults(None) == paper


def test_preset_json_may_give_example_prompts_for_known_conditions(tiny_model_dir, tmp_path):
    import json

    assert resolve_preset(model_dir=str(tiny_model_dir), device="cpu")[0].example_prompts == {}
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    settings = json.loads((folder / "preset.json").read_text())
    prompts = {"canny": "a red cube on a white background"}
    (folder / "preset.json").write_text(json.dumps({**settings, "example_prompts": prompts}))
    assert resolve_preset(model_dir=str(folder), device="cpu")[0].example_prompts == prompts
    (folder / "preset.json").write_text(json.dumps({**settings, "example_prompts": {"edges": "x"}}))
    with pytest.raises(ValueError, match="'edges', which is no condition; use the condition keys"):
        resolve_preset(model_dir=str(folder), device="cpu")


def test_preset_json_may_give_examples_found_in_its_folder_with_their_backends(
    tiny_model_dir, tmp_path
):
    import json

    from cnet.conditions import Example

    assert resolve_preset(model_dir=str(tiny_model_dir), device="cpu")[0].examples == {}
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "examples").mkdir()
    (folder / "examples" / "depth.png").write_bytes(b"png")
    settings = json.loads((folder / "preset.json").read_text())

    def preset_with(examples: dict):
        (folder / "preset.json").write_text(json.dumps({**settings, "examples": examples}))
        return resolve_preset(model_dir=str(folder), device="cpu")[0]

    given = {"depth": [{"file": "examples/depth.png", "backend": "none"}]}
    assert preset_with(given).examples == {
        "depth": (Example(str(folder / "examples" / "depth.png"), "none"),)
    }
    plain = preset_with({"depth": [{"file": "examples/depth.png"}]})
    assert plain.examples["depth"][0].backend is None
    with pytest.raises(ValueError, match="'edges', which is no condition"):
        preset_with({"edges": given["depth"]})
    with pytest.raises(ValueError, match="backend 'canny'; choose one of: midas, depth_anything"):
        preset_with({"depth": [{"file": "examples/depth.png", "backend": "canny"}]})
    with pytest.raises(ValueError, match='each depth example is {"file"'):
        preset_with({"depth": ["examples/depth.png"]})
    with pytest.raises(ValueError, match="examples/seg.png, which is not there"):
        preset_with({"seg": [{"file": "examples/seg.png", "backend": "none"}]})


def test_sd15_preset_takes_checkpoints_from_the_registry():
    preset, _ = resolve_preset("sd15", device="cuda")
    assert preset.base == SD15_BASE and preset.dtype == "float16"
    assert preset.controlnets["canny"] == "lllyasviel/control_v11p_sd15_canny"
    assert preset.controlnets["depth"] == "lllyasviel/control_v11f1p_sd15_depth"
    assert preset.controlnets["hough"] == "lllyasviel/control_v11p_sd15_mlsd"
    assert preset.captioner == "Salesforce/blip-image-captioning-base"


def test_custom_parts_override_a_preset(tiny_model_dir, tmp_path):
    single = str(tmp_path / "canny.safetensors")
    preset, reason = resolve_preset(
        model_dir=str(tiny_model_dir), controlnets={"canny": single}, device="cpu"
    )
    assert preset.name == "custom" and "custom" in reason
    assert preset.controlnet_source("canny") == single
    assert preset.controlnet_source("depth").endswith("depth")


def test_a_custom_base_brings_its_own_size_sampling_and_examples(tiny_model_dir, tmp_path):
    """The tiny base is 64 px; the ControlNets' preset here says 96 px, CFG 2.5 and examples."""
    import json

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    settings = {"resolution": 96, "cfg": 2.5, "example_prompts": {"canny": "a red sphere"}}
    (tmp_path / "model" / "preset.json").write_text(json.dumps(settings))
    preset, _ = resolve_preset(model_dir=str(tmp_path / "model"), device="cpu")
    assert (preset.resolution, preset.cfg, len(preset.example_prompts)) == (96, 2.5, 1)

    plain = shutil.copytree(tiny_model_dir / "base", tmp_path / "plain" / "sd")  # no preset.json
    custom, reason = resolve_preset(
        model_dir=str(tmp_path / "model"), base=str(plain), device="cpu"
    )
    assert custom.base == str(plain) and custom.controlnets == preset.controlnets
    assert (custom.resolution, custom.cfg, custom.sampler) == (64, 9.0, "DDPM")
    assert custom.example_prompts == {} and custom.examples == {}
    assert "custom base given (64 px, CFG 9)" in reason

    (tmp_path / "model" / "preset.json").write_text("{}")  # no resolution: the base's own size
    assert resolve_preset(model_dir=str(tmp_path / "model"), device="cpu")[0].resolution == 64
    same = resolve_preset(model_dir=str(tmp_path / "model"), base=preset.base, device="cpu")[0]
    assert same.name == "model"


def test_a_hub_base_takes_its_size_from_the_hub_cache_else_sd15s(
    tiny_model_dir, tmp_path, monkeypatch
):

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert models.base_resolution("cnet-test/tiny-sd") is None
    assert resolve_preset("sd15", base="cnet-test/tiny-sd", device="cpu")[0].resolution == 512
    snapshot = tmp_path / "models--cnet-test--tiny-sd" / "snapshots" / ("0" * 40)
    for part in ("unet", "vae"):
        shutil.copytree(tiny_model_dir / "base" / part, snapshot / part)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    assert models.base_resolution("cnet-test/tiny-sd") == 64
    preset = resolve_preset("sd15", base="cnet-test/tiny-sd", device="cpu")[0]
    assert (preset.resolution, preset.cfg) == (64, 9.0)


def test_a_training_runs_folder_stands_for_the_controlnet_it_exported(tiny_model_dir, tmp_path):
    run = tmp_path / "runs" / "canny"
    shutil.copytree(tiny_model_dir / "controlnet" / "canny", run / "controlnet")
    given = {"canny": str(run), "depth": str(tiny_model_dir / "controlnet" / "depth")}
    preset = resolve_preset(model_dir=str(tiny_model_dir), controlnets=given, device="cpu")[0]
    assert preset.controlnets["canny"] == str(run / "controlnet")
    assert preset.controlnets["depth"] == given["depth"]  # a ControlNet folder stays as given


def test_a_controlnet_for_no_condition_is_refused_not_ignored(tiny_model_dir, capsys):
    from cnet.__main__ import main

    with pytest.raises(ValueError, match="given for 'cany', which names no condition; use one of"):
        resolve_preset(model_dir=str(tiny_model_dir), controlnets={"cany": "x"}, device="cpu")
    with pytest.raises(ValueError, match="controlnets maps each condition to its weights"):
        resolve_preset(controlnets=["my_canny.safetensors"], device="cpu")
    with pytest.raises(SystemExit):
        main(["generate", "map.png", "-c", "canny", "--controlnet", "cany=x"])
    assert "'cany' in 'cany=x' names no condition; use one of: scribble" in capsys.readouterr().err


def test_a_model_dir_that_is_not_there_reads_as_a_missing_folder_never_a_hub_id(
    tmp_path, monkeypatch
):
    from cnet.engine import load_engine

    monkeypatch.chdir(tmp_path)
    engine = load_engine(model_dir="mymodel", device="cpu")
    assert engine.preset.base == str(tmp_path / "mymodel" / "base")
    assert f"base ({tmp_path / 'mymodel' / 'base'} does not exist)" in engine.status()
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert resolve_preset(model_dir=".", device="cpu")[0].name == "here"


@pytest.mark.parametrize(
    ("text", "message"),
    [('{"name": tiny}', "is not valid JSON"), ('["tiny"]', "must hold one JSON object")],
)
def test_a_broken_preset_json_is_named(tiny_model_dir, tmp_path, text, message):

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (folder / "preset.json").write_text(text)
    with pytest.raises(ValueError, match=f"{folder / 'preset.json'} {message}"):
        resolve_preset(model_dir=str(folder), device="cpu")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cfg": 0.5}, '"cfg" must be a number from 1.0 to 30.0, got 0.5'),
        ({"cfg": None}, '"cfg" must be a number'),
        ({"cfg": float("nan")}, '"cfg" must be a number'),
        ({"resolution": "128px"}, '"resolution" must be a whole number from 64 to 2048'),
        ({"resolution": 32}, '"resolution" must be a whole number'),
        ({"controlnets": {"cany": "canny-v2"}}, "a ControlNet for 'cany', which is no condition"),
        ({"examples": [{"file": "x.png"}]}, '"examples" must be an object'),
        ({"negative_prompt": None}, '"negative_prompt" must be text'),
    ],
)
def test_preset_json_values_the_app_cannot_use_are_named_with_the_file(
    tiny_model_dir, tmp_path, settings, message
):
    import json

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (folder / "preset.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_preset(model_dir=str(folder), device="cpu")


def test_a_broken_controlnet_config_leaves_the_status_line_standing(tiny_model_dir, tmp_path):

    from cnet.engine import load_engine

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (folder / "controlnet" / "canny" / "config.json").write_text("")
    engine = load_engine(model_dir=str(folder), device="cpu")
    assert engine.mismatched() == [] and "preset tiny on cpu" in engine.status()


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="auto, embedded, sd15"):
        resolve_preset("sdxl-turbo", device="cpu")


def test_auto_on_cpu_takes_the_embedded_preset(monkeypatch):
    preset, reason = resolve_preset("auto", device="cpu")
    assert preset.name == "embedded" and reason.startswith("the CPU was asked for")
    monkeypatch.setattr(models, "detect_device", lambda: "cpu")
    preset, reason = resolve_preset("auto")
    assert preset.name == "embedded" and reason.startswith("no GPU found")


def test_auto_on_a_gpu_offline_without_cache_takes_the_embedded_preset(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "hub_cached", lambda repo, files: False)
    monkeypatch.setattr(models, "_hub_reachable", pytest.fail)  # offline: never asked
    preset, reason = resolve_preset("auto", device="cuda")
    assert preset.name == "embedded"
    assert "HF_HUB_OFFLINE" in reason and f"hf download {SD15_BASE}" in reason


def test_auto_on_a_gpu_with_cached_weights_takes_sd15(monkeypatch):
    cached = []
    monkeypatch.setattr(models, "hub_cached", lambda repo, files: cached.append(repo) or True)
    preset, reason = resolve_preset("auto", device="cuda")
    assert preset.name == "sd15" and "cache" in reason and cached == [SD15_BASE]


def test_auto_on_a_gpu_online_takes_sd15_when_the_hub_answers(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_cached", lambda repo, files: False)
    monkeypatch.setattr(models, "_hub_reachable", lambda repo: True)
    assert resolve_preset("auto", device="cuda")[0].name == "sd15"
    monkeypatch.setattr(models, "_hub_reachable", lambda repo: False)
    preset, reason = resolve_preset("auto", device="cuda")
    assert preset.name == "embedded" and "unreachable" in reason


def test_hub_controlnet_missing_offline_names_the_download_command():
    with pytest.raises(ModelMissingError) as error:
        load_controlnet("lllyasviel/control_v11p_sd15_canny", SD15_BASE, "float32", "cpu")
    message = str(error.value)
    assert "lllyasviel/control_v11p_sd15_canny is not in the hub cache" in message
    assert (
        "hf download lllyasviel/control_v11p_sd15_canny config.json "
        "diffusion_pytorch_model.safetensors" in message
    )


def test_a_mistyped_run_folder_is_named_as_no_folder_before_hub_advice(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelMissingError, match="there is no folder runs/nope here, and as a hub"):
        load_controlnet("runs/nope", SD15_BASE, "float32", "cpu")


def test_a_missing_single_file_checkpoint_is_named_as_a_file_not_a_folder(tmp_path):
    path = str(tmp_path / "nothere.safetensors")
    with pytest.raises(ModelMissingError) as error:
        load_controlnet(path, SD15_BASE, "float32", "cpu")
    message = str(error.value)
    assert f"{path} does not exist. Check the path: a single-file checkpoint" in message
    assert "--local-dir" not in message


def test_missing_embedded_model_names_the_restore_command(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "EMBEDDED_DIR", tmp_path / "assets" / "embedded")
    preset, _ = resolve_preset("embedded", device="cpu")
    with pytest.raises(ModelMissingError) as error:
        models.load_base(preset)
    assert str(tmp_path / "assets" / "embedded" / "base") in str(error.value)
    assert models.EMBEDDED_RESTORE_COMMAND in str(error.value)
    assert models.EMBEDDED_TRAIN_COMMAND in str(error.value)


def test_a_model_folder_missing_a_part_says_what_makes_that_part(tmp_path):
    (tmp_path / "preset.json").write_text('{"name": "mine"}')
    for part, kind, makes in [
        (tmp_path / "base", "base", "as `python -m cnet train base` makes"),
        (tmp_path / "controlnet" / "canny", "controlnet", "a training run's <run>/controlnet"),
    ]:
        error = models.model_missing(str(part), "It", f"{part} does not exist", kind)
        assert makes in str(error) and "<hub-id>" not in str(error)
    beside = models.model_missing(str(tmp_path / "mine"), "It", "not there", "controlnet")
    assert "<hub-id>" in str(beside)  # a folder of its own beside a preset.json: no layout part
    (tmp_path / "preset.json").unlink()  # a preset.json is not needed: base/ marks the layout
    (tmp_path / "base").mkdir()
    part = tmp_path / "controlnet" / "seg"
    error = models.model_missing(str(part), "It", f"{part} does not exist", "controlnet")
    assert "a training run's <run>/controlnet" in str(error)


def test_lru_cache_drops_the_least_recently_used():
    cache = LRUCache(2)
    made = []

    def make(key):
        return lambda: made.append(key) or key.upper()

    assert cache.get("a", make("a")) == "A"
    cache.get("b", make("b"))
    cache.get("a", make("a"))  # hit: "a" becomes the most recent
    cache.get("c", make("c"))  # evicts "b"
    assert "a" in cache and "c" in cache and "b" not in cache
    assert made == ["a", "b", "c"] and len(cache) == 2


@pytest.mark.parametrize(
    ("label", "fix"),
    [
        ("The canny ControlNet of preset 'custom'", "(--controlnet CONDITION=PATH), or the base"),
        ("--controlnet runs/canny/controlnet", "Start from a ControlNet trained on this base, or"),
        ("--resume runs/canny/checkpoints/step-0000042", "Give the base that run trained on (--b"),
    ],
)
def test_a_mismatch_says_what_to_give_where_it_was_given(label, fix):
    from cnet.models import GIVE_ANOTHER, mismatch_message
    from cnet.train.controlnet import RESUME_ON_ITS_BASE, START_ON_THIS_BASE

    where = {"--controlnet": START_ON_THIS_BASE, "--resume": RESUME_ON_ITS_BASE}
    given = where.get(label.split()[0], GIVE_ANOTHER)  # as the trainer and the app give it
    message = mismatch_message(label, ["cross_attention_dim 128 (the base's 768)"], given)
    assert message.startswith(f"{label} was made for another base model: cross_attention_dim")
    assert fix in message
