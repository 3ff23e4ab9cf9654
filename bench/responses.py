"""`python -m bench.responses`: what one streamed response costs the model's interpreter inside Triton's Python
stub, for a stream's first and last responses (every output) and those between (``DELTA_OUTPUTS``).

At many streams the engine thread shares that interpreter with the thread that builds and sends the
responses (model.py's outbox), so each response's CPU time is time the engine waits for. A throwaway
model in a temporary repository builds, then builds and sends, ``--responses`` responses of each shape
with the contract's own arrays (``WireResponse.to_arrays``) on one stream; the client counts them.
Prints a table: microseconds per response, wall and CPU time of the sending thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import queue
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from bench.stats import table
from wire_contract import OUTPUTS

MODEL = textwrap.dedent('''
    import json
    import time

    import numpy as np
    import triton_python_backend_utils as pb_utils

    from wire_contract import WireResponse

    SHAPES = {"every output (first and last)": True, "the delta's (between)": False}


    def response(k, full):
        arrays = WireResponse(" word", "", 300, k, 256).to_arrays(full)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in arrays.items()])


    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                n = int(pb_utils.get_input_tensor_by_name(request, "n").as_numpy()[0])
                sender = request.get_response_sender()
                out = {}
                for step, send in (("build", False), ("build and send", True)):
                    for shape, full in SHAPES.items():
                        wall, cpu = time.perf_counter(), time.thread_time()
                        for k in range(n):
                            made = response(k, full)
                            if send:
                                sender.send(made, flags=0)
                        out[f"{step}|{shape}"] = ((time.perf_counter() - wall) / n, (time.thread_time() - cpu) / n)
                timings = np.array([json.dumps(out).encode()], dtype=np.object_)
                sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("timings", timings)]),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
''')


def _repository(root: Path) -> Path:
    model = root / "responses"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(MODEL)
    types = {name: "STRING" if spec.datatype == "BYTES" else spec.datatype for name, spec in OUTPUTS.items()}
    outputs = ",\n".join(f'  {{ name: "{name}", data_type: TYPE_{kind}, dims: [ -1 ] }}'
                          for name, kind in types.items())
    (model / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\nmodel_transaction_policy { decoupled: true }\n'
        'input [ { name: "n", data_type: TYPE_INT32, dims: [ 1 ] } ]\n'
        f'output [\n{outputs},\n  {{ name: "timings", data_type: TYPE_STRING, dims: [ -1 ] }}\n]\n'
        'instance_group [ { count: 1, kind: KIND_CPU } ]\n')
    return root


def main() -> None:
    import tritonclient.grpc as grpcclient

    from stack.ports import free_port
    from stack.triton import backend_directory, pytriton_dir, triton_environment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ports = [free_port() for _ in range(3)]
    with tempfile.TemporaryDirectory(prefix="bench-responses-") as root:
        command = [str(pytriton_dir() / "tritonserver" / "bin" / "tritonserver"),
                   f"--model-repository={_repository(Path(root))}", f"--backend-directory={backend_directory()}",
                   f"--http-port={ports[0]}", f"--grpc-port={ports[1]}", f"--metrics-port={ports[2]}",
                   "--disable-auto-complete-config", "--allow-gpu-metrics=false", "--exit-timeout-secs=5"]
        server = subprocess.Popen(command, env=triton_environment(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.STDOUT)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports[1]}")
        try:
            deadline = time.monotonic() + 120
            while not _ready(client):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("Triton did not load the throwaway model")
                time.sleep(0.5)
            rounds = [_round(client, args.responses) for _ in range(args.rounds)]
        finally:
            client.close()
            server.terminate()
            server.wait(60)
    rows = []
    for key in rounds[0]:
        step, shape = key.split("|")
        walls = sorted(1e6 * r[key][0] for r in rounds)
        cpus = sorted(1e6 * r[key][1] for r in rounds)
        rows.append({"step": step, "outputs": shape, "wall µs (median)": f"{walls[len(walls) // 2]:.1f}",
                     "CPU µs (median)": f"{cpus[len(cpus) // 2]:.1f}",
                     "CPU µs (rounds)": " / ".join(f"{c:.1f}" for c in cpus)})
    print(f"\nOne response in Triton's Python stub, {args.responses} per shape and round, {args.rounds} rounds, "
          f"on {platform.machine()} ({platform.node()}):")
    print(table(rows))


def _ready(client) -> bool:
    try:
        return client.is_model_ready("responses")
    except Exception:
        return False


def _round(client, n: int) -> dict:
    import tritonclient.grpc as grpcclient

    got: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        count = grpcclient.InferInput("n", [1], "INT32").set_data_from_numpy(np.array([n], dtype=np.int32))
        client.async_stream_infer("responses", [count])
        received = 0
        while True:
            result, error = got.get(timeout=600)
            if error is not None:
                raise RuntimeError(error)
            timings = result.as_numpy("timings")
            if timings is not None:
                break
            received += 1
    finally:
        client.stop_stream()
    if received != 2 * n:
        raise RuntimeError(f"{received} responses arrived, {2 * n} were sent")
    return json.loads(timings[0])


if __name__ == "__main__":
    main()
