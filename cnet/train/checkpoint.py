"""Checkpoints that resume exactly: weights, optimizer, loop state and every random number stream.

A checkpoint is a folder `<output_dir>/checkpoints/step-0000500/` holding
  <model>/            one diffusers / transformers folder per trained model (safetensors)
  optimizer.pt        the optimizer state (and grad-scaler state under fp16)
  state.json          the loop's own state: step, loss history, mode flags, config
  rng-<process>.pt    each process's random states (python, numpy, torch, CUDA, named generators)
It is written under a temporary name and renamed when complete, so a run killed while saving
never leaves a half-written checkpoint for `--resume latest` to pick. A run's export goes the same
way (commit_export).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from cnet.cli.options import folder_problem

CHECKPOINTS = "checkpoints"
STATE = "state.json"
DECODER_CHECKPOINT = "checkpoint.pt"  # the decoder fine-tune keeps one file, overwritten


def changed_settings(saved: dict, now: dict, ignore: tuple[str, ...] = ()) -> dict:
    """{setting: (was, now)} for the settings a checkpoint was saved with that differ now (both as
    JSON would hold them, so tuples and lists compare equal)."""
    now = json.loads(json.dumps(now))
    return {
        key: (saved[key], value)
        for key, value in now.items()
        if key in saved and saved[key] != value and key not in ignore
    }


# Settings of one invocation, not of the training: `train embedded` gives each stage what is
# left of its --max-minutes, a new figure at every resume of the same command.
PER_INVOCATION = ("resume", "max_minutes")


def changes_note(saved: dict, now: dict, ignore: tuple[str, ...] = ()) -> str:
    """The line a resume prints for the settings that differ from its checkpoint's ("" if none):
    a flag left out of the resumed command takes its default, not the checkpoint's value."""
    different = changed_settings(saved, now, PER_INVOCATION + ignore)
    return f"Settings changed since that checkpoint (was, now): {different}" if different else ""


def refuse_reshaping(saved: dict, now: dict, keys: tuple[str, ...], checkpoint: Path) -> None:
    """Refuse a resume that changes a setting the checkpoint's weights are shaped by (torch would
    fail to load them with a page of size mismatches, or the record would name the wrong one)."""
    for key, (was, _) in changed_settings(saved, now).items():
        if key in keys:
            flag = "--" + key.replace("_", "-")
            raise ValueError(
                f"{checkpoint} was made with {flag} {was}, which shapes its weights: give "
                f"{flag} {was} to go on from it, or start a new run in another --output-dir."
            )


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:07d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(
        path
        for path in root.glob("step-*")
        if path.name[len("step-") :].isdigit() and (path / STATE).is_file()  # not *.partial
    )


def check_writable(output_dir: str | Path) -> None:
    """Refuse an output folder that cannot be written now, not at the run's first checkpoint."""
    if problem := folder_problem(output_dir):
        raise ValueError(f"Cannot write {output_dir}: {problem}; choose another --output-dir.")


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`resume` is None, "latest" (the newest checkpoint of output_dir, if any) or a folder.

    A run is refused before it starts where it could not write its checkpoints, or where
    output_dir holds checkpoints after the one resumed (after none: a fresh run, or one resumed
    from another folder): pruning would delete them or this run's own, and a later
    --resume latest would continue whichever run is ahead."""
    check_writable(output_dir)
    found = list_checkpoints(output_dir)
    if resume is None:
        path = None
    elif resume == "latest":
        path = found[-1] if found else None
    else:
        path = Path(resume)
        if not (path / STATE).is_file():
            raise FileNotFoundError(
                f"{path} is not a checkpoint (no {STATE} in it). Checkpoints are the folders under "
                f"{Path(output_dir) / CHECKPOINTS}; pass one of them, or --resume latest."
            )
    resolved = [checkpoint.resolve() for checkpoint in found]
    start = resolved.index(path.resolve()) + 1 if path and path.resolve() in resolved else 0
    if later := found[start:]:
        whose = "another run's checkpoints"
        if start:
            whose = f"checkpoints past {found[start - 1].name}, the one this run resumes"
        names = later[0].name if len(later) == 1 else f"{later[0].name} to {later[-1].name}"
        raise ValueError(
            f"{Path(output_dir) / CHECKPOINTS} holds {whose} ({len(later)}: {names}): continue "
            "from the newest with --resume latest, or move them away (or choose another "
            "--output-dir) first."
        )
    return path


def read_state(directory: Path) -> dict:
    return json.loads((directory / STATE).read_text())


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load the safetensors file(s) that save_pretrained wrote in `folder` into `model`."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No .safetensors weights in {folder}: the checkpoint is partial.")
    weights = {}
    for file in files:
        weights.update(load_file(file))
    model.load_state_dict(weights)


def partial_of(folder: Path) -> Path:
    """Where a new `folder` is written before it is renamed into place."""
    return folder.with_name(folder.name + ".partial")


def put_in_place(partial: Path, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def commit_export(output_dir: Path, summary: dict, folders: list[Path]) -> None:
    """Rename a run's exported folders, each written as its partial_of, into place, then write
    its training.json. The old training.json goes first and the new one comes last, so a run
    killed in between reads as unfinished (its command with --resume latest exports again),
    never as new weights beside an old record."""
    record = output_dir / "training.json"
    partial_of(record).write_text(json.dumps(summary, indent=2))
    record.unlink(missing_ok=True)
    for folder in folders:
        put_in_place(partial_of(folder), folder)
    partial_of(record).rename(record)


def save_checkpoint(
    accelerator,
    directory: Path,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict,
    generators: dict[str, torch.Generator],
    keep: int | None = None,
) -> Path:
    """Write a checkpoint from every process (each saves its own random states); then delete
    the older ones beyond the newest `keep`, and what saves killed midway left."""
    partial = partial_of(directory)
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name, model in models.items():
            accelerator.unwrap_model(model).save_pretrained(partial / name, safe_serialization=True)
        for name, optimizer in optimizers.items():
            torch.save(optimizer.state_dict(), partial / f"{name}.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), partial / "scaler.pt")
        (partial / STATE).write_text(json.dumps(state))
    accelerator.wait_for_everyone()
    torch.save(rng_state(generators), partial / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        put_in_place(partial, directory)
        for stale in directory.parent.glob("step-*.partial"):
            shutil.rmtree(stale)
        if keep:  # counted up to this one: a later checkpoint is never this run's to delete
            older = [
                p for p in list_checkpoints(directory.parent.parent) if p.name < directory.name
            ]
            for old in older[: max(0, len(older) + 1 - keep)]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return directory


def load_checkpoint(
    accelerator,
    directory: Path,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
) -> dict:
    """Restore what save_checkpoint wrote; returns the loop state."""
    saved_by = len(list(directory.glob("rng-*.pt")))
    if saved_by != accelerator.num_processes:
        raise ValueError(
            f"{directory} was saved by {saved_by} process(es); resume it with the same number "
            f"(accelerate launch --num_processes {saved_by})."
        )
    for name, model in models.items():
        load_weights(accelerator.unwrap_model(model), directory / name)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(torch.load(directory / f"{name}.pt", map_location="cpu"))
    if accelerator.scaler is not None and (directory / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(torch.load(directory / "scaler.pt"))
    # Our own file: python's and numpy's random states are plain Python objects, not tensors.
    rng_file = directory / f"rng-{accelerator.process_index}.pt"
    set_rng_state(torch.load(rng_file, weights_only=False), generators)
    return read_state(directory)
