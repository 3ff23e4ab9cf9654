"""`make bench-gpu`: the generation engine on one NVIDIA GPU, through the real Triton, against transformers' generate.

    python -m bench.gpu [--model PATH] [--clients 1 8 32 64 128] [--tokens 128 512] [--rates 4 12 24] [--no-compile]

Without MODEL_PATH (or --model) it builds Qwen3-VL-4B-Instruct's architecture with
random weights on local disk (same shapes, same cost). In one run it measures:
1. the memory-bandwidth floor: one copy over the GPU's memory, and the bytes of
   weights a decode step must read;
2. the baseline: the same requests through transformers' ``generate``, one at a
   time and as one static batch;
3. the engine alone: greedy agreement with ``generate``, decode steps/s per batch size, the
   prefill and vision encoder split, whether serving compiled anything the start's warm-up did
   not, and a graph capture broken on purpose (the engine must fall back, not fail requests);
4. cold start of Triton (process start -> ready -> first token) with the weights on disk, and
   the model's own split of it (weights, engine, each warm-up);
5. N concurrent streaming gRPC clients through Triton, each request one 448x448
   image and text, a fixed number of tokens (EOS ignored), after a warm-up;
6. with --rates, the same requests at Poisson arrival times (an open loop, requests per second).
Prints tables and writes bench-gpu.json.
"""

from __future__ import annotations

import argparse
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


# -- 2. baseline and 3. engine ------------------------------------------------------------------------

def build_prompt_inputs(processor, prompt: str, image: bytes):
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=[Image.open(io.BytesIO(image)).convert("RGB")], return_tensors="pt")


def baseline(model_path: str, tokens: int, batch: int, images: list[bytes]) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.bfloat16,
                                                        attn_implementation="sdpa").cuda().eval()
    result = {}
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    single = []
    for i in range(3):
        inputs = build_prompt_inputs(processor, PROMPTS[i], images[i]).to("cuda")
        if i == 0:
            model.generate(**inputs, max_new_tokens=4)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(**inputs, **kwargs)
        torch.cuda.synchronize()
        single.append(tokens / (time.perf_counter() - start))
    result["generate_1_tok_s"] = statistics.median(single)
    from PIL import Image

    texts, pics = [], []
    for i in range(batch):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[i % 8]}]}]
        texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        pics.append(Image.open(io.BytesIO(images[i % len(images)])).convert("RGB"))
    inputs = processor(text=texts, images=pics, return_tensors="pt", padding=True).to("cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(**inputs, **kwargs)
    torch.cuda.synchronize()
    result[f"generate_static_{batch}_tok_s"] = batch * tokens / (time.perf_counter() - start)
    # Greedy reference answers for the engine's correctness check (the first three prompts, 32 tokens).
    refs = []
    for i in range(3):
        inputs = build_prompt_inputs(processor, PROMPTS[i], images[i]).to("cuda")
        out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
        refs.append(out[0, inputs["input_ids"].shape[1]:].tolist())
    result["reference_tokens"] = refs
    del model
    torch.cuda.empty_cache()
    return result


class _Sink:
    def __init__(self):
        import threading

        self.tokens, self.done, self.times = 0, threading.Event(), []

    def send(self, chunk, final):
        self.tokens = chunk.completion_tokens
        self.times.append(time.perf_counter())
        if final:
            self.done.set()

    def fail(self, error):
        raise RuntimeError(error)

    def is_cancelled(self):
        return False

    def busy(self):
        return False


class _RecordingSink(_Sink):
    """Keeps the token ids streamed and the error, if any, instead of raising it."""

    def __init__(self):
        super().__init__()
        self.ids, self.error = [], None

    def send(self, chunk, final):
        self.ids.extend(chunk.token_ids)
        super().send(chunk, final)

    def fail(self, error):
        self.error = error
        self.done.set()


def capture_failure_fallback(engine, built: list) -> dict:
    """A decode-graph capture broken on purpose (another thread makes CUDA calls while the engine
    captures, as the prompt threads of 85657cf's first version did), then the same greedy requests
    again: the engine is meant to drop graphs and give the same tokens, with no request failed. Run
    last: graphs stay off."""
    import contextlib
    import threading

    import torch

    def answers():
        sinks = [_RecordingSink() for _ in built]
        for (r, p), s in zip(built, sinks):
            engine.submit(r, p, s)
        for s in sinks:
            s.done.wait(120)
        return sinks

    before = answers()
    engine._graphs.clear()  # every batch size is captured again, now with the other thread running
    stop = threading.Event()

    def interfere():
        while not stop.is_set():
            with contextlib.suppress(RuntimeError):  # refused while a capture runs: that breaks it
                torch.cuda.synchronize()
            time.sleep(0.0002)

    thread = threading.Thread(target=interfere, daemon=True)
    thread.start()
    try:
        after = answers()
    finally:
        stop.set()
        thread.join()
    return {"requests": len(built), "failed": sum(s.error is not None for s in after),
            "graphs_dropped": engine._graphs is None,
            "same_tokens": sum(a.ids == b.ids for a, b in zip(before, after)),
            "first_error": next((str(s.error) for s in after if s.error is not None), "")}


def float32_agreement(model_path: str, images: list[bytes], tokens: int = 48) -> dict:
    """Greedy tokens of the engine (CUDA graphs, batched) vs transformers' generate, both in float32 on the GPU.

    In bfloat16 a random-weight model's logits are nearly tied, so the two paths part after a few
    tokens through rounding alone; float32 makes the comparison about the algorithm.
    """
    import torch

    from backend_python.config import EngineConfig, Limits
    from backend_python.engine import Engine
    from backend_python.loader import load
    from backend_python.prompt import PromptBuilder
    from backend_python.request import ChatMessage, GenerationRequest, SamplingParams

    # cuDNN runs float32 convolutions in TF32 unless told not to: the checkpoint's patch embedding
    # (a convolution) would then be less exact than the engine's (a matrix product, in float32).
    tf32, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
    config = EngineConfig(model_path=model_path, dtype="float32", slots=4, max_seq_len=512, decode_during_prefill=True,
                          limits=Limits(max_prompt_tokens=400, max_new_tokens=64))
    loaded = load(config)
    prompts = PromptBuilder(loaded.processor, config)
    requests = [GenerationRequest(
        messages=(ChatMessage("user", ({"type": "image", "image": 0}, {"type": "text", "text": PROMPTS[i]})),),
        images=(images[i],), sampling=SamplingParams(max_tokens=tokens, ignore_eos=True)) for i in range(3)]
    built = [prompts.build(r) for r in requests]
    expected = []
    for p in built:
        inputs = dict(input_ids=p.input_ids[None].cuda(), attention_mask=torch.ones_like(p.input_ids)[None].cuda(),
                      mm_token_type_ids=p.mm_token_type_ids[None].cuda(), pixel_values=p.pixel_values.cuda(),
                      image_grid_thw=p.image_grid_thw.cuda())
        out = loaded.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        expected.append(out[0, p.length:].tolist())
    engine = Engine(loaded, config).start()
    pixels = torch.cat([p.pixel_values for p in built]).cuda()
    grid = torch.cat([p.image_grid_thw for p in built])
    layout = engine._vision.layout(grid, torch.Tensor.cuda)
    with torch.inference_mode():
        vision = _worst_difference(engine._vision(pixels, layout),
                                   loaded.model.model.visual(pixels, grid_thw=grid.cuda()))
    got: dict[int, list[int]] = {}
    original = engine._advance

    def record(batch, new_tokens):
        for s, t in zip(batch, new_tokens):
            got.setdefault(id(s.sink), []).append(t)
        return original(batch, new_tokens)

    engine._advance = record
    sinks = [_Sink() for _ in requests]
    for r, p, s in zip(requests, built, sinks):  # all three together: batched prefill and decode
        engine.submit(r, p, s)
    for s in sinks:
        s.done.wait(120)
    # Staggered: the first decodes while the other two are prefilled, its steps between their layers.
    during, launch = [], engine._launch

    def counted(capture=True):
        launched = launch(capture)
        if launched and not capture:  # only a step between a prefill's layers is launched so
            during.append(1)
        return launched

    engine._launch = counted
    staggered = [_Sink() for _ in requests]
    engine.submit(requests[0], built[0], staggered[0])
    deadline = time.monotonic() + 60
    while len(got.get(id(staggered[0]), ())) < 8 and time.monotonic() < deadline:
        time.sleep(0.005)
    with engine._lock:  # one prefill for both
        for r, p, s in zip(requests[1:], built[1:], staggered[1:]):
            engine.submit(r, p, s)
    for s in staggered:
        s.done.wait(120)
    engine.stop()

    def agreement(runs):
        return [next((k for k, (a, b) in enumerate(zip(got[id(s)], e)) if a != b), len(e))
                for s, e in zip(runs, expected)]

    del engine, loaded
    torch.cuda.empty_cache()
    torch.backends.cudnn.allow_tf32 = tf32
    return {"float32_agreement_tokens": agreement(sinks), "float32_staggered_agreement_tokens": agreement(staggered),
            "float32_steps_during_prefill": len(during), "float32_reference_len": tokens,
            "float32_vision_difference": vision}


def engine_alone(model_path: str, images: list[bytes], refs: list[list[int]], batches: list[int],
                 compile: bool = False) -> dict:
    """The engine without Triton: greedy agreement with generate, and decode speed per batch size."""
    import torch

    from backend_python.config import EngineConfig, Limits
    from backend_python.engine import Engine
    from backend_python.loader import load
    from backend_python.prompt import PromptBuilder
    from backend_python.request import ChatMessage, GenerationRequest, SamplingParams

    config = EngineConfig(model_path=model_path, slots=max(batches), max_seq_len=1024, prefills_per_step=16,
                          compile_decode=compile, limits=Limits(max_prompt_tokens=512, max_new_tokens=512))
    loaded = load(config)
    started = time.perf_counter()
    engine = Engine(loaded, config).start()
    log(f"engine started in {time.perf_counter() - started:.1f} s (compile_decode={compile}): {engine.start_timings}")
    graphs_at_start = _dynamo_graphs()
    prompts = PromptBuilder(loaded.processor, config, pixel_dtype=loaded.dtype)

    def request(i, tokens, ignore_eos=True, image=True):
        content = ({"type": "image", "image": 0},) if image else ()
        content += ({"type": "text", "text": PROMPTS[i % 8]},)
        return GenerationRequest(messages=(ChatMessage("user", content),),
                                 images=(images[i % len(images)],) if image else (),
                                 sampling=SamplingParams(max_tokens=tokens, ignore_eos=ignore_eos))

    agreement = []
    for i, ref in enumerate(refs):
        sink, r = _Sink(), request(i, len(ref), ignore_eos=False)
        ids = []
        original = engine._advance

        def spy(batch, tokens, original=original):
            ids.extend(tokens)
            return original(batch, tokens)

        engine._advance = spy
        engine.submit(r, prompts.build(r), sink)
        sink.done.wait(120)
        engine._advance = original
        same = next((k for k, (a, b) in enumerate(zip(ids, ref)) if a != b), min(len(ids), len(ref)))
        agreement.append(same)
    result = {"greedy_agreement_tokens": agreement, "greedy_reference_len": [len(r) for r in refs]}
    steps = {}
    for batch in batches:
        for _ in range(2):  # the first run is untimed: it captures the graphs of this batch's shapes
            engine.timings = {}
            tokens = 96
            built = [(r, prompts.build(r)) for r in (request(i, tokens) for i in range(batch))]
            sinks, _, elapsed = run_all(engine, built)
        # Decode-only rate: from the last first token to the first final token.
        first = max(s.times[0] for s in sinks)
        last = min(s.times[-1] for s in sinks)
        decode_steps = min(s.tokens for s in sinks) - 1
        per_step = (last - first) / max(1, decode_steps - (0 if batch == 1 else 1))
        n_steps = engine.timings.pop("steps", 1)
        steps[batch] = {"tok_s": batch * tokens / elapsed, "ms_per_step": per_step * 1000,
                        "captured_graphs": len(engine._graphs or {}),
                        **{f"host_{k}_ms": 1000 * v / n_steps for k, v in engine.timings.items()}}
        log(f"engine alone, batch {batch}: {steps[batch]}")
    result["engine_steps"] = steps
    sixteen = [(r, prompts.build(r)) for r in (request(i, 1) for i in range(16))]
    result["prefill_breakdown"] = prefill_breakdown(engine, sixteen)
    log(f"prefill of 16 image prompts: {result['prefill_breakdown']['ms']}")
    # Half of them text alone (~20 tokens against ~214): what packing the prompts saves over padding them.
    mixed = [(r, prompts.build(r)) for r in (request(i, 1, image=i % 2 == 0) for i in range(16))]
    result["prefill_mixed"] = prefill_breakdown(engine, mixed)
    result["prefill_mixed"]["tokens"] = {"computed": sum(p.length for _, p in mixed),
                                         "padded": len(mixed) * max(p.length for _, p in mixed)}
    log(f"prefill of 16 prompts, 8 of them without an image: {result['prefill_mixed']['ms']}, "
        f"tokens {result['prefill_mixed']['tokens']}")
    # A lone prompt's prefill is host-bound: what each call per layer costs on the host shows here.
    result["prefill_one"] = prefill_breakdown(engine, sixteen[:1])
    log(f"prefill of one image prompt: {result['prefill_one']['ms']}")
    result["packed_attention"] = packed_attention_check(loaded.model.config.text_config)
    log(f"packed prefill attention against prompt-by-prompt float32: {result['packed_attention']}")
    result["vision_16"] = vision_against_transformers(engine, sixteen)
    log(f"vision encoder, 16 images: {result['vision_16']}")
    burst = [(r, prompts.build(r)) for r in (request(i, 512) for i in range(64))]
    result["burst_64x512"] = engine_burst(engine, burst)
    log(f"engine alone, 64 x 512 at once: {result['burst_64x512']}")
    result["graph_replay_ms"] = replay_times(engine)
    result["eager_step_profile"] = profile_step(engine)
    greedy = [(r, prompts.build(r)) for r in (request(i, 64) for i in range(8))]
    result["capture_failure"] = capture_failure_fallback(engine, greedy)
    log(f"capture broken on purpose: {result['capture_failure']}")
    result["gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    # The start's warm-up is meant to compile every shape serving meets: a graph compiled later is
    # seconds of some request's latency.
    result["dynamo_graphs"] = {"after_start": graphs_at_start, "after_serving": _dynamo_graphs()}
    log(f"torch.compile graphs: {result['dynamo_graphs']}")
    engine.stop()
    del engine, loaded
    torch.cuda.empty_cache()
    return result


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def run_all(engine, built: list, at_once: bool = False, timeout: float = 300) -> tuple[list[_Sink], float, float]:
    """Submit every prebuilt (request, prompt) and wait for all: the sinks, the start, the seconds taken.

    ``at_once``: handed over while the engine waits (fewer than its free slots), so they make one prefill."""
    import contextlib

    import torch

    sinks = [_Sink() for _ in built]
    torch.cuda.synchronize()
    start = time.perf_counter()
    with engine._lock if at_once else contextlib.nullcontext():
        for (r, p), s in zip(built, sinks):
            engine.submit(r, p, s)
    for s in sinks:
        s.done.wait(timeout)
    return sinks, start, time.perf_counter() - start


class _Timed:
    """Times each call of a callable, the device synchronized before and after; passes the rest through."""

    def __init__(self, inner, times: list[float]):
        self._inner, self._times = inner, times

    def __call__(self, *args, **kwargs):
        import torch

        torch.cuda.synchronize()
        start = time.perf_counter()
        out = self._inner(*args, **kwargs)
        torch.cuda.synchronize()
        self._times.append((time.perf_counter() - start) * 1000)
        return out

    def __getattr__(self, name):
        return getattr(self._inner, name)


def packed_attention_check(text_config, lengths=(214, 20, 466, 1, 97)) -> dict:
    """The prefill's one flash-attention call over packed prompts (bfloat16) against its other path,
    causal attention prompt by prompt (float32), with the checkpoint's head counts: the largest
    difference, relative to the largest output."""
    import torch

    from backend_python.decode import packed_attention

    heads, kv_heads = text_config.num_attention_heads, text_config.num_key_value_heads
    dim = getattr(text_config, "head_dim", text_config.hidden_size // heads)
    bounds = [0, *itertools.accumulate(lengths)]
    segments = torch.tensor(bounds, dtype=torch.int32, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn((bounds[-1], h, dim), device="cuda", generator=generator)
               for h in (heads, kv_heads, kv_heads))
    packed = packed_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), bounds, segments, max(lengths),
                              causal=True).float()
    reference = packed_attention(q, k, v, bounds, segments, max(lengths), causal=True)
    return {"prompts": list(lengths),
            "max_difference": float((packed - reference).abs().max() / reference.abs().max())}


def prefill_breakdown(engine, built: list, repeats: int = 3) -> dict:
    """Where one batched prefill of ``built`` goes: the vision encoder, the decoder layers, the copy into
    the slots (each synchronized, median of ``repeats``), and its kernels' device time. The requests are
    handed over while the engine waits, so that they make one prefill."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    parts: dict[str, list[float]] = {"vision": [], "decoder": [], "store": []}
    originals = (engine._vision, engine._decoder.prefill, engine.cache.store)
    engine._vision = _Timed(engine._vision, parts["vision"])
    engine._decoder.prefill = _Timed(engine._decoder.prefill, parts["decoder"])
    engine.cache.store = _Timed(engine.cache.store, parts["store"])

    def once():
        return run_all(engine, built, at_once=True)[2] * 1000

    try:
        once()
        for times in parts.values():
            times.clear()
        totals = [once() for _ in range(repeats)]
    finally:
        engine._vision, engine._decoder.prefill, engine.cache.store = originals
    result = {"ms": {"first token, all": round(statistics.median(totals), 1),
                     **{k: round(statistics.median(v), 1) for k, v in parts.items() if v}},
              "prefills": {k: len(v) for k, v in parts.items()}}
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        once()
    result["profile"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
    return result


def _worst_difference(got: tuple, want) -> float:
    """The largest difference of a vision encoder's features (merged, then deepstack) from ``want``'s,
    relative to the largest reference feature."""
    pairs = [(got[0], want.pooler_output), *zip(got[1], want.deepstack_features)]
    return max(float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in pairs)


def vision_against_transformers(engine, built: list, repeats: int = 5) -> dict:
    """The engine's vision encoder against the checkpoint's own on the same images, in the served dtype:
    time (synchronized, median), and how far each one's features are from the checkpoint's in float32."""
    import copy

    import torch

    pixels = torch.cat([p.pixel_values for _, p in built]).cuda()
    grid = torch.cat([p.image_grid_thw for _, p in built])
    visual = engine.model.model.visual
    layout = engine._vision.layout(grid, torch.Tensor.cuda)
    runs = {"transformers": lambda: visual(pixels, grid_thw=grid.cuda()),
            "engine": lambda: engine._vision(pixels, layout)}
    out: dict = {"images": len(built)}
    with torch.inference_mode():
        for name, fn in runs.items():
            fn()
            times: list[float] = []
            timed = _Timed(fn, times)
            for _ in range(repeats):
                timed()
            out[f"{name}_ms"] = round(statistics.median(times), 2)
        exact = copy.deepcopy(visual).float()(pixels.float(), grid_thw=grid.cuda())
        theirs = runs["transformers"]()
        out["difference_to_float32"] = {"transformers": _worst_difference((theirs.pooler_output,
                                                                           theirs.deepstack_features), exact),
                                        "engine": _worst_difference(runs["engine"](), exact)}
    return out


def engine_burst(engine, built: list) -> dict:
    """The table's 64 x 512 burst without Triton: every request submitted at once, prompts prebuilt."""
    sinks, start, elapsed = run_all(engine, built)
    ttft = sorted(s.times[0] - start for s in sinks)
    return {"tok_s": round(sum(s.tokens for s in sinks) / elapsed), "ttft_p50_ms": round(1000 * percentile(ttft, 50)),
            "last_first_token_ms": round(1000 * ttft[-1]), "seconds": round(elapsed, 2)}


def replay_times(engine) -> dict:
    """GPU time of one captured decode step per (batch, cached tokens): the engine's floor without
    host work. A graph of the exact-length kernel serves every length: it is timed at 256 and 512."""
    import torch

    out = {}
    for (rows, span), (graph, _) in sorted(engine._graphs.items()):
        for tokens in (256, 512) if engine._decoder.exact_attention else (span,):
            engine._lengths[:rows] = tokens - 1  # the step's own token is the last cached one
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            graph.replay()
            start.record()
            for _ in range(20):
                graph.replay()
            end.record()
            end.synchronize()
            out[f"{rows}x{tokens}"] = start.elapsed_time(end) / 20
    return out


def profile_step(engine, rows: int = 1, span: int = 256) -> str:
    """Where the time of one eager decode step goes, kernel by kernel (top 15)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    engine._lengths[:rows] = 100
    with torch.inference_mode():
        for _ in range(3):
            engine._forward(rows, span)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                engine._forward(rows, span)
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)


# -- 4. and 5. through Triton ---------------------------------------------------------------------

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


def gpu_memory_used_gib() -> float:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True)
    return float(out.stdout.split()[0]) / 1024 if out.returncode == 0 else float("nan")


SERVER_COUNTERS = ("nv_inference_request_success", "nv_inference_exec_count", "nv_inference_queue_duration_us",
                   "nv_inference_compute_infer_duration_us", "qwen3vl_time_to_first_token_seconds_sum",
                   "qwen3vl_time_to_first_token_seconds_count", "qwen3vl_prefill_size_sum",
                   "qwen3vl_prefill_size_count")


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
    (its batch's), and from the engine taking it to its first token; and prompts per prefill."""
    delta = {k: after[k] - before[k] for k in SERVER_COUNTERS}
    requests = max(delta["nv_inference_request_success"], 1.0)
    first = max(delta["qwen3vl_time_to_first_token_seconds_count"], 1.0)
    prefills = max(delta["qwen3vl_prefill_size_count"], 1.0)
    return {"queue ms": f"{delta['nv_inference_queue_duration_us'] / requests / 1000:.0f}",
            "execute ms": f"{delta['nv_inference_compute_infer_duration_us'] / requests / 1000:.0f}",
            "batches": f"{delta['nv_inference_exec_count']:.0f}",
            "engine TTFT ms": f"{1000 * delta['qwen3vl_time_to_first_token_seconds_sum'] / first:.0f}",
            "prompts per prefill": f"{delta['qwen3vl_prefill_size_sum'] / prefills:.1f}"}


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
            result["runs"].append({**row, "tok_s_value": summary.tokens_per_s, "server": split,
                                   "ttft_p50": percentile(summary.ttft, 50), "itl_p50": percentile(summary.itl, 50)})
            log(f"{n} clients: {row}; on the server, per request: {split}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("MODEL_PATH"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512], help="generated tokens per request")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--skip", nargs="*", default=[], choices=["baseline", "engine", "triton", "float32"])
    parser.add_argument("--rates", type=float, nargs="*", default=[],
                        help="also send requests at Poisson arrival times, this many per second (of the last --tokens)")
    parser.add_argument("--rate-seconds", type=float, default=30, help="how long each --rates run sends")
    parser.add_argument("--starts", type=int, default=1, help="start Triton this many times (cold start, then warm)")
    parser.add_argument("--new-nodes", action="store_true",
                        help="every start with empty compile caches, as on a new node: the first writes compile "
                             "artifacts ($OUT/compile-artifacts), the later ones load them")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", type=_key_value,
                        help="override a model parameter of configs/gpu.pbtxt (repeatable)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="compile_decode off (configs/gpu.pbtxt turns it on)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    import torch

    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "compile_decode": args.compile}
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
    report["decode_bytes"] = decode_bytes(model)  # the floor column of every table, baseline run or not
    log(f"device copy bandwidth {report['copy_bandwidth_GBps']:.0f} GB/s")
    refs: list[list[int]] = []
    if "baseline" not in args.skip:
        base = baseline(model, args.tokens[0], 64, images)
        refs = base.pop("reference_tokens")
        report.update(base)
        log(f"baseline: {base}")
    if "engine" not in args.skip:
        if "float32" not in args.skip:
            report.update(float32_agreement(model, images))
            log(f"float32 agreement: {report['float32_agreement_tokens']} of {report['float32_reference_len']}, "
                f"vision features {report['float32_vision_difference']:.1e} from the checkpoint's (relative); "
                f"one decoding while two are prefilled: {report['float32_staggered_agreement_tokens']} "
                f"({report['float32_steps_during_prefill']} decode steps during the prefill)")
        report.update(engine_alone(model, images, refs, [1, 8, 32, 64, 128], args.compile))
    if "triton" not in args.skip:
        parameters = dict(args.param)
        report["parameters"] = parameters
        report.update(through_triton(model, args.clients, args.tokens, images, args.rounds, args.compile,
                                     args.starts, parameters, args.new_nodes, args.rates, args.rate_seconds))
    (OUT / "bench-gpu.json").write_text(json.dumps(report, indent=2, default=str))

    floor_step = report["decode_bytes"] / (report["copy_bandwidth_GBps"] * 1e9)
    print(f"\n{report['gpu']}, torch {report['torch']}; weights read per decode step "
          f"{report['decode_bytes'] / 2**30:.2f} GiB; copy bandwidth {report['copy_bandwidth_GBps']:.0f} GB/s; "
          f"floor {floor_step * 1000:.2f} ms per step = {1 / floor_step:.0f} tok/s for one stream")
    if "cold_start_ready_s" in report:
        print(f"cold start: ready {report['cold_start_ready_s']:.1f} s, first token {report['cold_start_first_token_s']:.1f} s")
    if "greedy_agreement_tokens" in report:
        print(f"greedy agreement with generate, tokens equal before the first difference: bfloat16 "
              f"{report['greedy_agreement_tokens']} of {report['greedy_reference_len']}, float32 "
              f"{report.get('float32_agreement_tokens')} of {report.get('float32_reference_len')} each, "
              f"one decoding while two are prefilled {report.get('float32_staggered_agreement_tokens')}")
    if "graph_replay_ms" in report:
        print("captured decode step, GPU ms:", {k: round(v, 2) for k, v in report["graph_replay_ms"].items()})
        print(report["eager_step_profile"])
    if "prefill_breakdown" in report:
        print("prefill of 16 image prompts, ms:", report["prefill_breakdown"]["ms"])
        print(report["prefill_breakdown"]["profile"])
        print("prefill of 16 prompts, 8 of them without an image, ms:", report["prefill_mixed"]["ms"],
              "tokens:", report["prefill_mixed"]["tokens"])
        print("prefill of one image prompt, ms:", report["prefill_one"]["ms"])
        print("packed prefill attention (bfloat16) against prompt by prompt (float32):", report["packed_attention"])
        print("engine alone, 64 x 512 at once:", report["burst_64x512"])
        print("vision encoder, 16 images:", report["vision_16"])
        print("torch.compile graphs:", report["dynamo_graphs"], "; capture broken on purpose:",
              report["capture_failure"])
    if "engine_steps" in report:
        print(table([{"batch": str(b), "tok/s": f"{v['tok_s']:.0f}", "ms/step": f"{v['ms_per_step']:.2f}",
                      "launch ms": f"{v.get('host_launch_ms', 0):.2f}", "wait ms": f"{v.get('host_wait_ms', 0):.2f}",
                      "stream ms": f"{v.get('host_stream_ms', 0):.2f}"}
                     for b, v in report["engine_steps"].items()]))
    rows = []
    for run in report.get("runs", []):
        row = {k: v for k, v in run.items()
               if not k.endswith("_value") and not k.startswith(("ttft_", "itl_")) and k != "server"}
        base1 = report.get("generate_1_tok_s")
        if base1:
            row["x generate(1)"] = f"{run['tok_s_value'] / base1:.1f}"
        row["% of floor"] = f"{100 * run['tok_s_value'] / (int(run['clients']) / floor_step):.0f}"
        rows.append(row)
    if rows:
        print(table(rows))
        print("on the server, per request (means):")
        print(table([{"tokens": r["tokens"], "clients": r["clients"], **r["server"]}
                     for r in report["runs"] if "server" in r]))
    if report.get("paced"):
        print("Poisson arrivals (an open loop):")
        print(table([{k: v for k, v in r.items() if k != "server"} for r in report["paced"]]))
        print(table([{"rate req/s": r["rate req/s"], **r["server"]} for r in report["paced"]]))
    print(f"baseline generate: 1 stream {report.get('generate_1_tok_s', float('nan')):.1f} tok/s, "
          f"static batch 64 {report.get('generate_static_64_tok_s', float('nan')):.0f} tok/s")


if __name__ == "__main__":
    main()
