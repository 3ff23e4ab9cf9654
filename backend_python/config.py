"""Engine configuration, read once when the model instance starts.

Values come from the ``parameters`` block of the Triton model config (strings),
with ``MODEL_PATH`` and ``COMPILE_ARTIFACTS_DIR`` from the environment when the
config leaves them empty. Nothing here is read at import time.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Limits:
    """What a single request may ask for; requests over a limit get INVALID_ARG."""

    max_images: int = 4
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_messages: int = 64
    max_stop_strings: int = 8
    max_new_tokens: int = 2048
    default_max_tokens: int = 256
    max_prompt_tokens: int = 2048
    max_videos: int = 1
    max_video_bytes: int = 32 * 1024 * 1024
    max_video_seconds: float = 600.0  # from the container's header, before any frame is decoded
    # Frames of all a request's videos after sampling. Each is decoded at full size before the
    # processor resizes it: frames x max_video_frame_pixels x 3 bytes is what a request may hold.
    max_sampled_frames: int = 256
    max_video_frame_pixels: int = 1920 * 1080
    # Tokens standing for images and video frames, counted from headers before any video is decoded
    # (max_prompt_tokens, when lower, applies here too).
    max_visual_tokens: int = 2048


# Parameters of the slot engine, and what replaced each (a config written for it must fail clearly).
RENAMED = {
    "slots": "max_num_seqs",
    "max_seq_len": "max_model_len",
    "prefills_per_step": "max_num_batched_tokens (a per-step token budget)",
}


@dataclass(frozen=True)
class EngineConfig:
    model_path: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    max_num_seqs: int = 8  # sequences running at once (the decode batch at most)
    max_model_len: int = 4096  # prompt + answer tokens of one sequence
    # Tokens one engine step computes at most: every running sequence's next token, the rest prompt
    # chunks. A long prompt is prefilled over several steps, so it never stalls the streams around it.
    max_num_batched_tokens: int = 2048
    # While other sequences decode, one prompt takes at most this many tokens of a step (0: the whole
    # budget): a long prompt's chunk is GPU work every running stream waits for.
    long_prefill_token_threshold: int = 0
    block_size: int = 16  # tokens per KV cache block
    # KV cache size: > 0 GiB as given; 0: on a GPU, gpu_memory_utilization of its memory less what the
    # weights, the largest step's activations and everything else on the device take; on a CPU, room
    # for max_num_seqs sequences of max_model_len tokens.
    kv_cache_budget_gib: float = 0.0
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True  # reuse the KV blocks of a prompt's longest cached prefix
    prompt_workers: int = 4  # threads that decode images and tokenize a batch of requests
    # The engine in a process of its own (engine_process.py): the model's other threads (prompt
    # workers, responses, Triton's calls) never hold up the loop that launches the steps. false: a
    # thread of the model's process.
    engine_process: bool = True
    # Host memory for processed images and videos kept by content (visual_cache.py): a request that
    # sends one again (every turn of a chat does) skips decoding and processing it. 0: off.
    processor_cache_gib: float = 0.5
    # Device memory for the vision encoder's output kept by content (taken from the KV cache's share): an
    # image that requests repeat is encoded once, as vLLM's encoder cache does, also where the prefix
    # cache holds all but its last tokens (a repeated prompt's uncached tail) and among a burst's prompts.
    # 0: off.
    encoder_cache_gib: float = 0.5
    cuda_graphs: bool = True  # captured decode steps on CUDA devices
    # With cuda_graphs: prefills of up to this many tokens in all run their layers' matrix work as
    # captured graphs, padded to a bucket (prefill_graphs.py; 0: off). On a CPU the padded path runs
    # without graphs.
    prefill_graph_tokens: int = 0
    compile_decode: bool = False  # torch.compile the element-wise work of the decoder layers and vision blocks (CUDA only)
    exact_attention: bool = True  # decode attention reads each sequence's own length (CUDA only)
    # With compile_decode: a folder of compile artifacts (compile_artifacts.py). A start loads the one
    # made for this GPU, library versions, checkpoint and release, or writes it after compiling.
    compile_artifacts_dir: str = ""
    image_min_pixels: int = 0  # 0: the processor's own defaults
    image_max_pixels: int = 0
    # Video frame sampling, as the checkpoint's video processor does it (0: the processor's own value):
    # frames per second, at least min and at most max frames; min and max pixels of all sampled frames
    # together (the processor's size.shortest_edge and size.longest_edge), each frame capped as
    # Qwen's reference does (cap_pixels_per_frame).
    video_fps: float = 0.0
    video_min_frames: int = 0
    video_max_frames: int = 0
    video_min_pixels: int = 0
    video_max_pixels: int = 0
    stream_interval_ms: float = 0.0  # coalesce streamed deltas (0: every token)
    decode_during_prefill: bool = False  # between a prefill's layers, run the running sequences' captured decode steps
    # With it, on a GPU: a decode step goes in once the streams have waited this many decode steps (the
    # prefill runs in between, its layers paced to the device's progress); 0: whenever the one before has
    # run, the host unpaced (a long prompt's chunk then goes in whole between two steps).
    decode_gap_during_prefill: float = 2.0
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_parameters(
        cls, parameters: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> "EngineConfig":
        """Build from Triton's ``parameters`` (``{"key": {"string_value": "..."}}`` or plain strings)."""
        environ = os.environ if environ is None else environ
        flat = {k: _string_value(v) for k, v in parameters.items()}
        flat = {k: v for k, v in flat.items() if v != ""}
        renamed = sorted(set(flat) & set(RENAMED))
        if renamed:
            raise ValueError("renamed model parameters: " + "; ".join(f"{k!r} is now {RENAMED[k]}" for k in renamed))
        unknown = set(flat) - _field_names(cls) - _field_names(Limits)
        if unknown:
            raise ValueError(f"unknown model parameters: {sorted(unknown)}")
        engine = {k: _coerce(cls, k, v) for k, v in flat.items() if k in _field_names(cls)}
        limits = {k: _coerce(Limits, k, v) for k, v in flat.items() if k in _field_names(Limits)}
        engine.setdefault("model_path", environ.get("MODEL_PATH", ""))
        engine.setdefault("compile_artifacts_dir", environ.get("COMPILE_ARTIFACTS_DIR", ""))
        config = cls(**engine, limits=Limits(**limits))
        config.validate()
        return config

    @property
    def processor_cache_bytes(self) -> int:
        """The processor cache's budget, which the engine process's copy of its pixels shares."""
        return int(self.processor_cache_gib * 2**30)

    def validate(self) -> None:
        if not self.model_path:
            raise ValueError(
                "no model: set the model parameter 'model_path' or the environment variable "
                "MODEL_PATH to a Hugging Face checkpoint folder (or hub id)"
            )
        if min(self.max_num_seqs, self.max_num_batched_tokens, self.block_size, self.prompt_workers) < 1 \
                or self.max_model_len < 16:
            raise ValueError("max_num_seqs, max_model_len, max_num_batched_tokens, block_size and prompt_workers "
                             "must be positive")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must hold a decode step of "
                             f"max_num_seqs ({self.max_num_seqs}) sequences")
        if self.limits.max_prompt_tokens + 1 > self.max_model_len:
            raise ValueError("max_prompt_tokens must leave room for an answer within max_model_len")
        if self.processor_cache_gib < 0 or self.encoder_cache_gib < 0:
            raise ValueError("processor_cache_gib and encoder_cache_gib must be >= 0 (0: no such cache)")
        if self.decode_gap_during_prefill < 0:
            raise ValueError("decode_gap_during_prefill must be >= 0 (decode steps; 0: unpaced)")
        if self.prefill_graph_tokens < 0:
            raise ValueError("prefill_graph_tokens must be >= 0 (0: no prefill graphs)")
        if not 0.0 < self.gpu_memory_utilization <= 1.0 or self.kv_cache_budget_gib < 0:
            raise ValueError("gpu_memory_utilization must be in (0, 1] and kv_cache_budget_gib >= 0")
        if self.video_fps < 0 or self.video_min_frames == 1 or min(self.video_min_frames, self.video_max_frames) < 0:
            raise ValueError("video_fps must be >= 0 and video_min_frames 0 (the processor's) or at least 2: a "
                             "video's frames go to the encoder in pairs")


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.name != "limits"}


def _string_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("string_value", ""))
    return str(value)


def _coerce(cls: type, name: str, raw: str) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(cls)}[name]
    try:
        if kind in ("bool", bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if kind in ("int", int):
            return int(raw)
        if kind in ("float", float):
            return float(raw)
        return raw
    except ValueError:
        raise ValueError(f"model parameter {name!r}: {raw!r} is not a valid {kind}") from None
