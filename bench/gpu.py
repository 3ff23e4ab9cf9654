"""`make bench-gpu`: the generation engine on one NVIDIA GPU, alone and through the real Triton.

    python -m bench.gpu [--model PATH] [--parts checks engine ab served triton] [--clients 1 64 128] [--tokens 512]
                        [--rates 8 16 24] [--prefix-cache off on] [--engine-process on off]
                        [--slot-tree PATH] [--peer FILE ...]

Without MODEL_PATH (or --model) it builds Qwen3-VL-4B-Instruct's architecture with
random weights on local disk (same shapes, same cost). Its parts:
- checks: the paged decode kernels and the prefill's attention after a cached prefix against
  references, and the engine's greedy tokens against transformers' generate in float32 (prompts
  in chunks, then from the prefix cache, then one decoding while others are prefilled);
- engine: the engine alone with the GPU config: one stream and bursts of 64 and 128 streams of
  512 tokens, a 10-second 448x448 video (30 fps) at the config's sampling alone and 16 of them at
  once (first tokens counted from the request's arrival: decoding the video included), a
  32,768-token prompt alone and beside 64 decoding streams, a 131,072-token prompt, three turns
  of a chat about a 1024x1024 image (from arrival: building the prompt counts), and the KV cache's
  capacity;
- ab: the bursts of this tree (caches off) and of another checkout (--slot-tree, e.g. the slot engine's),
  alternating in fresh processes;
- served: the engine as the model serves it (the engine process and the prompt workers) driven from the
  bench's process as the peer drives vLLM's AsyncLLM: 1 x 512 (8 requests), 64 and 128 x 512 (two each),
  and the --rates, per --prefix-cache setting, every request timed from before its prompt is built;
- triton: N concurrent streaming gRPC clients through Triton (one 448x448 image and a question,
  a fixed number of tokens, EOS ignored) and, with --rates, requests at Poisson arrival times,
  once per --prefix-cache setting (the bench's 8 prompts repeat: the caches answer them; off is
  no KV prefix cache, processor cache or encoder cache, as the peer's "caches off") and per --engine-process
  setting (the engine in a process of its own, or on a thread of the model's);
- --peer: vLLM's figures on the same requests (shared/tools/vllm-peer's output) beside ours.
Every request is one 448x448 image and a question unless said otherwise. Prints tables and
writes bench-gpu.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import subprocess
import time
from pathlib import Path


from bench.stats import RunSummary, percentile, table


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def image_bytes(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((448, 448), 30 + seed).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


# The peer's "caches off": no KV prefix cache, no processor cache, no encoder cache.
CACHES_OFF = {"enable_prefix_caching": "false", "processor_cache_gib": "0", "encoder_cache_gib": "0"}
PROMPTS = ["Describe this image in detail.", "What objects can you see?", "Write a story about this picture.",
           "List the colours in the image.", "Is there any text in the image?", "What is happening here?",
           "Describe the mood of this scene.", "Give this picture a title and explain it."]


# -- 1. the floor ---------------------------------------------------------------------------------

def copy_bandwidth() -> float:
    import torch

    src = torch.randn(1 << 30 >> 1, device="cuda", dtype=torch.float16)  # 1 GiB
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    bytes_moved = 2 * src.numel() * src.element_size()
    del src, dst
    return bytes_moved / statistics.median(times)


def decode_bytes(model_path: str) -> int:
    """Weights one decode step reads: the text decoder and the LM head (the vision tower is not used).

    From the checkpoint's architecture on the meta device: its shapes, none of its weights."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_path), dtype=torch.bfloat16)
    language = model.model.language_model
    total = sum(p.numel() * p.element_size() for p in language.layers.parameters())
    total += sum(p.numel() * p.element_size() for p in language.norm.parameters())
    total += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    return total


# -- 2. checks: the kernels and the engine's tokens against references ------------------------------

def kernel_checks() -> dict:
    """On the GPU, in bfloat16: the paged decode kernels against SDPA in float64 over the same blocks
    (rows of 1 to 40,000 cached tokens, blocks scattered), and the prefill's packed attention with
    chunks that continue a cached prefix against float32 prompt by prompt (the causal mask must be
    aligned on each chunk's last tokens)."""
    import torch
    import torch.nn.functional as F

    from backend_python.attention import decode_attention
    from backend_python.decode import Context, packed_attention

    torch.manual_seed(0)
    out = {}
    kv_heads, group, dim, page = 8, 4, 128, 64  # the GPU configs' block size
    for rows, lengths in ((1, [32_767]), (8, [0, 1, 15, 16, 255, 1000, 4095, 40_000]), (64, None), (128, None)):
        lengths = torch.tensor(lengths or torch.randint(100, 3000, (rows,)).tolist(), device="cuda")
        need = [n // page + 1 for n in lengths.tolist()]
        blocks = torch.randperm(sum(need) + 7, device="cuda").split(need + [7])[:-1]
        tables = torch.zeros((rows + 1, max(need)), dtype=torch.int32, device="cuda")
        slots = torch.randperm(rows + 1, device="cuda")[:rows]
        for slot, own in zip(slots.tolist(), blocks):
            tables[slot, :len(own)] = own.int()
        keys = torch.randn(sum(need) + 7, page, kv_heads, dim, device="cuda", dtype=torch.bfloat16)
        values = torch.randn_like(keys)
        q = torch.randn(rows, kv_heads, group, dim, device="cuda", dtype=torch.bfloat16)
        key = torch.randn(rows, kv_heads, 1, dim, device="cuda", dtype=torch.bfloat16)
        value = torch.randn_like(key)
        got = decode_attention(q, key, value, keys, values, lengths, slots, tables, dim ** -0.5)
        worst = 0.0
        for row, n in enumerate(lengths.tolist()):
            k = keys[blocks[row]].flatten(0, 1)[: n + 1].transpose(0, 1).double()
            v = values[blocks[row]].flatten(0, 1)[: n + 1].transpose(0, 1).double()
            ref = F.scaled_dot_product_attention(q[row].double(), k, v, scale=dim ** -0.5)
            worst = max(worst, ((got[row].double() - ref).norm() / ref.norm()).item())
        out[f"decode_attention_{rows}_rows_relative_error"] = worst
    # Prefill: a fresh prompt, a chunk after a 3,000-token prefix, a one-token chunk after 20.
    heads = 32
    starts, ends = [0, 3000, 20], [500, 4000, 21]
    q_bounds = [0, *itertools.accumulate(e - s for s, e in zip(starts, ends))]
    k_bounds = [0, *itertools.accumulate(ends)]
    k = torch.randn(k_bounds[-1], kv_heads, dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(q_bounds[-1], heads, dim, device="cuda", dtype=torch.bfloat16)
    context = Context(torch.arange(k_bounds[-1], device="cuda"), k_bounds,
                      torch.tensor(k_bounds, dtype=torch.int32, device="cuda"), max(ends))
    got = packed_attention(q, k, v, q_bounds, torch.tensor(q_bounds, dtype=torch.int32, device="cuda"),
                           max(e - s for s, e in zip(starts, ends)), causal=True, context=context)
    ref = packed_attention(q.float().cpu(), k.float().cpu(), v.float().cpu(), q_bounds, None, 0, causal=True,
                           context=Context(None, k_bounds, None, 0))
    out["prefill_attention_after_prefix_relative_error"] = ((got.float().cpu() - ref).norm() / ref.norm()).item()
    return out


class _Sink:
    """Records when each response arrives and how many tokens it carries."""

    def __init__(self):
        import threading

        self.done, self.times, self.counts, self.error, self.text, self.ids = threading.Event(), [], [], None, "", []
        self.sent = time.monotonic()

    def send(self, chunk, final):
        self.times.append(time.monotonic())
        self.counts.append(chunk.completion_tokens)
        self.text += chunk.text
        if final:
            self.ids = chunk.token_ids
            self.done.set()

    def fail(self, error):
        self.error = error
        self.done.set()

    def is_cancelled(self):
        return False

    def busy(self):
        return False

    @property
    def ttft(self) -> float:
        first = next(t for t, c in zip(self.times, self.counts) if c)
        return first - self.sent


def _request(text: str, images: list[bytes], tokens: int, history: list[dict] = (), ignore_eos: bool = True,
             videos: list[bytes] = ()):
    """A user turn asking ``text`` about ``images`` and ``videos`` (after ``history``, whose turns may name
    the images instead)."""
    from backend_python.request import ChatMessage, GenerationRequest, SamplingParams

    named = any(p.get("type") == "image" for m in history for p in m["content"])
    parts = [] if named else [{"type": "image", "image": i} for i in range(len(images))]
    parts += [{"type": "video", "video": i} for i in range(len(videos))]
    parts.append({"type": "text", "text": text})
    turns = tuple(ChatMessage(m["role"], tuple(m["content"])) for m in history)
    media = {"videos": tuple(videos)} if videos else {}  # the slot engine's requests (ab part) had no videos
    return GenerationRequest(messages=(*turns, ChatMessage("user", tuple(parts))), images=tuple(images),
                             sampling=SamplingParams(max_tokens=tokens, ignore_eos=ignore_eos), **media)


def _submit(engine, prompts, requests, at_once: bool = True, timeout: float = 600) -> list[_Sink]:
    """Hand requests to the engine (all in one step when ``at_once``) and wait for every answer."""
    built = [prompts.build(r) for r in requests]
    sinks = [_Sink() for _ in requests]
    together = getattr(engine, "arriving_together", lambda: engine._lock)  # the slot engine (ab part) had a lock
    with together() if at_once else contextlib.nullcontext():
        for r, p, s in zip(requests, built, sinks):
            s.sent = time.monotonic()
            engine.submit(r, p, s)
    for s in sinks:
        if not s.done.wait(timeout) or s.error:
            raise RuntimeError(f"a request failed or timed out: {s.error}")
    return sinks


def _arrive(engine, prompts, requests, timeout: float = 600) -> list[_Sink]:
    """Hand requests over as Triton's execute does: prompts built on the prompt workers, each submitted
    once built; the first token is timed from their arrival, so decoding images and videos counts."""
    sinks = [_Sink() for _ in requests]
    arrival = time.monotonic()
    for r, p, s in zip(requests, prompts.build_many(requests), sinks):
        if isinstance(p, Exception):
            raise p
        s.sent = arrival
        engine.submit(r, p, s)
    for s in sinks:
        if not s.done.wait(timeout) or s.error:
            raise RuntimeError(f"a request failed or timed out: {s.error}")
    return sinks


def video_rows(engine, prompts, tokens: int = 512) -> dict:
    """A 10-second 448x448 clip at 30 fps, sampled as the config says (the GPU config: the checkpoint's
    own, 2 frames a second): its visual tokens, its first token alone, and 16 clips at once. Every
    request has a clip of its own colour, so that none is served from the prefix cache."""
    from tests.samples.videos import clip

    clips = [clip(10.0, fps=30, size=(448, 448), colour=(30 + 11 * i, 220 - 9 * i, 60 + 7 * i)) for i in range(20)]
    ask = lambda data: _request(PROMPTS[5], [], tokens, videos=[data])  # noqa: E731
    _arrive(engine, prompts, [ask(clips[0])])  # warm-up: the vision blocks see a video's shapes
    prompt = prompts.build(ask(clips[0]))
    built = []
    for data in clips[1:4]:
        started = time.monotonic()
        prompts.build(ask(data))
        built.append(time.monotonic() - started)
    alone = [_arrive(engine, prompts, [ask(data)])[0] for data in clips[1:4]]
    rows = {"video_1": {
        "streams": 1, "visual tokens": prompt.visual_tokens, "prompt tokens": prompt.length,
        "clip MB": round(len(clips[1]) / 1e6, 2), "prompt build ms": round(1000 * statistics.median(built)),
        "TTFT p50 ms": round(1000 * percentile([s.ttft for s in alone], 50)),
        "tok/s": round(tokens / statistics.median(s.times[-1] - s.sent for s in alone))}}
    rows["video_16"] = _burst_row(_arrive(engine, prompts, [ask(data) for data in clips[4:20]]))
    return rows


def _decoding(engine, prompts, images: list[bytes], streams: int = 64, tokens: int = 400) -> list[_Sink]:
    """``streams`` requests started together, returned once each has streamed 60 tokens."""
    requests = [_request(PROMPTS[i % 8], [images[i % 8]], tokens) for i in range(streams)]
    built = [prompts.build(r) for r in requests]
    sinks = [_Sink() for _ in requests]
    with engine.arriving_together():
        for r, p, s in zip(requests, built, sinks):
            engine.submit(r, p, s)
    while min(len(s.counts) for s in sinks) < 60:
        time.sleep(0.005)
    return sinks


def _gaps(sinks: list[_Sink], start: float, end: float) -> list[float]:
    """The gaps between consecutive responses of every stream, within ``start``..``end``."""
    return [b - a for s in sinks for a, b in zip(s.times, s.times[1:]) if start <= a and b <= end]


def arrivals_beside(engine, prompts, images: list[bytes], count: int = 24, every: float = 0.04) -> dict:
    """Prompts with an image each (not seen before, built beforehand) arriving one every ``every`` s while
    64 streams decode: their first tokens, and the streams' gaps meanwhile. What pacing a prefill beside
    decoding streams costs a short prompt (decode_gap_during_prefill)."""
    requests = [_request(PROMPTS[i % 8], [image_bytes(100 + i)], 8) for i in range(count)]
    built = [prompts.build(r) for r in requests]  # before the streams start: building them outlasted 400 tokens
    sinks = _decoding(engine, prompts, images, tokens=700)
    new, start = [], time.monotonic()
    for i, (r, p) in enumerate(zip(requests, built)):
        time.sleep(max(0.0, start + i * every - time.monotonic()))
        sink = _Sink()
        engine.submit(r, p, sink)
        new.append(sink)
    for s in new + sinks:
        s.done.wait(300)
    end = max(s.times[-1] for s in new)
    gaps = _gaps(sinks, start, end)
    ttft = [s.ttft for s in new]
    return {"prompts": count, "every_ms": round(1000 * every), "TTFT p50 ms": round(1000 * percentile(ttft, 50), 1),
            "TTFT p95 ms": round(1000 * percentile(ttft, 95), 1), "ITL p50 ms": round(1000 * percentile(gaps, 50), 1),
            "ITL p99 ms": round(1000 * percentile(gaps, 99), 1),
            "streams still decoding at the end": sum(s.times[-1] > end for s in sinks)}


def _burst_row(sinks: list[_Sink]) -> dict:
    start, end = min(s.sent for s in sinks), max(s.times[-1] for s in sinks)
    tokens = sum(s.counts[-1] for s in sinks)
    ttft = [s.ttft for s in sinks]
    return {"streams": len(sinks), "tok/s": round(tokens / (end - start)), "TTFT p50 ms": round(1000 * percentile(ttft, 50)),
            "TTFT p95 ms": round(1000 * percentile(ttft, 95))}


def gpu_config(name: str = "gpu", **overrides: str):
    """The engine settings of configs/<name>.pbtxt, with ``overrides``."""
    import re

    from backend_python.config import EngineConfig

    text = (Path(__file__).resolve().parents[1] / f"model_repository/qwen3_vl/configs/{name}.pbtxt").read_text()
    parameters = dict(re.findall(r'key: "(\w+)", value: \{ string_value: "([^"]*)" \}', text))
    return EngineConfig.from_parameters({**parameters, **overrides})


def float32_agreement(model_path: str, images: list[bytes], tokens: int = 48) -> dict:
    """Greedy tokens of the engine against transformers' generate, both in float32 on the GPU, with the
    prompts cut into chunks (a budget of 128 tokens a step), then again from the prefix cache, then
    with one decoding while the other two are prefilled.

    In bfloat16 a random-weight model's logits are nearly tied, so the two paths part after a few
    tokens through rounding alone; float32 makes the comparison about the algorithm.
    """
    import torch

    from backend_python.engine import Engine
    from backend_python.loader import load
    from backend_python.prompt import PromptBuilder

    # cuDNN runs float32 convolutions in TF32 unless told not to: the checkpoint's patch embedding
    # (a convolution) would then be less exact than the engine's (a matrix product, in float32).
    tf32, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
    config = gpu_config(model_path=model_path, dtype="float32", max_num_seqs="4", max_model_len="1024",
                        max_num_batched_tokens="128", decode_during_prefill="true", compile_decode="false",
                        kv_cache_budget_gib="2", max_prompt_tokens="512", image_max_pixels=str(448 * 448))
    loaded = load(config)
    prompts = PromptBuilder(loaded.processor, config)
    requests = [_request(PROMPTS[i], [images[i]], tokens) for i in range(3)]
    expected, dev = [], loaded.device
    for p in (prompts.build(r) for r in requests):
        inputs = dict(input_ids=p.input_ids[None].to(dev), attention_mask=torch.ones_like(p.input_ids)[None].to(dev),
                      mm_token_type_ids=p.mm_token_type_ids[None].to(dev), pixel_values=p.pixel_values.to(dev),
                      image_grid_thw=p.image_grid_thw.to(dev))
        out = loaded.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        expected.append(out[0, p.length:].tolist())
    engine = Engine(loaded, config).start()

    def agreement(sinks):
        return [next((k for k, (a, b) in enumerate(zip(s.ids, e)) if a != b), min(len(s.ids), len(e)))
                for s, e in zip(sinks, expected)]

    before = engine.stats.snapshot()
    chunked = _submit(engine, prompts, requests)
    cached = _submit(engine, prompts, requests)
    first = [_Sink()]
    engine.submit(requests[0], prompts.build(requests[0]), first[0])
    while len(first[0].counts) < 8:
        time.sleep(0.002)
    rest = _submit(engine, prompts, requests[1:])
    first[0].done.wait(120)
    done = engine.stats.since(before)
    engine.stop()
    del engine, loaded
    torch.cuda.empty_cache()
    torch.backends.cudnn.allow_tf32 = tf32
    return {"float32_agreement_tokens": agreement(chunked), "float32_cached_agreement_tokens": agreement(cached),
            "float32_staggered_agreement_tokens": agreement(first + rest), "float32_reference_len": tokens,
            "float32_chunks": done["prefill_chunks"], "float32_cached_tokens": done["cached_tokens"],
            "float32_steps_during_prefill": done["decode_steps_in_prefill"],
            "float32_graphed_prefills": f'{done["graphed_prefills"]} of {done["prefills"]}'}


def shared_slice(model_path: str, images: list[bytes], cap_gib: float = 20.0) -> dict:
    """configs/gpu-shared.pbtxt (a MIG 2g.20gb slice) on a GPU capped at ``cap_gib`` for this process:
    the engine must size its KV cache to fit beside the weights, start, and answer."""
    import torch

    from backend_python.engine import Engine
    from backend_python.loader import load
    from backend_python.prompt import PromptBuilder

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(cap_gib * 2**30 / total)
    config = gpu_config("gpu-shared", model_path=model_path, compile_decode="false")
    loaded = load(config)
    engine = Engine(loaded, config).start()
    prompts = PromptBuilder(loaded.processor, config)
    sinks = _submit(engine, prompts, [_request(PROMPTS[i], [images[i]], 64) for i in range(4)])
    result = {"cap_gib": cap_gib, "kv_tokens": engine.stats.kv_blocks_total * config.block_size,
              "answers": [s.counts[-1] for s in sinks],
              "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}
    engine.stop()
    torch.cuda.set_per_process_memory_fraction(1.0)
    return result


# -- 3. the engine alone: bursts, long context, a chat, capacity ---------------------------------------

SLOT_CACHE_GIB = 38.6  # the slot engine's cache: 128 slots x 2,048 tokens in bfloat16
LONG_PROMPTS = (32_000, 128_000)  # tokens of random text (about as many once re-tokenized)


def engine_rows(model_path: str, images: list[bytes], compile: bool = True, overrides: dict | None = None) -> dict:
    """The engine without Triton, with the GPU config (prompts up to 135,168 tokens here): bursts,
    a 32,768-token prompt alone and while 64 streams decode, a 131,072-token prompt, three turns of a
    chat about a 1024x1024 image, and what the KV cache holds."""
    import torch
    from PIL import Image

    from backend_python.engine import Engine
    from backend_python.loader import load
    from backend_python.prompt import PromptBuilder

    config = gpu_config(**{"model_path": model_path, "compile_decode": str(compile).lower(), "max_model_len": "143360",
                           "max_prompt_tokens": "143000", **(overrides or {})})
    loaded = load(config)
    started = time.monotonic()
    engine = Engine(loaded, config).start()
    prompts = PromptBuilder(loaded.processor, config)
    result: dict = {"engine_start_s": time.monotonic() - started, "engine_start_split": engine.start_timings}
    stats = engine.stats
    text_config = loaded.model.config.text_config
    per_token = 2 * text_config.num_hidden_layers * text_config.num_key_value_heads * text_config.head_dim * 2
    tokens_in_pool = stats.kv_blocks_total * config.block_size
    result["capacity"] = {
        "kv_tokens": tokens_in_pool, "kv_gib": round(tokens_in_pool * per_token / 2**30, 1),
        "sequences_of_2048_whole_card": tokens_in_pool // 2048,
        "sequences_of_2048_in_slot_memory": int(SLOT_CACHE_GIB * 2**30 / per_token) // 2048,
        "sequences_of_732_in_slot_memory": int(SLOT_CACHE_GIB * 2**30 / per_token) // 732}
    log(f"engine started in {result['engine_start_s']:.1f} s: {result['engine_start_split']}; {result['capacity']}")
    _submit(engine, prompts, [_request(PROMPTS[i], [images[i]], 16) for i in range(8)])  # warm-up
    for streams in (1, 64, 128):
        before = stats.snapshot()
        rounds = 4 if streams == 1 else 1
        sinks = [s for _ in range(rounds) for s in _submit(
            engine, prompts, [_request(PROMPTS[i % 8], [images[i % 8]], 512) for i in range(streams)])]
        row = _burst_row(sinks) if streams > 1 else {
            "streams": 1, "tok/s": round(512 / statistics.median(s.times[-1] - s.sent for s in sinks)),
            "TTFT p50 ms": round(1000 * percentile([s.ttft for s in sinks], 50))}
        done = stats.since(before)
        row["host ms/step"] = round(1000 * (done["launch"] + done["stream"]) / max(done["decode_steps"], 1), 2)
        result[f"burst_{streams}x512"] = row
        log(f"engine alone, {streams} x 512: {row}")
    result.update(video_rows(engine, prompts))
    log(f"engine alone, a 10-second 448x448 video: {result['video_1']}; 16 at once: {result['video_16']}")
    # Long context: random text of a given length (random token ids, decoded and re-encoded).
    rng = random.Random(0)
    vocabulary = loaded.processor.tokenizer

    def long_text(n: int) -> str:
        ids = [rng.randrange(1000, 100_000) for _ in range(n)]
        return vocabulary.decode(ids)

    text_32k = long_text(LONG_PROMPTS[0])
    lone = _submit(engine, prompts, [_request(text_32k, [], 1)])[0]
    result["long_32k"] = {"prompt_tokens": prompts.build(_request(text_32k, [], 1)).length,
                          "ttft_ms": round(1000 * lone.ttft)}
    # 64 streams decoding; once they all run, the 32K prompt arrives: their gaps during its prefill.
    # Its text is made first (a client sends it ready); building the prompt counts, as the server does it on arrival.
    request = _request(long_text(LONG_PROMPTS[0]), [], 1)
    sinks = _decoding(engine, prompts, images)
    arrived = time.monotonic()
    long = _submit(engine, prompts, [request])[0]
    for s in sinks:
        s.done.wait(300)
    during = _gaps(sinks, arrived, long.times[-1])
    before_gaps = [b - a for s in sinks for a, b in zip(s.times, s.times[1:]) if b < arrived and a > arrived - 1.0]
    result["long_32k_beside_64"] = {"ttft_ms": round(1000 * long.ttft),
                                    "step_ms_before": round(1000 * percentile(before_gaps, 50), 1),
                                    "itl_p50_ms_during": round(1000 * percentile(during, 50), 1),
                                    "itl_p99_ms_during": round(1000 * percentile(during, 99), 1),
                                    "itl_max_ms_during": round(1000 * max(during or [0]), 1)}
    log(f"32K prompt: {result['long_32k']}; beside 64 decoding streams: {result['long_32k_beside_64']}")
    result["arrivals_beside_64"] = arrivals_beside(engine, prompts, images)
    log(f"image prompts arriving while 64 streams decode: {result['arrivals_beside_64']}")
    text_128k = long_text(LONG_PROMPTS[1])
    length = prompts.build(_request(text_128k, [], 1)).length
    huge = _submit(engine, prompts, [_request(text_128k, [], 8)])[0]
    result["long_128k"] = {"prompt_tokens": length, "ttft_ms": round(1000 * huge.ttft),
                           "answer_tokens": huge.counts[-1]}
    log(f"128K prompt: {result['long_128k']}")
    # Three turns of a chat about a 1024x1024 image, each answer 64 tokens; first tokens counted from the
    # request's arrival, so building the prompt (the image processed, or taken from the processor cache)
    # counts, as a user waits for it.
    buf = io.BytesIO()
    Image.effect_noise((1024, 1024), 40).convert("RGB").save(buf, "PNG")
    photo, history, turns = buf.getvalue(), [], []
    questions = ["Describe this picture in detail.", "What colours dominate it?", "Give it a title."]
    for k, question in enumerate(questions):
        before = stats.snapshot()
        request = _request(question, [photo], 64, history)
        sink = _arrive(engine, prompts, [request])[0]
        done = stats.since(before)
        turns.append({"turn": k + 1, "prompt_tokens": prompts.build(request).length, "ttft_ms": round(1000 * sink.ttft, 1),
                      "prefilled": done["prompt_tokens"], "from_cache": done["cached_tokens"]})
        history = [*history, {"role": "user", "content": ([{"type": "image", "image": 0}] if k == 0 else [])
                              + [{"type": "text", "text": question}]},
                   {"role": "assistant", "content": [{"type": "text", "text": sink.text}]}]
    result["chat_1024px"] = turns
    log(f"three turns about a 1024x1024 image: {turns}")
    engine.stop()
    del engine, loaded
    torch.cuda.empty_cache()
    return result


def bursts(model_path: str, images: list[bytes], tree: str | None, compile: bool = True) -> dict:
    """The engine of ``tree`` (another checkout, e.g. the slot engine's) or of this one, alone: one
    stream and bursts of 64 and 128 streams of 512 tokens, with that tree's GPU config. Run in a
    process of its own (``--bursts``), so that trees alternate in one run on one machine."""
    import inspect

    from backend_python.config import EngineConfig
    from backend_python.engine import Engine
    from backend_python.loader import load
    from backend_python.prompt import PromptBuilder

    root = Path(tree) if tree else Path(__file__).resolve().parents[1]
    text = (root / "model_repository/qwen3_vl/configs/gpu.pbtxt").read_text()
    import re

    parameters = dict(re.findall(r'key: "(\w+)", value: \{ string_value: "([^"]*)" \}', text))
    # The slot engine has no caches; ours runs without them too, or its bursts would be answered from
    # the prefix and processor caches that the warm-up filled (the 8 prompts repeat).
    config = EngineConfig.from_parameters({**parameters, "model_path": model_path,
                                           "compile_decode": str(compile).lower(), **({} if tree else CACHES_OFF)})
    started = time.monotonic()
    loaded = load(config)
    engine = Engine(loaded, config).start()
    log(f"{root.name}: engine started in {time.monotonic() - started:.1f} s")  # a run cut short shows how far it got
    keywords = {"rope_index": loaded.model.model.get_rope_index} \
        if "rope_index" in inspect.signature(PromptBuilder).parameters else {}
    prompts = PromptBuilder(loaded.processor, config, pixel_dtype=loaded.dtype, **keywords)
    _submit(engine, prompts, [_request(PROMPTS[i], [images[i]], 16) for i in range(8)])  # warm-up
    rows = {}
    for streams in (1, 64, 128):
        _submit(engine, prompts, [_request(PROMPTS[i % 8], [images[i % 8]], 64) for i in range(streams)])  # graphs
        if streams == 1:
            sinks = [_submit(engine, prompts, [_request(PROMPTS[i], [images[i]], 512)])[0] for i in range(4)]
            rows["1"] = {"tok/s": round(512 / statistics.median(s.times[-1] - s.sent for s in sinks)),
                         "TTFT p50 ms": round(1000 * percentile([s.ttft for s in sinks], 50))}
        else:
            rows[str(streams)] = _burst_row(_submit(
                engine, prompts, [_request(PROMPTS[i % 8], [images[i % 8]], 512) for i in range(streams)]))
        log(f"{root.name}: {streams} x 512: {rows[str(streams)]}")
    engine.stop()
    return rows


def alternate_trees(model_path: str, trees: dict[str, str | None], rounds: int = 2) -> dict:
    """``bursts`` of each tree in turn, ``rounds`` times over, each in a fresh process."""
    import subprocess
    import sys

    out: dict = {name: [] for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():
            command = [sys.executable, "-m", "bench.gpu", "--bursts", "--model", model_path]
            if tree:
                command += ["--tree", tree]
            log(f"{name}: starting its bursts")
            # Its lines go to this log as they come: a run stopped at its time limit shows where it was.
            lines = []
            with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
                for line in child.stdout:
                    if line.startswith("BURSTS "):
                        lines.append(line)
                    else:
                        print(line, end="", flush=True)
            if child.returncode or not lines:
                raise RuntimeError(f"bursts of {name} failed (exit {child.returncode}): see the lines above")
            out[name].append(json.loads(lines[-1][len("BURSTS "):]))
            log(f"{name}: {out[name][-1]}")
    return out


# -- 4. served in process, as the peer is --------------------------------------------------------

def served_rows(model_path: str, images: list[bytes], caches_off: bool, compile: bool, rates: list[float],
                rate_seconds: float, overrides: dict[str, str]) -> dict:
    """The engine as the model's process serves it (``serving.start``: the engine process and the prompt
    workers), driven from this process the way shared/tools/vllm-peer drives vLLM's AsyncLLM, whose
    engine core is a process of its own too: the same closed loops after the same warm-ups, the same
    Poisson arrivals, every request timed from before its prompt is built. No Triton, gRPC or response
    path: the triton part's figures less these are what serving through them adds."""
    from concurrent.futures import ThreadPoolExecutor

    from backend_python import serving
    from backend_python.metrics import EngineMetrics

    class Split(EngineMetrics):
        """The engine's own account, from its metric calls (replayed from the engine process): each
        request's wait from its built prompt (its ``arrival``) to its first step and to its first token,
        and the prompts each prefill took (with when its call got here)."""

        def __init__(self):
            self.reset()

        def reset(self):
            self.to_step, self.to_token, self.prefills = [], [], []

        def queued(self, seconds):
            self.to_step.append(seconds)

        def time_to_first_token(self, seconds):
            self.to_token.append(seconds)

        def prefill_size(self, n):
            self.prefills.append((time.monotonic(), n))

    config = gpu_config(model_path=model_path, compile_decode=str(compile).lower(),
                        **(CACHES_OFF if caches_off else {}), **overrides)
    split = Split()
    served = serving.start(config, split)
    engine, prompts = served.engine, served.prompts

    def one(i: int, tokens: int, at: float | None = None) -> _Sink:
        if at is not None:
            time.sleep(max(0.0, at - time.monotonic()))
        sink = _Sink()
        sink.sent = at or sink.sent  # an arrival late off the schedule counts from the schedule
        request = _request(PROMPTS[i % 8], [images[i % 8]], tokens)
        prompt = prompts.build(request)
        sink.built = time.monotonic()
        engine.submit(request, prompt, sink, arrival=sink.built)  # the engine's clock is this one (monotonic)
        sink.taken = time.monotonic()
        if not sink.done.wait(600) or sink.error:
            raise RuntimeError(f"a request failed or timed out: {sink.error}")
        return sink

    def p50_ms(values: list[float]) -> int:
        return round(1000 * percentile(values, 50))

    def timed_here(sinks: list[_Sink]) -> tuple[int, int, int]:
        """p50s of the parts this process times: the build, from the built prompt until the engine
        process has taken it, and until its first token is here."""
        return (p50_ms([s.built - s.sent for s in sinks]), p50_ms([s.taken - s.built for s in sinks]),
                p50_ms([s.ttft - (s.built - s.sent) for s in sinks]))

    def row_of(sinks: list[_Sink]) -> dict:
        """The row, and where its first tokens' time went (p50s): building the prompt, then from the built
        prompt until the engine process has taken it (the pipe), until the engine's first step with it,
        until its first token is sampled there and until that token is here; prefills and their prompts
        (p50 and max) in the engine meanwhile."""
        row = _burst_row(sinks)
        sizes = [n for _, n in split.prefills]
        build, taken, received = timed_here(sinks)
        parts = {"build p50 ms": build, "taken p50 ms": taken, "step p50 ms": p50_ms(split.to_step),
                 "sampled p50 ms": p50_ms(split.to_token), "received p50 ms": received, "prefills": len(split.prefills),
                 "prompts/prefill p50, max": f"{percentile(sizes, 50):.0f}, {max(sizes, default=0)}"}
        split.reset()
        return {"requests": row.pop("streams"), **row, **parts}

    def closed(clients: int, rounds: int, tokens: int) -> dict:
        """Each client sends its next request once its last is answered (as the peer's clients do), so
        the rounds after the first arrive as the first one's answers end: their first tokens apart."""
        with ThreadPoolExecutor(clients) as pool:
            runs = list(pool.map(lambda c: [one(c + r, tokens) for r in range(rounds)], range(clients)))
        sinks = [s for run in runs for s in run]
        gaps = _gaps(sinks, 0, float("inf"))
        # Each round's TTFT p5, p50 and p95 in ms.
        by_round = [[round(1000 * percentile([run[r].ttft for run in runs], q)) for q in (5, 50, 95)]
                    for r in range(rounds)]
        if clients > 1:  # each round's parts, and when the prefills of more than 3 prompts came (ms from the start)
            begin = min(s.sent for s in sinks)
            for r, (p5, p50, p95) in enumerate(by_round):
                build, taken, received = timed_here([run[r] for run in runs])
                log(f"  round {r + 1}: TTFT p5/p50/p95 {p5} / {p50} / {p95} ms; p50 build {build}, taken {taken}, "
                    f"received {received} ms")
            log("  prefills of more than 3 prompts (ms: prompts): " + ", ".join(
                f"{1000 * (t - begin):.0f}: {n}" for t, n in split.prefills if n > 3))
        return {**row_of(sinks), "TTFT p50 by round ms": " / ".join(str(p50) for _, p50, _ in by_round),
                "TTFT p5-p95 by round ms": " / ".join(f"{p5}-{p95}" for p5, _, p95 in by_round),
                "ITL p50 ms": round(1000 * percentile(gaps, 50), 1)}

    def open_loop(rate: float, seconds: float, tokens: int = 512) -> dict:
        times = arrivals(rate, seconds, seed=1)
        start = time.monotonic() + 0.2
        with ThreadPoolExecutor(256) as pool:  # more than ever run at once: none waits for a thread
            sinks = list(pool.map(lambda it: one(it[0], tokens, start + it[1]), enumerate(times)))
        gaps = _gaps(sinks, 0, float("inf"))
        return {"rate req/s": rate, **row_of(sinks), "ITL p99 ms": round(1000 * percentile(gaps, 99), 1)}

    rows: dict = {}
    try:
        closed(8, 1, 64)  # the peer's warm-ups
        closed(64, 1, 512)
        for clients, rounds in ((1, 8), (64, 2), (128, 2)):
            rows[f"{clients} x 512"] = closed(clients, rounds, 512)
            log(f"served in process, caches {'off' if caches_off else 'on'}: {clients} x 512: {rows[f'{clients} x 512']}")
        for rate in rates:
            rows[f"open loop {rate:g}/s"] = open_loop(rate, rate_seconds)
            log(f"served in process: Poisson arrivals at {rate:g}/s: {rows[f'open loop {rate:g}/s']}")
    finally:
        engine.stop()
        prompts.close()
    return rows


# -- 5. through Triton ---------------------------------------------------------------------

def _one_stream(url: str, i: int, tokens: int, images: list[bytes]) -> tuple:
    from clients.triton_stream import build_inputs, stream, user_turn

    r = stream(url, build_inputs(user_turn(PROMPTS[i % 8], 1), [images[i % len(images)]],
                                 max_tokens=tokens, ignore_eos=True), timeout=600)
    gaps = [b - a for a, b in zip(r.token_times, r.token_times[1:])]
    return (r.error is None, r.completion_tokens, r.ttft, gaps, r.started, r.finished_at, str(r.error or ""))


def _client_worker(args) -> list[tuple]:
    """One process drives its share of the streams with threads (the GIL of one process is not enough).
    Each item is a request's index, or (index, monotonic time to send it at)."""
    from concurrent.futures import ThreadPoolExecutor

    url, items, tokens, images = args

    def one(item):
        i, at = item if isinstance(item, tuple) else (item, None)
        if at is not None:
            time.sleep(max(0.0, at - time.monotonic()))
        return _one_stream(url, i, tokens, images)

    if not items:
        return []
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(one, items))


def drive(url: str, clients: int, requests_per_client: int, tokens: int, images: list[bytes]) -> RunSummary:
    """``clients`` streams at once, ``requests_per_client`` times over; the rate is counted from the
    first request sent to the last response received (the client processes start before that)."""
    procs = min(clients, 16)
    results = []
    with mp.get_context("spawn").Pool(procs) as pool:
        pool.map(_client_worker, [(url, [], tokens, images)] * procs)  # processes up, modules imported
        for round_ in range(requests_per_client):
            base = round_ * clients
            shares = [list(range(base + p, base + clients, procs)) for p in range(procs)]
            for chunk in pool.map(_client_worker, [(url, s, tokens, images) for s in shares if s]):
                results.extend(chunk)
    return _summary(results, clients, min(r[4] for r in results))


def _summary(results: list[tuple], clients: int, start: float) -> RunSummary:
    """The streams' results, timed from ``start`` to the last response (one monotonic clock for all
    processes)."""
    good = [r for r in results if r[0]]
    errors = [r[6] for r in results if not r[0]]
    if errors:
        log(f"{len(errors)} errors, first: {errors[0]}")
    return RunSummary(label="triton gRPC", clients=clients, requests=len(good), errors=len(errors),
                      seconds=max(r[5] for r in results) - start, tokens=sum(r[1] for r in good),
                      ttft=[r[2] for r in good if r[2] is not None], itl=[g for r in good for g in r[3]],
                      latency=[r[5] - r[4] for r in good])


def arrivals(rate: float, seconds: float, seed: int = 0) -> list[float]:
    """Poisson arrivals: send times (from 0) of requests at ``rate`` per second over ``seconds``."""
    rng, times, t = random.Random(seed), [], 0.0
    while (t := t + rng.expovariate(rate)) < seconds:
        times.append(t)
    return times


def drive_paced(url: str, rate: float, seconds: float, tokens: int, images: list[bytes], seed: int = 0) -> dict:
    """Requests sent at Poisson arrival times, whatever the answers before them (an open loop, as
    users arrive): the load a service sees between bursts, where prefills come a few prompts at a
    time in among the running streams' decode steps."""
    procs = 16
    times = arrivals(rate, seconds, seed)
    with mp.get_context("spawn").Pool(procs) as pool:
        pool.map(_client_worker, [(url, [], tokens, images)] * procs)  # processes up, modules imported
        start = time.monotonic() + 0.5  # every process has its schedule before the first send
        shares = [[(i, start + t) for i, t in enumerate(times) if i % procs == p] for p in range(procs)]
        results = [r for chunk in pool.map(_client_worker, [(url, s, tokens, images) for s in shares if s])
                   for r in chunk]
    summary = _summary(results, 0, start)
    row = summary.row()
    return {"tokens": str(tokens), "rate req/s": f"{rate:g}",
            **{k: row[k] for k in ("requests", "errors", "tok/s")},
            "streams (mean)": f"{sum(summary.latency) / summary.seconds:.1f}",
            **{k: row[k] for k in ("TTFT p50 ms", "TTFT p95 ms", "ITL p50 ms", "ITL p95 ms")},
            "ITL p99 ms": f"{percentile(summary.itl, 99) * 1000:.0f}", "ITL max ms": f"{max(summary.itl) * 1000:.0f}"}


def host_memory_gib(pid: int) -> dict[str, float]:
    """Proportional resident memory (GiB) of a process and its descendants, by command name: what the
    pod's memory request must hold (the server, the model's stub and, with ``engine_process``, the
    engine's process). PSS counts a page shared by several processes once in all; RSS where the
    kernel gives no PSS."""
    from stack.process import children_of

    found: dict[str, float] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children_of(p)
        try:
            name = Path(f"/proc/{p}/comm").read_text().strip()
            rollup = Path(f"/proc/{p}/smaps_rollup")
            text = rollup.read_text() if rollup.exists() else Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        kib = next((int(line.split()[1]) for line in text.splitlines() if line.startswith(("Pss:", "VmRSS:"))), 0)
        found[name] = found.get(name, 0.0) + kib / 2**20
    return found


def gpu_memory_used_gib() -> float:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True)
    return float(out.stdout.split()[0]) / 1024 if out.returncode == 0 else float("nan")


SERVER_COUNTERS = ("nv_inference_request_success", "nv_inference_exec_count", "nv_inference_queue_duration_us",
                   "nv_inference_compute_infer_duration_us", "qwen3vl_time_to_first_token_seconds_sum",
                   "qwen3vl_time_to_first_token_seconds_count", "qwen3vl_prefill_size_sum",
                   "qwen3vl_prefill_size_count", "qwen3vl_prompt_tokens_total", "qwen3vl_prompt_tokens_cached_total",
                   "qwen3vl_queue_seconds_sum", "qwen3vl_queue_seconds_count")


def server_counters(url: str) -> dict[str, float]:
    """Triton's and the model's counters that split a request's time on the server, summed over labels."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    totals = dict.fromkeys(SERVER_COUNTERS, 0.0)
    for line in lines:
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def server_split(before: dict[str, float], after: dict[str, float]) -> dict[str, str]:
    """Per request, means: in Triton's queue, in the ``execute`` call that parsed it and built its prompt
    (its batch's), from that call receiving it to its first step in the engine (its prompt built, sent
    over and admitted) and to its first token; and prompts per prefill."""
    delta = {k: after[k] - before[k] for k in SERVER_COUNTERS}
    requests = max(delta["nv_inference_request_success"], 1.0)
    first = max(delta["qwen3vl_time_to_first_token_seconds_count"], 1.0)
    prefills = max(delta["qwen3vl_prefill_size_count"], 1.0)
    started = max(delta["qwen3vl_queue_seconds_count"], 1.0)
    cached = delta["qwen3vl_prompt_tokens_cached_total"]
    return {"queue ms": f"{delta['nv_inference_queue_duration_us'] / requests / 1000:.0f}",
            "execute ms": f"{delta['nv_inference_compute_infer_duration_us'] / requests / 1000:.0f}",
            "batches": f"{delta['nv_inference_exec_count']:.0f}",
            "to engine step ms": f"{1000 * delta['qwen3vl_queue_seconds_sum'] / started:.0f}",
            "engine TTFT ms": f"{1000 * delta['qwen3vl_time_to_first_token_seconds_sum'] / first:.0f}",
            "chunks per prefill": f"{delta['qwen3vl_prefill_size_sum'] / prefills:.1f}",
            "prompt tokens cached %": f"{100 * cached / max(cached + delta['qwen3vl_prompt_tokens_total'], 1):.0f}"}


def ready_line(log_file: Path) -> str:
    """The model's own account of its start (weights, engine, each warm-up), from the newest start in the log."""
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if "qwen3_vl ready in" in line]
    return lines[-1].strip() if lines else "(no ready line in the log)"


def new_node_caches(start: int) -> None:
    """Empty compile caches for the next Triton start, as on a new node; the compile artifacts are
    kept from start to start (the first writes them, the later ones load them)."""
    root = OUT / "new-node-caches" / f"start-{start}"
    shutil.rmtree(root, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(root / "inductor" / "triton")
    if start == 0:
        artifacts = OUT / "compile-artifacts"
        shutil.rmtree(artifacts, ignore_errors=True)
        os.environ["COMPILE_ARTIFACTS_DIR"] = str(artifacts)


def through_triton(model_path: str, clients: list[int], token_counts: list[int], images: list[bytes], rounds: int,
                   compile: bool = False, restarts: int = 1, parameters: dict[str, str] | None = None,
                   new_nodes: bool = False, rates: list[float] = (), rate_seconds: float = 30) -> dict:
    from clients.triton_stream import build_inputs, stream, user_turn
    from stack.ports import free_port
    from stack.triton import TritonServer

    server = TritonServer(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          model_path=model_path, config_name="gpu", log_file=str(OUT / "triton-gpu.log"),
                          parameters={"compile_decode": "true" if compile else "false", **(parameters or {})})
    result: dict = {"runs": [], "paced": []}
    # The first start is the cold one; the others find the page cache (and, unless new_nodes, the
    # compile caches) warm.
    for restart in range(max(restarts, 1)):
        if restart:
            server.stop()
        if new_nodes:
            new_node_caches(restart)
        start = time.monotonic()
        server.start(timeout=900)
        ready = time.monotonic() - start
        first = stream(server.grpc_url, build_inputs(user_turn(PROMPTS[0], 1), [images[0]], max_tokens=1))
        first_token = time.monotonic() - start
        if first.error:
            raise RuntimeError(f"first request after start {restart} failed: {first.error}")
        key, name = ("cold_start", "Triton") if restart == 0 else (f"restart_{restart}", f"restart {restart}:")
        result[f"{key}_ready_s"], result[f"{key}_first_token_s"] = ready, first_token
        result[f"{key}_model"] = ready_line(OUT / "triton-gpu.log")
        log(f"{name} ready after {ready:.1f} s, first token after {first_token:.1f} s; {result[f'{key}_model']}")
    try:
        drive(server.grpc_url, 8, 1, 16, images)  # warm-up: graphs, allocator, clients
        for tokens, n in ((t, n) for t in token_counts for n in clients):
            # Once untimed with the same shapes: the step graphs of every batch size and cache span
            # this load reaches are captured (once per server) before the timed rounds.
            drive(server.grpc_url, n, 1, tokens, images)
            # One stream's time to first token is a percentile of several requests, not of one.
            before = server_counters(server.metrics_url)
            summary = drive(server.grpc_url, n, rounds if n > 1 else max(rounds, 8), tokens, images)
            time.sleep(0.3)  # the model applies its metric updates every 100 ms
            split = server_split(before, server_counters(server.metrics_url))
            row = {"tokens": str(tokens), **summary.row()}
            row["GPU mem GiB"] = f"{gpu_memory_used_gib():.1f}"
            host = host_memory_gib(server.process.pid)
            row["host mem GiB"] = f"{sum(host.values()):.1f}"
            result["runs"].append({**row, "tok_s_value": summary.tokens_per_s, "server": split,
                                   "ttft_p50": percentile(summary.ttft, 50), "itl_p50": percentile(summary.itl, 50)})
            log(f"{n} clients: {row}; on the server, per request: {split}; host memory by process (GiB): "
                + ", ".join(f"{k} {v:.2f}" for k, v in host.items()))
        for rate in rates:
            tokens = token_counts[-1]
            drive_paced(server.grpc_url, rate, max(5.0, rate_seconds / 3), tokens, images, seed=1)  # untimed
            before = server_counters(server.metrics_url)
            row = drive_paced(server.grpc_url, rate, rate_seconds, tokens, images)
            time.sleep(0.3)
            split = server_split(before, server_counters(server.metrics_url))
            result["paced"].append({**row, "server": split})
            log(f"Poisson arrivals at {rate:g}/s: {row}; on the server, per request: {split}")
    finally:
        server.stop()
    return result


OUT = Path(os.environ.get("OUT") or "var/bench")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a model parameter of configs/gpu.pbtxt), got {text!r}")
    return key, value


def peer_results(paths: list[str]) -> dict[str, dict]:
    """vLLM's rows (the ``RESULT`` line of shared/tools/vllm-peer/vllm_bench.py's output), by file name."""
    out = {}
    for path in paths:
        lines = [line for line in Path(path).read_text().splitlines() if line.startswith("RESULT ")]
        if lines:
            out[Path(path).stem] = json.loads(lines[-1][len("RESULT "):])
    return out


def comparison(report: dict) -> list[dict[str, str]]:
    """One row per load: ours served in process and through Triton (each cache setting) beside the peer's
    runs."""
    columns: dict[str, dict[str, str]] = {}
    for setting, rows in report.get("served", {}).items():
        col = columns.setdefault(f"ours in process, caches {setting}", {})
        for load, row in rows.items():
            col[load] = (f"TTFT p50 {row['TTFT p50 ms']} / p95 {row['TTFT p95 ms']} ms, ITL p99 {row['ITL p99 ms']} ms"
                         if load.startswith("open loop") else f"{row['tok/s']:,} tok/s, TTFT p50 {row['TTFT p50 ms']} ms")
    for setting, result in report.get("triton", {}).items():
        col = columns.setdefault(f"ours through Triton, caches {setting}", {})
        for run in result["runs"]:
            key = f"{run['clients']} x {run['tokens']}"
            col[key] = f"{run['tok_s_value']:,.0f} tok/s, TTFT p50 {run['ttft_p50'] * 1000:.0f} ms"
        for row in result["paced"]:
            col[f"open loop {row['rate req/s']}/s"] = (f"TTFT p50 {row['TTFT p50 ms']} / p95 {row['TTFT p95 ms']} ms, "
                                                      f"ITL p99 {row['ITL p99 ms']} ms")
    for name, peer in report.get("peer", {}).items():
        col = columns.setdefault(f"vLLM ({name})", {})
        for key, row in peer.items():
            if key.startswith("open"):
                col[f"open loop {row['rate']:g}/s"] = (f"TTFT p50 {row['ttft_p50_ms']} / p95 {row['ttft_p95_ms']} ms, "
                                                      f"ITL p99 {row['itl_p99_ms']} ms")
            else:
                col[f"{row['clients']} x 512"] = f"{row['tok_s']:,.0f} tok/s, TTFT p50 {row['ttft_p50_ms']} ms"
    loads = list(dict.fromkeys(k for col in columns.values() for k in col))
    return [{"load": load, **{name: col.get(load, "") for name, col in columns.items()}} for load in loads]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("MODEL_PATH"))
    parser.add_argument("--parts", nargs="+", default=["checks", "engine", "served", "triton"],
                        choices=["checks", "engine", "ab", "served", "triton", "shared"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 64, 128])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512], help="generated tokens per request")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--rates", type=float, nargs="*", default=[8, 16, 24],
                        help="also send requests at Poisson arrival times, this many per second (of the last --tokens)")
    parser.add_argument("--rate-seconds", type=float, default=20, help="how long each --rates run sends")
    parser.add_argument("--prefix-cache", nargs="+", default=["off", "on"], choices=["off", "on"],
                        help="serve (triton and served parts) once per setting of the caches: off is no KV prefix "
                             "cache, processor cache or encoder cache (the peer's caches off), on the config's")
    parser.add_argument("--engine-process", nargs="+", default=["on"], choices=["on", "off"],
                        help="serve through Triton once per setting of engine_process (on: the engine in a process "
                             "of its own; off: on a thread of the model's process); several settings alternate")
    parser.add_argument("--starts", type=int, default=1, help="start Triton this many times (cold start, then warm)")
    parser.add_argument("--new-nodes", action="store_true",
                        help="every start with empty compile caches, as on a new node: the first writes compile "
                             "artifacts ($OUT/compile-artifacts), the later ones load them")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", type=_key_value,
                        help="override a model parameter of configs/gpu.pbtxt in the engine and triton parts (repeatable)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="compile_decode off (configs/gpu.pbtxt turns it on)")
    parser.add_argument("--slot-tree", help="another checkout whose engine the ab part alternates with this one's")
    parser.add_argument("--peer", nargs="*", default=[], help="vLLM peer outputs to print beside ours")
    parser.add_argument("--bursts", action="store_true", help=argparse.SUPPRESS)  # one ab process
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bursts:
        if args.tree:
            import sys

            sys.path.insert(0, args.tree)
        print("BURSTS " + json.dumps(bursts(args.model, [image_bytes(i) for i in range(8)], args.tree, args.compile)),
              flush=True)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    import torch

    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "compile_decode": args.compile,
                    "peer": peer_results(args.peer)}
    model = args.model
    if not model:
        model = "/tmp/qwen3-vl-4b-random"
        if not Path(model, "config.json").exists():
            from backend_python.checkpoint import build

            log("building the Qwen3-VL-4B architecture with random weights")
            build(Path(model), "4b", device="cuda")
            torch.cuda.empty_cache()
    images = [image_bytes(i) for i in range(8)]
    report["copy_bandwidth_GBps"] = copy_bandwidth() / 1e9
    report["decode_bytes"] = decode_bytes(model)
    log(f"device copy bandwidth {report['copy_bandwidth_GBps']:.0f} GB/s")
    save = lambda: (OUT / "bench-gpu.json").write_text(json.dumps(report, indent=2, default=str))  # noqa: E731
    if "ab" in args.parts and args.slot_tree:  # first: its processes need the memory this one's engines keep
        report["ab"] = alternate_trees(model, {"slot engine": args.slot_tree, "paged engine": None})
        save()
    if "checks" in args.parts:
        report["kernels"] = kernel_checks()
        log(f"kernel checks: {report['kernels']}")
        report.update(float32_agreement(model, images))
        log("float32 agreement: " + json.dumps({k: v for k, v in report.items() if k.startswith("float32")}))
        save()
    if "engine" in args.parts:
        report["engine"] = engine_rows(model, images, args.compile, dict(args.param))
        save()
    if "shared" in args.parts:
        report["shared_slice"] = shared_slice(model, images)
        log(f"gpu-shared config under a 20 GiB cap: {report['shared_slice']}")
        save()
    if "served" in args.parts:
        report["served"] = {}
        for setting in args.prefix_cache:
            log(f"served in process: caches {setting}")
            report["served"][setting] = served_rows(model, images, setting == "off", args.compile, args.rates,
                                                    args.rate_seconds, dict(args.param))
            save()
    if "triton" in args.parts:
        report["triton"] = {}
        for setting in args.prefix_cache:
            for process in args.engine_process:
                caches = {} if setting == "on" else CACHES_OFF
                parameters = {"enable_prefix_caching": "true", **caches,
                              "engine_process": "true" if process == "on" else "false", **dict(args.param)}
                key = setting if len(args.engine_process) == 1 else f"{setting}, engine process {process}"
                log(f"through Triton: prefix cache {key}")
                report["triton"][key] = through_triton(
                    model, args.clients, args.tokens, images, args.rounds, args.compile, args.starts, parameters,
                    args.new_nodes, args.rates, args.rate_seconds)
                save()
    save()
    print_report(report)


def print_report(report: dict) -> None:
    floor_step = report["decode_bytes"] / (report["copy_bandwidth_GBps"] * 1e9)
    print(f"\n{report['gpu']}, torch {report['torch']}; weights read per decode step "
          f"{report['decode_bytes'] / 2**30:.2f} GiB; copy bandwidth {report['copy_bandwidth_GBps']:.0f} GB/s; "
          f"floor {floor_step * 1000:.2f} ms per step = {1 / floor_step:.0f} tok/s for one stream")
    if "kernels" in report:
        print("kernels against references (relative error):", report["kernels"])
        print("float32 greedy agreement with generate, tokens equal before the first difference:",
              {k: v for k, v in report.items() if k.startswith("float32")})
    engine = report.get("engine")
    if engine:
        print(f"engine alone: started in {engine['engine_start_s']:.1f} s; capacity {engine['capacity']}")
        print(table([{"load": k.removeprefix("burst_"), **{c: str(v) for c, v in row.items()}}
                     for k, row in engine.items() if k.startswith("burst_")]))
        if "video_1" in engine:
            print("a 10-second 448x448 video (30 fps) and a question, 512 tokens; first tokens from the arrival "
                  "(the video's decoding and processing included):")
            print(table([{c: str(v) for c, v in engine["video_1"].items()}]))
            print(table([{c: str(v) for c, v in engine["video_16"].items()}]))
        print("32,768-token prompt alone:", engine["long_32k"], "; beside 64 decoding streams:",
              engine["long_32k_beside_64"])
        print("131,072-token prompt:", engine["long_128k"])
        print("image prompts arriving while 64 streams decode:", engine["arrivals_beside_64"])
        print(table([{k: str(v) for k, v in turn.items()} for turn in engine["chat_1024px"]]))
    if report.get("ab"):
        print("engine alone, trees alternating (each a fresh process):")
        print(table([{"tree": name, "round": str(i + 1), **{f"{load} streams": f"{row['tok/s']} tok/s, TTFT {row['TTFT p50 ms']} ms"
                                                             for load, row in run.items()}}
                     for name, runs in report["ab"].items() for i, run in enumerate(runs)]))
    for setting, rows in report.get("served", {}).items():
        print(f"\nserved in process (the engine process and the prompt workers, no Triton), caches {setting}:")
        print(table([{"load": load, **{c: str(v) for c, v in row.items()}} for load, row in rows.items()]))
    for setting, result in report.get("triton", {}).items():
        print(f"\nthrough Triton gRPC, prefix cache {setting}:")
        if "cold_start_ready_s" in result:
            print(f"cold start: ready {result['cold_start_ready_s']:.1f} s, first token {result['cold_start_first_token_s']:.1f} s")
        rows = []
        for run in result["runs"]:
            row = {k: v for k, v in run.items()
                   if not k.endswith("_value") and not k.startswith(("ttft_", "itl_")) and k != "server"}
            row["% of floor"] = f"{100 * run['tok_s_value'] / (int(run['clients']) / floor_step):.0f}"
            rows.append(row)
        print(table(rows))
        print(table([{"tokens": r["tokens"], "clients": r["clients"], **r["server"]} for r in result["runs"]]))
        if result.get("paced"):
            print("Poisson arrivals (an open loop):")
            print(table([{k: v for k, v in r.items() if k != "server"} for r in result["paced"]]))
            print(table([{"rate req/s": r["rate req/s"], **r["server"]} for r in result["paced"]]))
    rows = comparison(report)
    if rows:
        print("\nbeside the peer:")
        print(table(rows))


if __name__ == "__main__":
    main()
