"""The engine in a process of its own, fed by the model's process over a pipe.

In the Triton stub, Triton's execute thread, the prompt workers decoding images, the outbox sending
responses and the metrics and cancel watches share one interpreter lock with the engine thread, which
launches every GPU step: each of them holds it while the engine has a step to launch. With the engine
in a process of its own (as vLLM's engine core and SGLang's scheduler are), the stub builds prompts
and sends responses while the engine process runs steps.

Across the pipe go prompts (prompt_transfer.py: tensors as bytes, an image's pixels once while both
sides remember them), each step's responses as plain tuples, the engine's metric calls (replayed on
the stub's metrics, in order with the responses), and cancellations. A Triton batch's prompts go
back to back (``submit_many``) and `execute` then waits until the engine process has taken them all,
so a burst reaches the engine together and backpressure still holds requests in Triton's queue.
``busy`` does not cross the pipe: the stub's sink merges what arrives while its last response is on
its way.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import itertools
import logging
import multiprocessing
import os
import queue
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import torch

from . import gc_pauses
from .config import EngineConfig
from .errors import EngineFailure, ServingError
from .metrics import EngineMetrics
from .prompt import Prompt
from .prompt_transfer import PixelMirror, PixelsMissing
from .request import GenerationChunk, GenerationRequest
from .sequence import ResponseSink

log = logging.getLogger(__name__)

CANCEL_CHECK_S = 0.05
PR_SET_PDEATHSIG = 1
# The engine thread holds the interpreter lock while it launches a step (a prefill's launches run for
# tens of milliseconds); the pipe's reader, the submitter and the relay need it briefly and, at
# Python's default of 5 ms, wait up to that long for each turn (bench/pipe.py).
SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class Started:
    """What the engine process reports once its engine is ready."""

    device: str
    dtype: torch.dtype
    weights_seconds: float
    start_timings: dict[str, float]
    compile_artifacts: str  # "" without compile artifacts, else "<outcome>: <path>"
    kv_blocks_total: int


class EngineProcess:
    """The engine's caller side (``arrived``, ``dropped``, ``submit``, ``stop``), its engine in a child
    process. ``submit`` still blocks until the engine takes the sequence, so backpressure stays in
    Triton's queue. If the child dies, its open requests fail with an ``EngineFailure`` and a new
    child starts; requests wait for it (in Triton's queue, behind a blocked ``submit``)."""

    def __init__(self, config: EngineConfig, metrics: EngineMetrics | None = None):
        self.config = config
        self.metrics = metrics or EngineMetrics()
        self.started: Started | None = None
        self.restarts = 0
        self._context = multiprocessing.get_context("spawn")
        self._context.set_executable(_python())
        self._conn = self._receiver = self._process = None
        self._send_lock = threading.Lock()
        self._pixels = PixelMirror(config.processor_cache_bytes)  # what the engine process holds; under _send_lock
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._sinks: dict[int, ResponseSink] = {}
        self._cancelled: set[int] = set()
        self._acks: dict[int, _Ack] = {}
        self._ready = threading.Event()  # a child is ready (or none ever will be: ``_ended``)
        self._ended = ""  # why no engine will serve again, once that is so
        self._stopping = False
        self._reader = threading.Thread(target=self._read, name="qwen3vl-engine-pipe", daemon=True)

    def launch(self) -> None:
        """Start a child, which loads the model meanwhile; ``start`` waits for it."""
        if self._receiver is not None:  # the last child's
            self._receiver.close()
        with self._send_lock:  # a new child holds no pixels yet
            self._conn, child = self._context.Pipe()
            self._pixels.reset()
        self._receiver = _Receiver(self._conn)
        self._process = self._context.Process(target=serve, args=(self.config, child, os.getpid()),
                                              name="qwen3vl-engine", daemon=True)
        self._process.start()
        child.close()

    def start(self) -> "EngineProcess":
        """Wait until the child's engine is ready (weights loaded, graphs captured)."""
        if self._process is None:
            self.launch()
        self._wait_ready()
        self._reader.start()
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def arrived(self, n: int) -> None:
        self._note(("arrived", n))

    def dropped(self, n: int = 1) -> None:
        self._note(("arrived", -n))

    def submit(self, request: GenerationRequest, prompt: Prompt, sink: ResponseSink, timeout: float | None = None,
               arrival: float | None = None, announced: bool = False) -> None:
        """As ``Engine.submit``: raises what it raises, after the engine process has taken or refused it."""
        key, ack = self._hand_over(request, prompt, sink, timeout, arrival, announced)
        self._taken(key, ack)

    def submit_many(self, items: Iterable[tuple[GenerationRequest, Prompt, ResponseSink]],
                    arrival: float | None = None, announced: bool = False) -> None:
        """As ``Engine.submit_many``, each prompt sent without waiting for the engine process to take the
        one before: a batch's prompts cross the pipe back to back, and arrive together."""
        handed = []
        for request, prompt, sink in items:
            try:
                handed.append((sink, *self._hand_over(request, prompt, sink, None, arrival, announced)))
            except ServingError as exc:
                sink.fail(exc)
            except Exception as exc:  # one request's fault must not lose the rest of the batch
                log.exception("handing request %s over failed", request.request_id)
                sink.fail(EngineFailure(f"internal error: {exc}"))
        for sink, key, ack in handed:
            try:
                self._taken(key, ack)
            except ServingError as exc:
                sink.fail(exc)

    def _hand_over(self, request, prompt, sink, timeout, arrival, announced) -> tuple[int, "_Ack"]:
        key, ack = next(self._keys), _Ack()
        self._ready.wait()
        with self._lock:
            if self._ended:
                raise EngineFailure(f"internal error: {self._ended}")
            self._sinks[key], self._acks[key] = sink, ack
        # The engine needs neither the media (the prompt holds their pixels) nor the messages.
        request = dataclasses.replace(request, messages=(), images=(), videos=())
        try:
            with self._send_lock:  # the mirror's updates in the order of the pipe
                try:
                    message = ("submit", key, request, self._pixels.pack(prompt), self._pixels.generation,
                               timeout, arrival, announced)
                    self._send_locked(message)
                except BaseException:
                    self._pixels.reset()
                    raise
        except BaseException:
            with self._lock:
                self._sinks.pop(key, None)
                self._acks.pop(key, None)
            raise
        return key, ack

    def _taken(self, key: int, ack: "_Ack") -> None:
        """Wait until the engine process has taken the sequence; raise why it refused it."""
        ack.done.wait()
        if ack.error is not None:
            with self._lock:
                self._sinks.pop(key, None)
            raise ack.error

    def stop(self, timeout: float = 30.0) -> None:
        """Let admitted sequences finish for up to ``timeout`` seconds, then end the child."""
        self._stopping = True
        try:
            self._send(("stop", timeout))
        except EngineFailure:
            pass
        self._process.join(timeout + 5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        if self._reader.is_alive():
            self._reader.join(5)

    # -- the pipe ----------------------------------------------------------------------------

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._send_locked(message)

    def _send_locked(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:  # the child is gone (ValueError: the pipe is closed)
            raise EngineFailure(f"internal error: the engine process is gone ({exc})") from None

    def _note(self, message: tuple) -> None:
        """Send what only updates the engine's counts: a new engine process starts from zero anyway."""
        try:
            self._send(message)
        except EngineFailure:
            pass

    def _wait_ready(self) -> None:
        try:
            kind, payload = self._conn.recv()
            while kind == "out":  # what the engine reported while starting (its size, as metrics)
                self._deliver(payload)
                kind, payload = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise RuntimeError(f"the engine process ended while starting (exit code {self._process.exitcode})") \
                from None
        if kind != "ready":
            self._process.join(5)
            raise RuntimeError(f"the engine process failed to start:\n{payload}")
        self.started = payload
        self._ready.set()

    def _read(self) -> None:
        """Serve each child until it ends; start another unless told to stop."""
        while True:
            self._serve()
            self._process.join(10)
            why = f"the engine process ended (exit code {self._process.exitcode})"
            if self._stopping:
                self._fail_open(why, ended=why)
                return
            self._ready.clear()
            log.error("%s: failing its open requests and starting another", why)
            self._fail_open(why)
            try:
                self.launch()
                self._wait_ready()
            except Exception as exc:
                log.exception("a new engine process failed to start")
                self._fail_open(why, ended=f"{why}, and a new one failed to start ({exc})")
                return
            self.restarts += 1
            log.warning("engine process restarted (pid %d)", self._process.pid)

    def _serve(self) -> None:
        """Dispatch the child's messages; between them, pass on cancellations the sinks have seen."""
        try:
            while True:
                if self._receiver.poll(CANCEL_CHECK_S):
                    kind, payload = self._receiver.recv()
                    if kind == "out":
                        self._deliver(payload)
                    elif kind == "resync":  # the engine process missed pixels: start the mirror over
                        with self._send_lock:
                            if self._pixels.generation == payload:
                                self._pixels.reset()
                    elif kind == "acks":
                        with self._lock:
                            acks = [(self._acks.pop(key, None), error) for key, error in payload]
                        for ack, error in acks:
                            if ack is not None:
                                ack.error = error
                                ack.done.set()
                self._pass_cancellations()
        except (EOFError, OSError):
            pass

    def _deliver(self, items: list[tuple]) -> None:
        for item in items:
            if item[0] == "metric":
                try:
                    getattr(self.metrics, item[1])(*item[2])
                except Exception:  # metrics must never stop the responses
                    log.exception("recording a metric failed")
                continue
            kind, key = item[0], item[1]
            with self._lock:
                sink = self._sinks.get(key)
                if kind == "fail" or item[2]:
                    self._sinks.pop(key, None)
                    self._cancelled.discard(key)
            if sink is None:
                continue
            try:
                if kind == "fail":
                    sink.fail(item[2])
                else:
                    _, _, final, text, prompt_tokens, completion_tokens, reason, visual_tokens, token_ids = item
                    sink.send(GenerationChunk(text, prompt_tokens, completion_tokens, reason, token_ids, visual_tokens),
                              final)
            except Exception:  # one broken sink must not stop the others' responses
                log.exception("passing a response on failed")

    def _pass_cancellations(self) -> None:
        with self._lock:
            new = [key for key, sink in self._sinks.items() if key not in self._cancelled and sink.is_cancelled()]
            self._cancelled.update(new)
        for key in new:
            self._note(("cancel", key))

    def _fail_open(self, why: str, ended: str = "") -> None:
        """Fail every request the engine process had; with ``ended``, every later one too."""
        with self._lock:
            if ended:
                self._ended = ended
                self._ready.set()  # release submits waiting for an engine
            # A request still in ``submit`` fails there (its caller answers it), the others here.
            sinks = [sink for key, sink in self._sinks.items() if key not in self._acks]
            acks = list(self._acks.values())
            self._sinks, self._acks = {}, {}
            self._cancelled.clear()
        if sinks:
            log.error("%s: failing %d open requests", why, len(sinks))
        error = EngineFailure(f"internal error: {why}")
        for ack in acks:
            ack.error = error
            ack.done.set()
        for sink in sinks:
            try:
                sink.fail(error)
            except Exception:
                log.exception("failing a request failed")


@dataclass
class _Ack:
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    error: BaseException | None = None


class _Receiver:
    """Reads what a ``Connection`` sends (its framing: a 4-byte length, or -1 and an 8-byte one, then the
    pickle) with as few blocking calls as it can: each of them lets the interpreter lock go and, while
    another thread of the process runs Python (the engine thread), may wait a switch interval to take
    it back (bench/pipe.py). ``Connection.recv`` reads a large message a socket buffer at a time and
    small ones a header and a body at a time; this reads whatever has arrived, up to ``CHUNK`` bytes,
    in one call (a burst's prompts, once their pixels are mirrored, are a few kilobytes each), and the
    rest of a larger message in one more."""

    CHUNK = 1 << 18

    def __init__(self, conn):
        self._socket = socket.socket(fileno=os.dup(conn.fileno()))  # a duplex Pipe is a socket pair
        self._chunk = bytearray(self.CHUNK)
        self._buffer = bytearray()
        self._ready: collections.deque = collections.deque()

    def poll(self, timeout: float) -> bool:
        """Whether a message can be had without waiting, after waiting up to ``timeout`` seconds."""
        return bool(self._ready) or bool(select.select([self._socket], [], [], timeout)[0])

    def recv(self):
        while not self._ready:
            self._fill()
        return self._ready.popleft()

    def _fill(self) -> None:
        """Read once, and unpickle every whole message read so far."""
        got = self._socket.recv_into(self._chunk)
        if not got:
            raise EOFError
        buf = self._buffer
        buf += memoryview(self._chunk)[:got]
        at = 0
        while len(buf) - at >= 4:
            size, = struct.unpack_from("!i", buf, at)
            head = 4
            if size == -1:
                if len(buf) - at < 12:
                    break
                size, = struct.unpack_from("!Q", buf, at + 4)
                head = 12
            end = at + head + size
            if end > len(buf):
                if size < self.CHUNK:  # the rest comes with the next read
                    break
                self._ready.append(ForkingPickler.loads(self._read(size, buf[at + head:])))
                at = len(buf)
                break
            self._ready.append(ForkingPickler.loads(buf[at + head:end]))  # a slice: a copy, buf stays resizable
            at = end
        del buf[:at]

    def _read(self, n: int, start: bytes = b"") -> bytearray:
        """``n`` bytes: ``start``, then the rest from the socket."""
        buf = bytearray(n)
        view, got = memoryview(buf), len(start)
        view[:got] = start
        while got < n:  # MSG_WAITALL returns early only on a signal or at the end
            part = self._socket.recv_into(view[got:], n - got, socket.MSG_WAITALL)
            if not part:
                raise EOFError
            got += part
        return buf

    def close(self) -> None:
        self._socket.close()


def _python() -> str:
    """The interpreter for the child: the stub embeds Python, so its ``sys.executable`` may be the stub."""
    if Path(sys.executable).name.startswith("python"):
        return sys.executable
    return str(Path(sys.exec_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")


# -- the engine process ------------------------------------------------------------------------

class _Relay:
    """What the engine thread hands back (responses, metric calls), sent a batch at a time by one thread."""

    def __init__(self, conn, send_lock: threading.Lock):
        self._conn = conn
        self._send_lock = send_lock
        self._items: collections.deque[tuple] = collections.deque()
        self._ready = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="qwen3vl-relay", daemon=True)
        self._thread.start()

    def put(self, item: tuple) -> None:
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        self._stop = True
        self._ready.set()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            self._ready.wait()
            self._ready.clear()
            items = []
            while self._items:
                items.append(self._items.popleft())
            if items:
                with self._send_lock:
                    self._conn.send(("out", items))
            if self._stop and not self._items:
                return


class _RelayMetrics(EngineMetrics):
    """Each call becomes an item for the stub, which makes it on its own metrics."""

    def __init__(self, relay: _Relay):
        self._relay = relay


def _relayed(name: str):
    def call(self, *args):
        self._relay.put(("metric", name, args))
    call.__name__ = name
    return call


for _name in [n for n in vars(EngineMetrics) if not n.startswith("_")]:
    setattr(_RelayMetrics, _name, _relayed(_name))


class _RelaySink:
    """A sequence's sink in the engine process: its responses go to the stub's sink of the same key."""

    __slots__ = ("key", "relay", "open", "cancelled")

    def __init__(self, key: int, relay: _Relay, open_sinks: dict[int, "_RelaySink"]):
        self.key, self.relay, self.open, self.cancelled = key, relay, open_sinks, False
        open_sinks[key] = self

    def send(self, chunk: GenerationChunk, final: bool) -> None:
        if final:
            self.open.pop(self.key, None)
        self.relay.put(("send", self.key, final, chunk.text, chunk.prompt_tokens, chunk.completion_tokens,
                        chunk.finish_reason, chunk.visual_tokens, chunk.token_ids))

    def fail(self, error: ServingError) -> None:
        self.open.pop(self.key, None)
        self.relay.put(("fail", self.key, error))

    def is_cancelled(self) -> bool:
        return self.cancelled

    def busy(self) -> bool:
        return False


def serve(config: EngineConfig, conn, parent: int) -> None:
    """The engine process: load, start, report ready, then take messages until told to stop."""
    _die_with_parent(parent)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    from .engine import Engine
    from .loader import load

    send_lock = threading.Lock()
    try:
        began = time.monotonic()
        loaded = load(config, with_processor=False)
        weights = time.monotonic() - began
        relay = _Relay(conn, send_lock)
        engine = Engine(loaded, config, _RelayMetrics(relay)).start()
    except BaseException:
        with send_lock:  # the relay may be sending what the engine reported before it failed
            conn.send(("failed", traceback.format_exc()))
        raise SystemExit(1) from None
    gc_pauses.settle("the engine process")
    started = Started(device=str(loaded.device), dtype=loaded.dtype, weights_seconds=weights,
                      start_timings=dict(engine.start_timings),
                      compile_artifacts=str(engine.compile_artifacts or ""),
                      kv_blocks_total=engine.stats.kv_blocks_total)
    with send_lock:
        conn.send(("ready", started))
    sinks: dict[int, _RelaySink] = {}
    submissions: queue.SimpleQueue = queue.SimpleQueue()
    pixels = PixelMirror(config.processor_cache_bytes)

    def submit_in_order() -> None:
        """Submissions wait for room one after another here, while cancellations still get through. What
        has arrived is taken together and acknowledged in one message: a burst's prompts are taken
        without a wait for the interpreter lock between each (the engine thread holds it meanwhile)."""
        acks: list[tuple[int, BaseException | None]] = []

        def acknowledge() -> None:
            if acks:
                with send_lock:
                    conn.send(("acks", acks))  # pickled before it returns
                acks.clear()

        while True:
            items = [submissions.get()]
            while not submissions.empty():
                items.append(submissions.get())
            for item in items:
                if item is None:
                    acknowledge()
                    return
                key, request, packed, generation, timeout, arrival, announced = item
                error = None
                try:  # every prompt is unpacked, in the order sent: the pixel mirror follows the sender's
                    prompt = pixels.unpack(packed, generation)
                    if not engine.has_room(prompt.length):  # it will wait: those before it are taken already
                        acknowledge()
                    engine.submit(request, prompt, sinks[key], timeout=timeout, arrival=arrival, announced=announced)
                except PixelsMissing as exc:
                    error = exc
                    acknowledge()
                    with send_lock:
                        conn.send(("resync", generation))
                except ServingError as exc:
                    error = exc
                except Exception as exc:
                    log.exception("submitting a request failed")
                    error = EngineFailure(f"internal error: {exc}")
                if error is not None:
                    sinks.pop(key, None)
                acks.append((key, error))
            acknowledge()

    submitter = threading.Thread(target=submit_in_order, name="qwen3vl-submit", daemon=True)
    submitter.start()
    receiver = _Receiver(conn)
    timeout = 30.0
    try:
        while True:
            kind, *payload = receiver.recv()
            if kind == "submit":
                _RelaySink(payload[0], relay, sinks)
                submissions.put(payload)
            elif kind == "cancel":
                sink = sinks.get(payload[0])
                if sink is not None:
                    sink.cancelled = True
            elif kind == "arrived":
                if payload[0] >= 0:
                    engine.arrived(payload[0])
                else:
                    engine.dropped(-payload[0])
            elif kind == "stop":
                timeout = payload[0]
                break
    except (EOFError, OSError):  # the model's process is gone: nobody is left to answer
        os._exit(0)
    submissions.put(None)
    engine.stop(timeout)
    relay.close()


def _die_with_parent(parent: int) -> None:
    """End with the stub, even when it is killed: nothing else frees the GPU memory this process holds.
    (Linux sends the signal when the thread that started this process ends: the model's main thread
    for the first engine process, the pipe's reader thread for one started after a death.)"""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.warning("cannot tie the engine process's life to its parent's")
    if os.getppid() != parent:  # the parent was gone before prctl took effect
        os._exit(0)
