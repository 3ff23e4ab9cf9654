"""`make run`: Triton and the frontend on their usual ports, until Ctrl-C.

    python -m stack.run [--host 127.0.0.1] [--triton-replicas N] [--no-frontend]

MODEL_PATH picks the model (a Hugging Face folder or hub id); without it the
tiny local checkpoint is built once under var/checkpoints/tiny and served.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stack.frontend import FrontendServer
from stack.triton import ROOT, TritonServer, has_gpu, loopback_replicas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--frontend-port", type=int, default=int(os.environ.get("FRONTEND_PORT", "8080")))
    parser.add_argument("--triton-replicas", type=int, default=int(os.environ.get("TRITON_REPLICAS", "1")),
                        help="Triton servers on 127.0.0.1, 127.0.0.2, ... (ports 8000-8002 on each); "
                             "the frontend sends each request to the least occupied one")
    parser.add_argument("--no-frontend", action="store_true")
    args = parser.parse_args()
    if args.triton_replicas < 1 or (args.triton_replicas > 1 and args.host != "127.0.0.1"):
        parser.error("--triton-replicas: 1, or several on the loopback addresses (leave --host at 127.0.0.1)")

    logs = ROOT / "var" / "log"
    logs.mkdir(parents=True, exist_ok=True)
    gpu = has_gpu()
    config_name = "gpu" if gpu else None
    if args.triton_replicas == 1:
        tritons = [TritonServer(config_name=config_name, host=args.host, log_file=str(logs / "triton.log"))]
    else:
        tritons = loopback_replicas(args.triton_replicas, (8000, 8001, 8002), config_name=config_name)
        for i, triton in enumerate(tritons, 1):
            triton.log_file = str(logs / f"triton-{i}.log")
    print(f"starting {len(tritons)} Triton on {'the GPU' if gpu else 'the CPU'} with {tritons[0].model_path} "
          f"(log: {', '.join(t.log_file for t in tritons)})", flush=True)
    frontend = None
    try:
        with ThreadPoolExecutor(len(tritons)) as pool:
            list(pool.map(lambda t: t.start(timeout=1800), tritons))
        if not args.no_frontend:
            frontend = FrontendServer(
                port=args.frontend_port, host=args.host, log_file=str(logs / "frontend.log"),
                env={"FRONTEND_TRITON_GRPC_URL": ",".join(t.grpc_url for t in tritons),
                     "FRONTEND_TRITON_METRICS_PORT": str(tritons[0].metrics_port)},
            ).start()
        _announce(tritons, frontend, args, logs)
        _watch(tritons, frontend)
    except KeyboardInterrupt:
        pass
    finally:
        if frontend:
            frontend.stop()
        for triton in tritons:
            triton.stop()


def _announce(tritons: list[TritonServer], frontend: FrontendServer | None, args: argparse.Namespace,
              logs: Path) -> None:
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "127.0.0.1") else args.host
    hosts = [shown] if len(tritons) == 1 else [t.address for t in tritons]
    first = tritons[0]
    # Several replicas: gRPC's own per-request balancing over the list (clients/triton_stream.py).
    addresses = ",".join(f"{host}:{first.grpc_port}" for host in hosts)
    target = addresses if len(hosts) == 1 else f"ipv4:{addresses}"
    lines = ["", "Qwen3-VL is being served:"]
    lines += [f"  Triton           gRPC {host}:{first.grpc_port}   HTTP http://{host}:{first.http_port}/v2/models/qwen3_vl"
              f"   metrics http://{host}:{first.metrics_port}/metrics" for host in hosts]
    lines.append(f"  (python -m clients.triton_stream --url {target} \"Hello\")")
    if frontend:
        lines += [f"  Web UI           http://{shown}:{args.frontend_port}/",
                  f"  OpenAI API       http://{shown}:{args.frontend_port}/v1/chat/completions",
                  f"  Frontend metrics http://{shown}:{args.frontend_port}/metrics"]
    lines.append(f"Logs in {Path(logs).relative_to(ROOT)}/. Press Ctrl-C to stop.")
    print("\n".join(lines), flush=True)


def _watch(tritons: list[TritonServer], frontend: FrontendServer | None) -> None:
    """Until Ctrl-C, SIGTERM, the frontend's end or the last Triton's; says which process ended and how."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    alive = list(tritons)
    while not stop.wait(1):
        for server in [s for s in alive if not s.running]:
            alive.remove(server)
            left = f"; {len(alive)} Triton left serving" if alive else ""
            print(f"{server.exit_description()}{left}", flush=True)
        if frontend is not None and not frontend.running:
            print(frontend.exit_description(), flush=True)
            return
        if not alive:
            return


if __name__ == "__main__":
    main()
