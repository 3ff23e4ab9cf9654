"""Videos through the real Triton over gRPC: answers, the engine's own answers, bad files, metrics, the client."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from backend_samples import Sink, png, run, tensors, tiny_checkpoint
from google.protobuf import text_format
from triton_metrics import scrape, scrape_until
from tritonclient.grpc import model_config_pb2

from backend_python.config import EngineConfig
from backend_python.engine import Engine
from backend_python.loader import load
from backend_python.prompt import PromptBuilder
from backend_python.request import GenerationRequest
from clients.triton_stream import build_inputs, stream, user_turn
from tests.samples import videos

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
CLIP = videos.clip(3.0, fps=10, size=(160, 96))


def ask(triton, prompt="What happens in this video?", images=(), clips=(CLIP,), **kwargs):
    messages = kwargs.pop("messages", None) or user_turn(prompt, len(images), len(clips))
    return stream(triton.grpc_url, build_inputs(messages, list(images), list(clips), **kwargs))


def test_a_video_answer_streamed_and_whole_counts_the_videos_tokens(triton):
    streamed = ask(triton, max_tokens=16, ignore_eos=True)
    assert streamed.error is None and len(streamed.deltas) > 1 and streamed.completion_tokens == 16
    # 3 seconds at 2 frames a second: 3 pairs of 96 x 160 frames, 15 tokens each, and their timestamps.
    assert streamed.visual_tokens == 45 and streamed.prompt_tokens > 45 + 3 * 6
    whole = ask(triton, max_tokens=16, ignore_eos=True, stream=False)
    assert whole.error is None and len(whole.deltas) == 1
    assert (whole.text, whole.prompt_tokens, whole.visual_tokens) == (streamed.text, streamed.prompt_tokens, 45)


@pytest.fixture(scope="module")
def engine_alone():
    """The engine in this process, with the parameters the served config.pbtxt gives it."""
    parsed = text_format.Parse((ROOT / "model_repository/qwen3_vl/config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    config = EngineConfig.from_parameters({k: v.string_value for k, v in parsed.parameters.items()},
                                          environ={"MODEL_PATH": str(tiny_checkpoint())})
    loaded = load(config)
    prompts = PromptBuilder(loaded.processor, config, pixel_dtype=loaded.dtype)
    engine = Engine(loaded, config).start()
    yield engine, prompts, config
    engine.stop()
    prompts.close()


TURNS = {
    "a video": dict(images=(), clips=(CLIP,)),
    "a video and an image in one turn": dict(images=(png(120, 80),), clips=(videos.clip(2.0, colour=(40, 200, 40)),)),
    "two videos": dict(images=(), clips=(CLIP, videos.clip(4.0, fps=8, size=(96, 96), container="webm"))),
}


@pytest.mark.parametrize("turn", list(TURNS))
def test_greedy_answers_through_triton_equal_the_engines_alone(triton, engine_alone, turn):
    engine, prompts, config = engine_alone
    images, clips = TURNS[turn]["images"], TURNS[turn]["clips"]
    served = ask(triton, "Describe what you see.", images, clips, max_tokens=24)
    request = GenerationRequest.from_tensors(
        tensors(user_turn("Describe what you see.", len(images), len(clips)), images, clips, max_tokens=24),
        config.limits)
    alone = run(engine, prompts, [request], [Sink()])[0]
    assert served.error is None and served.text == alone.text
    assert (served.prompt_tokens, served.visual_tokens) == (alone.chunks[-1].prompt_tokens,
                                                            alone.chunks[-1].visual_tokens)


BAD = [
    (dict(clips=[b"this is not a video, only words"]), "videos[0] is not a video in a supported container"),
    (dict(clips=[videos.truncated(CLIP)]), "videos[0] is truncated or corrupt"),
    (dict(clips=[videos.audio_only()]), "videos[0] has no video stream (it holds audio only)"),
    (dict(clips=[videos.claiming_hours(5)]), "videos[0] lasts 18,001.0 s, at most 600 s"),
    (dict(clips=[videos.claiming_frame_size(16000, 16000)]), "16000x16000 = 256000000 pixels, at most 2073600"),
    (dict(clips=[], images=[CLIP]), "images[0] is a video (mp4), not an image"),
    (dict(clips=[png()]), "videos[0] is an image (png), not a video"),
    (dict(clips=[CLIP] * 3), "3 videos, at most 2 per request"),
    (dict(clips=[CLIP], messages=[{"role": "user", "content": [{"type": "video", "video": 1}]}]),
     "index into 'videos' (0..0)"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=[m for _, m in BAD])
def test_a_bad_video_gets_a_clear_error_and_the_next_request_succeeds(triton, bad, message):
    failed = ask(triton, max_tokens=4, **bad)
    assert failed.error is not None and message in str(failed.error)
    assert "INVALID_ARG" in str(failed.error) or "invalid" in str(failed.error)
    assert ask(triton, "Still there?", max_tokens=4).error is None


def test_the_model_counts_videos_and_their_visual_tokens(triton):
    time.sleep(0.3)  # the model applies its metric updates every 100 ms: the earlier tests' land first
    before = scrape(triton.metrics_url)
    assert ask(triton, clips=(CLIP, CLIP), max_tokens=2).error is None
    grew = lambda m, name: m.get(name, 0) - before.get(name, 0)  # noqa: E731
    after = scrape_until(triton.metrics_url, lambda m: grew(m, "qwen3vl_videos_total") >= 2)
    assert grew(after, "qwen3vl_videos_total") == 2
    assert grew(after, "qwen3vl_video_tokens_total") == 2 * 45


def test_the_command_line_client_sends_a_video(triton, tmp_path):
    path = tmp_path / "clip.mov"
    path.write_bytes(videos.clip(2.0, container="mov"))
    done = subprocess.run([sys.executable, "-m", "clients.triton_stream", "--url", triton.grpc_url, "--video",
                           str(path), "--max-tokens", "8", "What happens?"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and re.search(r"prompt \d+ tokens \(24 visual\), completion \d+ tokens", done.stderr)
