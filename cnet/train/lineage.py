"""The runs behind a trained model folder, oldest first, in its `lineage.json`.

A run that starts from a model folder (`--controlnet DIR`, `--base-init DIR`) takes that
folder's record and adds itself, so a model card can list every run behind the weights, not
just the last one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

LINEAGE_FILE = "lineage.json"
# Stands for the runs behind a start folder that has no record (a hub model, an older export).
UNRECORDED = {"trainer": "unrecorded"}


def recorded_runs(folder: str | Path) -> list[dict]:
    """The runs a model folder records, oldest first; [] when it records none."""
    path = Path(folder) / LINEAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def read_lineage(start: str | Path | None) -> list[dict]:
    """What a run inherits from the folder it starts from: [] for a run from scratch."""
    if not start:
        return []
    return recorded_runs(start) or [dict(UNRECORDED)]


def continues(tuned: str | Path, start: str | Path) -> bool:
    """Whether the model folder `tuned` was trained from `start` as it is now: its record is
    start's runs, then its own."""
    return recorded_runs(tuned)[:-1] == read_lineage(start)


def lineage_digest(folder: str | Path) -> str | None:
    """A fingerprint of the runs `folder` records (None when it records none, as a hub model):
    two folders with the same one were trained by the same runs."""
    runs = recorded_runs(folder)
    text = json.dumps(runs, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16] if runs else None


def models_record(base: str | Path, controlnets: Mapping[str, str | Path]) -> dict[str, dict]:
    """{condition: {"base": digest, "controlnet": digest}}: which models make a condition's
    images, as an evaluation records them (`lineage_digest`)."""
    base_digest = lineage_digest(base)
    return {
        condition: {"base": base_digest, "controlnet": lineage_digest(folder)}
        for condition, folder in controlnets.items()
    }


def write_lineage(folder: Path, earlier: list[dict], run: dict) -> None:
    (folder / LINEAGE_FILE).write_text(json.dumps([*earlier, run], indent=2) + "\n")


def run_record(trainer: str, summary: dict, settings: tuple[str, ...], **more) -> dict:
    """One run, as lineage.json records it: its training.json's figures and the `settings` of
    its config that say how it trained (no local paths: the data is named by its folder)."""
    config = summary["config"]
    return {
        "trainer": trainer,
        "data": Path(config["data"]).name,
        "steps": summary["steps"],
        **{name: config[name] for name in settings},
        **more,
        "mean_loss_last_100": summary["mean_loss_last_100"],
        "device": summary["device"],
    }


def last_gain(gains: dict[str, float]) -> dict | None:
    if not gains:
        return None
    step = max(gains, key=int)
    return {"step": int(step), "value": gains[step]}
