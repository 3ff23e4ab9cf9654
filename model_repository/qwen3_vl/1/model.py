"""Triton Python-backend adapter for Qwen3-VL: parse Triton's arguments, build the library's objects, delegate.

All model logic lives in ``backend_python``; this file only converts between
Triton's request/response objects and the library's typed ones.
"""

import dataclasses
import json
import logging
import threading
import time
import weakref

import triton_python_backend_utils as pb_utils

from backend_python.config import EngineConfig
from backend_python.errors import EngineFailure, ServingError, wire_status
from backend_python.metrics import TritonMetrics
from backend_python.outbox import Outbox
from backend_python.parent_watch import exit_with_server
from backend_python.request import GenerationRequest
from backend_python.serving import start
from wire_contract import INPUTS

log = logging.getLogger("qwen3_vl")

CANCEL_POLL_S = 0.05


class CancelWatch:
    """Asks Triton, a few times a second, whether each open stream's client went away.

    That question is a round trip to the server process too; here it never holds up the engine,
    which only reads the answer (``TritonSink.is_cancelled``).
    """

    def __init__(self, interval_s=CANCEL_POLL_S):
        self._sinks = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval_s
        self._thread = threading.Thread(target=self._run, name="qwen3vl-cancel-watch", daemon=True)
        self._thread.start()

    def add(self, sink):
        with self._lock:
            self._sinks.add(sink)

    def close(self, timeout):
        self._stop.set()
        self._thread.join(timeout)

    def _run(self):
        while not self._stop.wait(self._interval):
            with self._lock:
                sinks = list(self._sinks)
            for sink in sinks:
                if not sink.poll():
                    with self._lock:
                        self._sinks.discard(sink)
            sinks = sink = None


class TritonSink:
    """Sends one sequence's responses through Triton's decoupled response sender, via the outbox.

    What arrives while the last response still waits for the outbox joins it (text deltas add up), so
    a slow client or a saturated response path gets fewer, larger responses, never a backlog.
    """

    def __init__(self, sender, outbox, watch):
        self._sender = sender
        self._outbox = outbox
        self._lock = threading.Lock()
        self._next = None  # (chunk or error, final): not yet taken by the outbox
        self._busy = False  # a response waits for the outbox or is being sent
        self._sent = 0  # written by the outbox thread only
        self._cancelled = False  # written by the cancel watch only
        # Triton frees a request's response factory with its final response: asking whether the
        # request was cancelled after that crashes the server, so the two never overlap.
        self._closing = threading.Lock()
        self._closed = False
        watch.add(self)

    def send(self, chunk, final):
        self._put(chunk, final)

    def fail(self, error):
        self._put(error, True)

    def busy(self):
        return self._busy

    def is_cancelled(self):
        return self._cancelled

    def poll(self):
        """Refresh the cancelled flag; False once nothing more is to be learnt (closed, or cancelled)."""
        with self._closing:
            if self._closed:
                return False
            self._cancelled = self._sender.is_cancelled()
            return not self._cancelled

    def deliver(self):
        """On the outbox thread: build the response and send it."""
        with self._lock:
            (item, final), self._next = self._next, None
        try:
            # The first and the last response carry every output, those between only the delta's.
            response = _error_response(item) if isinstance(item, Exception) \
                else _response(item, final or self._sent == 0)
            if final:
                with self._closing:
                    self._closed = True
                    self._sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                self._sender.send(response, flags=0)
        except Exception:  # a client that went away must not stop the others' responses
            log.exception("sending a response failed")
        finally:
            self._sent += 1
            with self._lock:
                self._busy = self._next is not None

    def _put(self, item, final):
        with self._lock:
            waiting = self._next
            if waiting is not None:
                if isinstance(waiting[0], Exception):  # a failure is the last word
                    return
                if not isinstance(item, Exception):
                    item = dataclasses.replace(item, text=waiting[0].text + item.text)
            self._next, self._busy = (item, final), True
        if waiting is None:
            self._outbox.put(self, first=self._sent == 0)


def _response(chunk, full):
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, value) for name, value in chunk.to_tensors(full).items()])


def _error_response(error):
    code = getattr(pb_utils.TritonError, wire_status(error).triton)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), code))


class TritonPythonModel:
    def initialize(self, args):
        self.server_watch = exit_with_server()
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException("qwen3_vl streams tokens: set model_transaction_policy { decoupled: true }")
        try:
            self.config = EngineConfig.from_parameters(model_config.get("parameters", {}))
        except ValueError as exc:
            raise pb_utils.TritonModelException(str(exc)) from None
        self.metrics = TritonMetrics(pb_utils, {"model": args["model_name"], "version": args["model_version"]})
        started = time.monotonic()
        serving = start(self.config, self.metrics)
        self.engine, self.prompts = serving.engine, serving.prompts
        self.outbox = Outbox()
        self.cancel_watch = CancelWatch()
        seconds = time.monotonic() - started
        self.metrics.model_load(seconds)
        log.warning("qwen3_vl ready in %.1f s: %s", seconds, serving.summary)

    def execute(self, requests):
        arrival = time.monotonic()
        # Every request of the batch counts as waiting until it runs, not only once it reaches submit.
        self.engine.arrived(len(requests))
        parsed = []
        for request in requests:
            sink = TritonSink(request.get_response_sender(), self.outbox, self.cancel_watch)
            try:
                tensors = {name: _input(request, name) for name in INPUTS}
                generation = GenerationRequest.from_tensors(tensors, self.config.limits, request.request_id())
                parsed.append((request.request_id(), generation, sink))
            except ServingError as exc:
                self.engine.dropped()
                sink.fail(exc)
            except Exception as exc:
                self.engine.dropped()
                _internal_error(request.request_id(), sink, exc)
        # The batch's prompts are built together; each is handed over as soon as it and those before it
        # are. Returns once the engine has taken them all: while it is full, waiting requests stay in
        # Triton's queue.
        self.engine.submit_many(self._built(parsed, self.prompts.build_many([g for _, g, _ in parsed])),
                                arrival=arrival, announced=True)
        return None

    def _built(self, parsed, prompts):
        """The batch's requests whose prompts were built; the others answered with why not."""
        for (request_id, generation, sink), prompt in zip(parsed, prompts):
            if not isinstance(prompt, Exception):
                yield generation, prompt, sink
                continue
            self.engine.dropped()
            if isinstance(prompt, ServingError):
                sink.fail(prompt)
            else:
                _internal_error(request_id, sink, prompt)

    def finalize(self):
        # Triton has already let in-flight streams drain (--exit-timeout-secs) before unloading:
        # keep this short so a stuck response cannot hold the server past its exit timeout.
        self.engine.stop(timeout=5)
        self.prompts.close()
        self.outbox.close(timeout=5)
        self.cancel_watch.close(timeout=1)
        self.metrics.close()


def _internal_error(request_id, sink, exc):
    log.error("request %s failed", request_id, exc_info=exc)
    sink.fail(EngineFailure(f"internal error: {exc}"))


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
