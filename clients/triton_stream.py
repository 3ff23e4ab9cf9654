"""Stream a Qwen3-VL answer from Triton over gRPC: a small command-line client, and the helpers tests and benchmarks use.

    python -m clients.triton_stream --url 127.0.0.1:8001 --image cat.jpg "What is in this picture?"
    python -m clients.triton_stream --video clip.mp4 "What happens in this video?"

`--url` is any gRPC target. For several Triton replicas without the frontend, name them all:
`dns:///triton-headless.qwen3-vl.svc.cluster.local:8001` (the headless Service: one DNS answer
with every ready pod) or `ipv4:10.0.0.5:8001,10.0.0.6:8001`. gRPC's own `round_robin` policy
then sends each stream to the next replica: per-request balancing, where a plain Service name
would pin every stream of a channel to the one pod its connection reached. Each `stream` call
opens a new channel, so its DNS answer is never older than the call.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

from wire_contract import INPUTS, MODEL_NAME, WireRequest, WireResponse

CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
]


def user_turn(prompt: str, n_images: int = 0, n_videos: int = 0) -> list[dict]:
    parts = [{"type": "video", "video": i} for i in range(n_videos)] \
        + [{"type": "image", "image": i} for i in range(n_images)] + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": parts}]


def build_inputs(messages: list[dict], images: list[bytes] = (), videos: list[bytes] = (),
                 **params) -> list[grpcclient.InferInput]:
    """The request tensors of docs/contracts.md; ``params`` are wire_contract.WireRequest's fields."""
    arrays = WireRequest(messages, images, videos, **params).to_arrays()
    return [grpcclient.InferInput(name, list(array.shape), INPUTS[name].datatype).set_data_from_numpy(array)
            for name, array in arrays.items()]


@dataclass
class StreamResult:
    text: str = ""
    deltas: list[str] = field(default_factory=list)
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    visual_tokens: int = 0
    error: Exception | None = None
    started: float = 0.0
    first_token_at: float | None = None
    token_times: list[float] = field(default_factory=list)
    finished_at: float = 0.0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started


def stream(url: str, inputs: list[grpcclient.InferInput], *, timeout: float = 120.0,
           on_delta=None, cancel_after: int | None = None) -> StreamResult:
    """Send one request on its own gRPC stream and collect every response until the final one.

    After the final response the stream is closed, not cancelled: Triton then ends the call itself.
    Cancelling it while Triton still writes that response makes Triton 2.51 keep the request for
    ever, and the model then never unloads (SIGTERM ends in the exit timeout).
    """
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
    result = StreamResult(started=time.monotonic())
    final = False
    try:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        client.async_stream_infer(MODEL_NAME, inputs, request_id=uuid.uuid4().hex, enable_empty_final_response=True)
        while True:
            try:
                response, error = responses.get(timeout=timeout)
            except queue.Empty:
                result.error = TimeoutError(f"no response within {timeout} s")
                break
            if error is not None:
                result.error = error
                break
            now = time.monotonic()
            if response.as_numpy("text_output") is not None:  # the empty final response has no outputs
                wire = WireResponse.from_arrays(response.as_numpy)
                if wire.text:
                    result.first_token_at = result.first_token_at or now
                    result.deltas.append(wire.text)
                    result.token_times.append(now)
                    result.text += wire.text
                    if on_delta:
                        on_delta(wire.text)
                result.finish_reason = wire.finish_reason
                # Only a stream's first and last responses carry the prompt's counts (docs/contracts.md).
                result.prompt_tokens = wire.prompt_tokens or result.prompt_tokens
                result.completion_tokens = wire.completion_tokens
                result.visual_tokens = wire.visual_tokens or result.visual_tokens
            if response.get_response().parameters["triton_final_response"].bool_param:
                final = True
                break
            if cancel_after is not None and len(result.deltas) >= cancel_after:
                client.stop_stream(cancel_requests=True)
                result.finish_reason = "cancelled"
                break
    finally:
        result.finished_at = time.monotonic()
        client.stop_stream(cancel_requests=not final)
        client.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Ask Qwen3-VL on Triton a question, streaming the answer.")
    parser.add_argument("prompt")
    parser.add_argument("--url", default="127.0.0.1:8001",
                        help="Triton's gRPC address, or dns:///name:port / ipv4:a:port,b:port for several replicas")
    parser.add_argument("--image", action="append", default=[], type=Path, help="an image file (repeatable)")
    parser.add_argument("--video", action="append", default=[], type=Path,
                        help="a video file: MP4, MOV, WebM, Matroska or AVI (repeatable)")
    parser.add_argument("--system", default=None, help="a system prompt")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[])
    args = parser.parse_args()
    messages = user_turn(args.prompt, len(args.image), len(args.video))
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    inputs = build_inputs(messages, [p.read_bytes() for p in args.image], [p.read_bytes() for p in args.video],
                          max_tokens=args.max_tokens,
                          temperature=args.temperature, top_p=args.top_p, seed=args.seed, stop=args.stop)
    result = stream(args.url, inputs, on_delta=lambda text: print(text, end="", flush=True))
    print()
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
        sys.exit(1)
    print(f"[{result.finish_reason}; prompt {result.prompt_tokens} tokens ({result.visual_tokens} visual), completion "
          f"{result.completion_tokens} tokens; first token after {result.ttft or 0:.3f} s]", file=sys.stderr)


if __name__ == "__main__":
    main()
