"""A condition's ControlNet stored as a low-rank difference from the shared one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import fine_tune_of

from cnet.lowrank import (
    LOWRANK_CONFIG,
    LOWRANK_WEIGHTS,
    add_difference,
    low_rank_difference,
    lowrank_start,
    write_lowrank,
)
from cnet.models import config_at_hand, load_controlnet, missing_weights


def weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"conv.weight": (8, 4, 3, 3), "proj.weight": (16, 16), "conv.bias": (8,)}
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def test_a_change_of_the_kept_rank_comes_back_exactly_and_is_stored_small():
    start = weights(0)
    u, v = torch.randn(8, 2), torch.randn(2, 36)
    tuned = {
        "conv.weight": start["conv.weight"] + (u @ v).reshape(8, 4, 3, 3),
        "proj.weight": start["proj.weight"] + torch.randn(16, 16),  # full rank
        "conv.bias": start["conv.bias"] + 1.0,
    }

    difference = low_rank_difference(tuned, start, rank=2)

    assert difference["conv.weight.up"].shape == (8, 2)  # 88 numbers instead of 288
    assert difference["conv.weight.down"].shape == (2, 36)
    assert difference["proj.weight.up"].shape == (16, 2)
    assert difference["conv.bias"].shape == (8,)  # a vector is kept whole
    restored = add_difference(start, difference)
    torch.testing.assert_close(restored["conv.weight"], tuned["conv.weight"])
    torch.testing.assert_close(restored["conv.bias"], tuned["conv.bias"])
    # a full-rank change loses exactly what lies beyond its two largest directions
    change = tuned["proj.weight"] - start["proj.weight"]
    lost = torch.linalg.svdvals(change)[2:].square().sum().sqrt()
    error = torch.linalg.matrix_norm(restored["proj.weight"] - tuned["proj.weight"])
    torch.testing.assert_close(error, lost)


def test_a_weight_smaller_than_its_factors_is_kept_whole():
    start = {"w": torch.zeros(4, 4)}
    difference = low_rank_difference({"w": torch.ones(4, 4)}, start, rank=2)  # 16 <= 2 * 8
    assert set(difference) == {"w"}
    torch.testing.assert_close(add_difference(start, difference)["w"], torch.ones(4, 4))


def test_differences_of_other_architectures_are_refused():
    start = weights(0)
    with pytest.raises(ValueError, match="different weights"):
        low_rank_difference({"conv.weight": start["conv.weight"]}, start, rank=2)
    with pytest.raises(ValueError, match="not a fine-tune"):
        low_rank_difference({**start, "proj.weight": torch.zeros(16, 8)}, start, rank=2)
    difference = low_rank_difference(weights(1), start, rank=2)
    with pytest.raises(ValueError, match="no change for extra"):
        add_difference({**start, "extra": torch.zeros(3)}, difference)
    with pytest.raises(ValueError, match="its start lacks"):
        add_difference(start, {**difference, "gone": torch.zeros(3)})
    with pytest.raises(ValueError, match="at least 1"):
        low_rank_difference(start, start, rank=0)


@pytest.fixture
def lowrank_folder(tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(a rank-16 folder beside its start in a preset layout, the fine-tune it stores)"""
    start = tmp_path / "preset" / "controlnet" / "all"
    shutil.copytree(tiny_model_dir / "controlnet" / "canny", start)
    tuned = fine_tune_of(start, tmp_path / "tuned", rank=3)
    folder = start.with_name("canny")
    write_lowrank(str(folder), str(tuned), str(start), rank=16)  # paths as text work too
    return folder, tuned


def test_a_lowrank_folder_names_its_start_relative_to_itself(lowrank_folder):
    folder, _ = lowrank_folder
    assert json.loads((folder / LOWRANK_CONFIG).read_text()) == {
        "starts_from": "../all",
        "rank": 16,
    }
    assert sorted(p.name for p in folder.iterdir()) == [LOWRANK_CONFIG, LOWRANK_WEIGHTS]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_lowrank_folder_loads_as_the_fine_tune(lowrank_folder, tiny_model_dir, dtype):
    from diffusers import ControlNetModel

    folder, tuned = lowrank_folder
    base = str(tiny_model_dir / "base")
    model = load_controlnet(str(folder), base, dtype, "cpu")
    expected = ControlNetModel.from_pretrained(tuned).state_dict()
    start = load_controlnet(str(folder.with_name("all")), base, dtype, "cpu")
    assert model.dtype == getattr(torch, dtype) and not model.training
    tolerance = {"float32": 1e-5, "float16": 2e-3}[dtype]
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(weight.float(), expected[name], atol=tolerance, rtol=0)
        assert not torch.equal(weight, start.state_dict()[name])  # every weight was moved


def test_a_lowrank_folder_without_its_start_says_which_is_missing(lowrank_folder, tmp_path):
    from cnet.models import ModelMissingError

    folder, _ = lowrank_folder
    start = folder.with_name("all")
    shutil.rmtree(start)
    detail = missing_weights(str(folder), "controlnet")
    assert detail == f"{folder} is a low-rank difference from {start}, and {start} does not exist"
    with pytest.raises(ModelMissingError, match="low-rank difference"):
        load_controlnet(str(folder), str(tmp_path), "float32", "cpu")


def test_a_lowrank_folder_without_its_weights_or_start_is_named(lowrank_folder):
    folder, _ = lowrank_folder
    (folder / LOWRANK_WEIGHTS).unlink()
    assert missing_weights(str(folder), "controlnet") == f"{folder} has no {LOWRANK_WEIGHTS}"
    (folder / LOWRANK_CONFIG).write_text('{"rank": 16}')
    with pytest.raises(ValueError, match='names no "starts_from" folder'):
        lowrank_start(folder)


@pytest.mark.parametrize("damaged", ['{"starts_from": "../all", "ra', "[16]"])
def test_a_damaged_lowrank_json_is_named_as_missing_weights_never_a_traceback(
    lowrank_folder, tmp_path, damaged
):
    from cnet.models import ModelMissingError

    folder, _ = lowrank_folder
    (folder / LOWRANK_CONFIG).write_text(damaged)
    detail = missing_weights(str(folder), "controlnet")  # what the app's status line reads
    assert config_at_hand(str(folder)) is None  # and its check for another base's ControlNets
    assert detail.startswith(f"{folder / LOWRANK_CONFIG} ") and "restore the file" in detail
    with pytest.raises(ModelMissingError, match=str(folder / LOWRANK_CONFIG)) as error:
        load_controlnet(str(folder), str(tmp_path), "float32", "cpu")
    assert str(error.value).endswith("restore the file.")  # nothing after it to contradict it


def test_a_difference_is_taken_between_whole_controlnet_folders(lowrank_folder, tmp_path):
    folder, tuned = lowrank_folder
    with pytest.raises(FileNotFoundError, match="holds no diffusion_pytorch_model.safetensors"):
        write_lowrank(tmp_path / "again", tuned, folder, rank=16)  # its start is itself low-rank
