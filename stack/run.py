"""`make run`: Triton and the frontend on their usual ports, until Ctrl-C.

    python -m stack.run [--host 127.0.0.1] [--no-frontend]

MODEL_PATH picks the model (a Hugging Face folder or hub id); without it the
tiny local checkpoint is built once under var/checkpoints/tiny and served.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from stack.frontend import FrontendServer
from stack.triton import ROOT, TritonServer, has_gpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--frontend-port", type=int, default=int(os.environ.get("FRONTEND_PORT", "8080")))
    parser.add_argument("--no-frontend", action="store_true")
    args = parser.parse_args()

    logs = ROOT / "var" / "log"
    logs.mkdir(parents=True, exist_ok=True)
    gpu = has_gpu()
    triton = TritonServer(config_name="gpu" if gpu else None, host=args.host, log_file=str(logs / "triton.log"))
    print(f"starting Triton on {'the GPU' if gpu else 'the CPU'} with {triton.model_path} (log: {triton.log_file})",
          flush=True)
    triton.start(timeout=1800)
    frontend = None
    if not args.no_frontend:
        frontend = FrontendServer(
            port=args.frontend_port, host=args.host, log_file=str(logs / "frontend.log"),
            env={"FRONTEND_TRITON_GRPC_URL": f"127.0.0.1:{triton.grpc_port}"},
        ).start()
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "127.0.0.1") else args.host
    print(
        "\nQwen3-VL is being served:\n"
        f"  Triton gRPC      {shown}:{triton.grpc_port}   (python -m clients.triton_stream --url {shown}:{triton.grpc_port} \"Hello\")\n"
        f"  Triton HTTP      http://{shown}:{triton.http_port}/v2/models/qwen3_vl\n"
        f"  Triton metrics   http://{shown}:{triton.metrics_port}/metrics\n"
        + (
            f"  Web UI           http://{shown}:{args.frontend_port}/\n"
            f"  OpenAI API       http://{shown}:{args.frontend_port}/v1/chat/completions\n"
            f"  Frontend metrics http://{shown}:{args.frontend_port}/metrics\n"
            if frontend else ""
        )
        + f"Logs in {Path(logs).relative_to(ROOT)}/. Press Ctrl-C to stop.",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1):
            if triton.process.poll() is not None:
                print("Triton exited; see var/log/triton.log", flush=True)
                break
    except KeyboardInterrupt:
        pass
    finally:
        if frontend:
            frontend.stop()
        triton.stop()


if __name__ == "__main__":
    main()
