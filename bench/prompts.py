"""`python -m bench.prompts`: the host's time to build a prompt for an image or a video sent again, with and
without the processor cache (``processor_cache_gib``), and the frontend's check of an image, every time
and sent again (remembered by digest); with ``--triton``, also a three-turn chat about
a 1024x1024 JPEG through two real Triton servers on this machine (the tiny checkpoint, the GPU
config's image range), the cache off on one and on on the other, rounds alternating between them.

A chat resends its images and videos with every turn. The host work is the checkpoint's processor and
tokenizer (the tiny checkpoint carries Qwen3-VL's own), with the GPU config's image and video settings
and pixels in bfloat16, so the figures hold for the 4B model on the same CPU. One prompt worker, as
each of the server's prompt workers builds one prompt. Prints a table.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from bench.gpu import gpu_config, log
from bench.stats import table


def _photo(width: int, height: int, seed: int, kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 30 + seed).convert("RGB").save(buffer, kind, quality=90)
    return buffer.getvalue()


def _request(images: list[bytes], videos: list[bytes]):
    from backend_python.request import ChatMessage, GenerationRequest, SamplingParams

    parts = [{"type": "video", "video": i} for i in range(len(videos))] \
        + [{"type": "image", "image": i} for i in range(len(images))] + [{"type": "text", "text": "Describe it."}]
    return GenerationRequest(messages=(ChatMessage("user", tuple(parts)),), images=tuple(images),
                             videos=tuple(videos), sampling=SamplingParams(max_tokens=16))


def _median_ms(call, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def frontend_checks(media: dict, rounds: int) -> None:
    """The frontend's check of each image (decoded whole for corruption), every time and sent again."""
    from frontend.images import CheckedImages, ImageLimits, check_image

    limits = ImageLimits(max_bytes=20 * 2**20, max_pixels=16_777_216)
    rows = []
    for name, request in media.items():
        for data in request.images:
            checked = CheckedImages(limits)
            checked.check(data, param="bench")
            every = _median_ms(lambda: check_image(data, limits, param="bench"), rounds)
            again = _median_ms(lambda: checked.check(data, param="bench"), rounds)
            rows.append({"image": name, "every time, ms": f"{every:.1f}", "sent again, ms": f"{again:.2f}"})
    print(f"\nThe frontend's check of an image (header, then decoded whole), p50 of {rounds}:")
    print(table(rows))


QUESTIONS = ["Describe this picture.", "What colours dominate it?", "Give it a short title."]


def through_triton(rounds: int) -> None:
    """Time to first token of each turn, the prefix cache on in both servers (as configured)."""
    from clients.triton_stream import build_inputs, stream
    from stack.ports import free_port
    from stack.triton import TritonServer

    servers = {gib: TritonServer(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                                 parameters={"processor_cache_gib": gib, "image_max_pixels": "16777216"},
                                 log_file=f"var/log/bench-prompts-triton-{gib}.log").start(timeout=300)
               for gib in ("0", "0.5")}
    ttft: dict[str, list[list[float]]] = {gib: [[] for _ in QUESTIONS] for gib in servers}
    try:
        for r in range(-1, rounds):  # round -1 warms both servers up
            photo = _photo(1024, 1024, 10 + r, "JPEG")  # a new picture each round: its first turn misses
            for gib, server in servers.items():
                history: list[dict] = []
                for k, question in enumerate(QUESTIONS):
                    content = ([{"type": "image", "image": 0}] if k == 0 else []) + [{"type": "text", "text": question}]
                    messages = [*history, {"role": "user", "content": content}]
                    result = stream(server.grpc_url, build_inputs(messages, [photo], max_tokens=16))
                    if result.error is not None:
                        raise RuntimeError(result.error)
                    if r >= 0:
                        ttft[gib][k].append(result.ttft)
                    history = [*messages, {"role": "assistant", "content": result.text}]
    finally:
        for server in servers.values():
            server.stop()
    rows = [{"turn": str(k + 1), "TTFT p50, cache off, ms": f"{1000 * statistics.median(ttft['0'][k]):.1f}",
             "TTFT p50, cache on, ms": f"{1000 * statistics.median(ttft['0.5'][k]):.1f}"}
            for k in range(len(QUESTIONS))]
    print(f"\nA three-turn chat about a 1024x1024 JPEG through Triton on this machine, {rounds} rounds, "
          "prefix cache on in both:")
    print(table(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--triton", action="store_true", help="also the chat through Triton")
    args = parser.parse_args()
    from backend_python.checkpoint import build as build_checkpoint
    from backend_python.loader import load
    from backend_python.prompt import PromptBuilder
    from tests.samples.videos import clip

    torch.set_num_threads(1)
    path = Path(__file__).resolve().parents[1] / "var" / "checkpoints" / "tiny"  # make run's checkpoint
    if not (path / "config.json").exists():
        build_checkpoint(path)
    loaded = load(gpu_config(model_path=str(path), device="cpu", dtype="float32"))
    builders = {gib: PromptBuilder(loaded.processor, gpu_config(model_path=str(path), processor_cache_gib=gib),
                                   pixel_dtype=torch.bfloat16)
                for gib in ("0", "0.5")}
    media = {
        "448x448 PNG (the GPU bench's image)": _request([_photo(448, 448, 0, "PNG")], []),
        "1024x1024 JPEG": _request([_photo(1024, 1024, 1, "JPEG")], []),
        "1920x1080 JPEG (a screenshot's size)": _request([_photo(1920, 1080, 2, "JPEG")], []),
        "4032x3024 JPEG (a phone photo's size)": _request([_photo(4032, 3024, 3, "JPEG")], []),
        "10-second 448x448 clip, 30 fps": _request([], [clip(10.0, fps=30, size=(448, 448))]),
    }
    rows = []
    for name, request in media.items():
        rounds = args.rounds if request.images else max(2, args.rounds // 3)
        without = _median_ms(lambda: builders["0"].build(request), rounds)
        tokens = builders["0.5"].build(request).visual_tokens  # the first turn: processed and kept
        again = _median_ms(lambda: builders["0.5"].build(request), rounds)
        rows.append({"media, with one short question": name, "visual tokens": str(tokens),
                     "every time (no cache), ms": f"{without:.1f}", "sent again (cache), ms": f"{again:.1f}",
                     "faster": f"{without / again:.0f}x"})
        log(f"{name}: {without:.1f} ms without the cache, {again:.1f} ms sent again")
    print(f"\nBuilding one prompt on {platform.processor() or platform.machine()} ({torch.get_num_threads()} "
          f"torch thread), p50 of {args.rounds} (videos: {max(2, args.rounds // 3)}):")
    print(table(rows))
    frontend_checks(media, args.rounds)
    if args.triton:
        through_triton(args.rounds)


if __name__ == "__main__":
    main()
