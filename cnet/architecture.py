"""Small Stable Diffusion family models: the embedded preset's architecture, and tiny test models.

Every model here is the same class SD 1.5 uses (AutoencoderKL, CLIPTextModel + CLIPTokenizer,
UNet2DConditionModel, ControlNetModel), only narrower and shallower, so the loading and sampling
code cannot tell them apart from the real thing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

# The special tokens and the end-of-word marker CLIP's byte-level BPE uses.
BOS, EOS, END_OF_WORD = "<|startoftext|>", "<|endoftext|>", "</w>"


@dataclass(frozen=True)
class ModelConfig:
    """Widths and depths of one SD-family model (VAE, text encoder, UNet, ControlNet)."""

    sample_size: int = 128  # image side in pixels the UNet is trained at
    # 4 blocks -> 8x down-sampling, as SD. Narrow: the full-resolution convolutions dominate the
    # cost of a CPU training step, and flat-shaded scenes need few channels to reconstruct.
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    max_text_length: int = 77
    # Sized for the weights budget: the base UNet plus seven ControlNets (each about half a UNet)
    # stored in fp16 stay well under 80 MB.
    unet_channels: tuple[int, ...] = (48, 96, 144)
    unet_layers_per_block: int = 1
    unet_heads: int = 4
    norm_num_groups: int = 16
    controlnet_embedding_channels: tuple[int, ...] = (16, 32, 64, 128)
    tokenizer_merges: int = 2000

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


SMALL = ModelConfig()
TINY = ModelConfig(
    sample_size=64,
    vae_channels=(8, 8, 8, 8),
    text_width=32,
    text_layers=2,
    text_heads=2,
    unet_channels=(16, 32),
    unet_heads=2,
    norm_num_groups=8,
    controlnet_embedding_channels=(8, 8, 8, 16),
    tokenizer_merges=200,
)


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _learn_merges(words: Counter[str], num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair of symbols."""
    to_unicode = _byte_to_unicode()
    vocab = Counter()
    for word, count in words.items():
        symbols = [to_unicode[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        vocab[tuple(symbols)] += count
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in vocab.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged = Counter()
        for symbols, count in vocab.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += count
        vocab = merged
    return merges


def build_tokenizer(
    corpus: Iterable[str], out_dir: str | Path, num_merges: int = 2000, max_length: int = 77
):
    """Write a CLIP tokenizer learned from `corpus` (sentences) to `out_dir` and load it.

    The vocabulary holds every byte symbol, alone and word-final, so any word still tokenizes;
    the merges learned from the corpus make its own words single tokens.
    """
    from transformers import CLIPTokenizer

    words = Counter(w for line in corpus for w in line.lower().split())
    merges = _learn_merges(words, num_merges)
    base = list(_byte_to_unicode().values())
    tokens = base + [s + END_OF_WORD for s in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    with open(out_dir / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    tokenizer = CLIPTokenizer(
        str(out_dir / "vocab.json"),
        str(out_dir / "merges.txt"),
        pad_token=EOS,
        model_max_length=max_length,
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_vae(config: ModelConfig):
    """A randomly initialised AutoencoderKL of these widths."""
    from diffusers import AutoencoderKL

    n_vae = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=config.vae_channels,
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.sample_size,
    )


def build_components(config: ModelConfig, tokenizer, zero_terminal_snr: bool = True) -> dict:
    """Randomly initialised VAE, text encoder and UNet, and the DDPM noise schedule."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = build_vae(config)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_width,
            intermediate_size=4 * config.text_width,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_text_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    n_unet = len(config.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=config.sample_size // config.vae_scale_factor,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n_unet - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n_unet - 1),
        block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers_per_block,
        cross_attention_dim=config.text_width,
        # diffusers' SD-era name: this value is the number of heads, as SD 1.5's 8.
        attention_head_dim=config.unet_heads,
        norm_num_groups=config.norm_num_groups,
    )
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": noise_schedule(zero_terminal_snr),
    }


def noise_schedule(zero_terminal_snr: bool = True):
    """SD 1.5's DDPM betas, by default rescaled to zero terminal SNR (Lin et al., 2024).

    SD 1.5's schedule leaves 7 % of the image in its noisiest step. On a 16 x 16 latent the mean
    of that leftover is as large as the mean of the noise, so a base trained on it reads the
    background colour from the noise and ignores the prompt: sampled from pure noise, our first
    base painted each background from its seed. At zero terminal SNR the noisiest step holds no
    image; the model then predicts v (predicting the noise is trivial there), and sampling starts
    at that step ("trailing" spacing).

    `steps_offset` 1 is SD 1.5's; "trailing" spacing does not read it, but diffusers' pipelines
    warn about any other value (and set it to 1 themselves).
    """
    from diffusers import DDPMScheduler

    rescaled = (
        {
            "rescale_betas_zero_snr": True,
            "prediction_type": "v_prediction",
            "timestep_spacing": "trailing",
        }
        if zero_terminal_snr
        else {}
    )
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        **rescaled,
    )


def build_controlnet(unet, config: ModelConfig):
    """The trainable copy: the UNet's encoder and middle block, joined by zero convolutions."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=config.controlnet_embedding_channels
    )


def save_pipeline_dir(components: dict, out_dir: str | Path, config: ModelConfig) -> Path:
    """Save the components as one diffusers pipeline folder (model_index.json + subfolders)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "architecture.json").write_text(json.dumps(asdict(config), indent=2))
    return out_dir
