"""Where annotator weights live, whether a backend can run, and how to fetch what is missing.

All weights sit in one local annotators folder (`annotators_dir()`): the lllyasviel/Annotators
files flat in it, exactly as `hf download lllyasviel/Annotators <file> --local-dir <dir>`
leaves them, and transformers models in a subfolder each. Nothing is downloaded implicitly:
`Weights.fetch` is only called on request (`python -m cnet detect --fetch`) and refuses when
HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from cnet.models import hub_offline, offline_variable

ANNOTATORS_REPO = "lllyasviel/Annotators"
DEFAULT_ANNOTATORS_DIR = Path("~/.cache/cnet/annotators")

_annotators_dir: Path | None = None


def set_annotators_dir(path: str | os.PathLike | None) -> None:
    """Use `path` for annotator weights from now on (None: back to the environment/default)."""
    global _annotators_dir
    _annotators_dir = None if path is None else Path(path).expanduser()


def annotators_dir() -> Path:
    """The annotators folder: set_annotators_dir(), else $CNET_ANNOTATORS_DIR, else the default."""
    if _annotators_dir is not None:
        return _annotators_dir
    return Path(os.environ.get("CNET_ANNOTATORS_DIR") or DEFAULT_ANNOTATORS_DIR).expanduser()


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""  # why not, and the exact command that fixes it


@dataclass(frozen=True)
class Weights:
    """Files a backend loads, from a hub repo, into `subfolder` of the annotators folder.

    An entry "a|b" is satisfied by either file (e.g. safetensors or a .bin checkpoint).
    """

    repo: str
    files: tuple[str, ...]
    subfolder: str = ""

    def folder(self, root: Path | None = None) -> Path:
        root = annotators_dir() if root is None else root
        return root / self.subfolder if self.subfolder else root

    def missing(self, root: Path | None = None) -> list[str]:
        folder = self.folder(root)
        return [
            entry
            for entry in self.files
            if not any((folder / name).is_file() for name in entry.split("|"))
        ]

    def fetch_command(self, root: Path | None = None) -> str:
        folder = self.folder(root)
        if self.subfolder:  # a whole transformers model folder
            return f"hf download {self.repo} --local-dir {folder}"
        names = " ".join(entry.split("|")[0] for entry in self.missing(root) or self.files)
        return f"hf download {self.repo} {names} --local-dir {folder}"

    def availability(self, root: Path | None = None) -> Availability:
        missing = self.missing(root)
        if not missing:
            return Availability(True)
        files = ", ".join(entry.replace("|", " or ") for entry in missing)
        noun = "weights file" if len(missing) == 1 else "weights files"
        return Availability(
            False,
            f"{noun} {files} not found in {self.folder(root)}; "
            f"fetch with: {self.fetch_command(root)}",
        )

    def fetch(self, root: Path | None = None) -> Path:
        """Download the missing files into the annotators folder (explicit request only)."""
        folder = self.folder(root)
        if hub_offline():
            raise RuntimeError(
                f"{offline_variable()} is set: not downloading {self.repo}. "
                f"Unset it, or run elsewhere: {self.fetch_command(root)}"
            )
        from huggingface_hub import hf_hub_download, snapshot_download

        folder.mkdir(parents=True, exist_ok=True)
        if self.subfolder:
            snapshot_download(self.repo, local_dir=folder)
        else:
            for entry in self.missing(root):
                hf_hub_download(self.repo, entry.split("|")[0], local_dir=folder)
        return folder


def package_availability(module: str, pip_name: str) -> Availability:
    """Whether `module` is importable, found without importing it (imports can take seconds)."""
    if importlib.util.find_spec(module) is not None:
        return Availability(True)
    return Availability(
        False, f"Python package {pip_name} is not installed: pip install {pip_name}"
    )
