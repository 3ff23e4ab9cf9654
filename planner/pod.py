"""One Triton pod: Triton's bounded queue and dynamic batcher, the model's `execute`, and the engine.

- Once `execute` has returned, Triton's batcher hands it the largest preferred batch the queue
  fills, or whatever the queue holds once its oldest request has waited `max_queue_delay`.
- `execute` builds the batch's prompts `prompt_workers` at a time (`execute_seconds_per_request`
  each: the image decoded, the processor, the chat template; serial under the stub's GIL) and hands
  each to the engine as soon as it and those before it are built. A hand-over blocks while the engine
  already holds requests waiting and has no room (sequences or KV cache) for one more, so the rest
  wait in Triton's queue (the backpressure of docs/contracts.md).
- The engine prefills, at the next decode-step boundary, every waiting prompt that fits one step's
  token budget, in one pass. The running sequences keep decoding during the pass
  (`decode_steps_per_prefill` steps, decode_during_prefill), so a pass lasts its own time plus
  those steps; with 0 a pass pauses them. The first token comes out of the pass, every other one
  from a decode step, whose time grows with the running sequences and the tokens they hold.

Between two events every running sequence advances at one rate, so the pod jumps from event to
event: a few events per request, not per token.
"""

from __future__ import annotations

import math
from collections import deque
from heapq import heappop, heappush

from planner.profile import PodProfile

PENDING, DONE, REJECTED, KILLED, NO_ENDPOINT = 0, 1, 2, 3, 4

STARTING, READY, DRAINING, GONE = "starting", "ready", "draining", "gone"

INF = math.inf


class Requests:
    """Per-request inputs and outcomes shared by all pods (plain lists: fast to index)."""

    def __init__(self, arrivals, prompt_tokens, max_tokens):
        n = len(arrivals)
        self.arrival = [float(x) for x in arrivals]
        self.prompt = [int(x) for x in prompt_tokens]
        self.max_tokens = [int(x) for x in max_tokens]
        self.ttft = [math.nan] * n
        self.done = [math.nan] * n
        self.queue_time = [math.nan] * n  # Triton's queue
        self.reached = [math.nan] * n  # when `execute` took it
        self.status = [PENDING] * n
        self.start = [0.0] * n  # the engine's progress when the sequence joined the decoding ones
        self.pod = [-1] * n  # the pod the router chose


class Pod:
    __slots__ = (
        "id", "created", "ready_at", "state", "ended", "kill_at", "metrics_from", "req",
        "queue", "exec_items", "exec_built", "exec_next", "exec_pos",
        "ewait", "ewait_tokens", "episode", "ep_end", "ep_target", "ep_tokens",
        "running", "prog", "t_prog", "clock", "next_t", "rate", "sum_prompt", "sum_start", "inflight",
        "success", "failure", "batches", "passes", "queue_us", "model_wait_sum", "model_wait_count",
        "steps", "seq_steps", "busy_acc", "busy_since", "last_busy", "last_scrape",
        "slots", "batch", "preferred", "fill", "delay", "form_at", "qmax", "timeout", "budget", "kv", "max_prompts",
        "table", "k_tok", "m", "m_step", "m_seq", "h", "share", "workers", "lag", "p_pass", "p_prompt", "p_tok", "p_sq",
    )  # fmt: skip

    def __init__(self, pod_id: int, created: float, ready_at: float, profile: PodProfile, table: list[float],
                 req: Requests, metrics_from: float | None = None):
        self.id = pod_id
        self.created = created
        self.ready_at = ready_at
        self.state = STARTING
        self.ended = INF
        self.kill_at = INF
        self.metrics_from = created + profile.cold_start.metrics_after_seconds if metrics_from is None else metrics_from
        self.req = req
        self.queue: deque[int] = deque()
        self.exec_items: list[int] = []
        self.exec_built = 0  # prompts of the batch built
        self.exec_next = INF  # when the prompts being built are done
        self.exec_pos = 0  # prompts of the batch handed to the engine
        self.ewait: deque[int] = deque()
        self.ewait_tokens = 0
        self.episode: list[int] = []
        self.ep_end = INF
        self.ep_target = 0.0
        self.ep_tokens = 0
        self.running: list[tuple[float, int]] = []
        self.prog = 0.0
        self.t_prog = created
        self.clock = created
        self.next_t = -INF
        self.rate = 0.0
        self.sum_prompt = 0
        self.sum_start = 0.0
        self.inflight = 0
        self.success = 0
        self.failure = 0
        self.batches = 0  # `execute` calls (nv_inference_exec_count)
        self.passes = 0  # prefill passes (qwen3vl_prefill_size_count)
        self.queue_us = 0.0
        self.model_wait_sum = 0.0
        self.model_wait_count = 0
        self.steps = 0.0
        self.seq_steps = 0.0
        self.busy_acc = 0.0
        self.busy_since: float | None = None
        self.last_busy = 0.0
        self.last_scrape = created
        self.slots = profile.slots
        self.batch = profile.max_batch_size
        self.preferred = sorted(profile.preferred_batch_sizes, reverse=True)
        self.fill = min(self.preferred[0], self.batch) if self.preferred else self.batch
        self.delay = profile.max_queue_delay_seconds
        self.form_at = INF
        self.qmax = profile.max_queue_size
        self.timeout = profile.queue_timeout_seconds or INF
        self.budget = profile.max_num_batched_tokens or INF
        self.kv = profile.kv_cache_tokens or INF
        self.max_prompts = profile.prefills_per_step or profile.slots
        self.table = table
        self.k_tok = profile.decode_seconds_per_cached_token
        self.m = profile.decode_steps_per_prefill
        self.m_step = profile.prefill_decode_seconds
        self.m_seq = profile.prefill_decode_seconds_per_sequence
        self.h = profile.execute_seconds_per_request
        self.share = profile.execute_engine_share
        self.workers = profile.prompt_workers
        self.lag = profile.response_seconds_per_stream_squared
        self.p_pass = profile.prefill_base_seconds
        self.p_prompt = profile.prefill_seconds_per_prompt
        self.p_tok = profile.prefill_seconds_per_token
        self.p_sq = profile.prefill_seconds_per_token_squared

    # -- what the router and the scrape read ------------------------------------------------

    def pending(self) -> int:
        """Triton's queue (nv_inference_pending_request_count)."""
        return len(self.queue)

    def waiting(self) -> int:
        """Handed to the model and not running yet (qwen3vl_sequences_waiting): the batch inside
        `execute` and the prompts waiting in the engine."""
        return len(self.exec_items) - self.exec_pos + len(self.ewait)

    def in_engine(self) -> int:
        """Sequences the engine runs (qwen3vl_sequences_in_flight): decoding or in a prefill pass."""
        return len(self.running) + len(self.episode)

    def cached_tokens(self) -> float:
        return self.sum_prompt + len(self.running) * self.prog - self.sum_start

    def occupancy(self) -> float:
        """qwen3vl:occupancy: running sequences over max_num_seqs or KV tokens over the pool, the fuller."""
        kv = (self.cached_tokens() + self.ep_tokens) / self.kv if self.kv < INF else 0.0
        return max(self.in_engine() / self.slots, kv)

    # -- Triton --------------------------------------------------------------------------

    def arrive(self, i: int, t: float) -> None:
        self.advance(t)
        if self.qmax and len(self.queue) >= self.qmax:
            self.failure += 1
            self.req.status[i] = REJECTED
            return
        self.inflight += 1
        self.req.pod[i] = self.id
        self.queue.append(i)
        if not self.exec_items:
            self._batch_when_ready(t)
        self.next_t = -INF  # recompute at the next call

    def _batch_when_ready(self, now: float) -> None:
        """`execute` is free: Triton's batcher sends a batch once the queue fills the largest
        preferred size, or once its oldest request has waited `max_queue_delay`."""
        if len(self.queue) >= self.fill:
            self.form_at = INF
            self._next_batch(now)
        else:
            self.form_at = max(now, self.req.arrival[self.queue[0]] + self.delay)

    def _next_batch(self, now: float) -> None:
        """`execute` returned: Triton's batcher hands it the queue's head (requests past their
        timeout are refused as they leave the queue)."""
        q = self.queue
        req = self.req
        arrival = req.arrival
        size = self.batch
        for preferred in self.preferred:  # the largest preferred size the queue can fill
            if preferred <= len(q):
                size = preferred
                break
        batch: list[int] = []
        while q and len(batch) < size:
            j = q.popleft()
            w = now - arrival[j]
            if w > self.timeout:
                self.failure += 1
                self.inflight -= 1
                req.status[j] = REJECTED
                continue
            req.queue_time[j] = w
            self.queue_us += w * 1e6
            batch.append(j)
        if batch:
            self._execute(batch, now)

    def _execute(self, batch: list[int], now: float) -> None:
        self.success += len(batch)
        self.batches += 1
        reached = self.req.reached
        for j in batch:
            reached[j] = now
        self.exec_items = batch
        self.exec_built = 0
        self.exec_pos = 0
        self._build_next(now)

    def _build_next(self, now: float) -> None:
        """The next `prompt_workers` prompts of the batch, built together. The stub's threads share
        one GIL: while the engine thread has work, a build takes longer and the engine loses time."""
        group = min(self.workers, len(self.exec_items) - self.exec_built)
        if not group:
            self.exec_next = INF
            return
        busy = self.running or self.episode
        self.exec_next = now + group * self.h * (1.0 + self.share * bool(busy))

    def _has_room(self) -> bool:
        """The engine's `has_room`: one request may always wait inside; more only while the
        sequences and the KV cache could hold them."""
        if not self.ewait:
            return True
        if len(self.running) + len(self.episode) + len(self.ewait) >= self.slots:
            return False
        nxt = self.req.prompt[self.exec_items[self.exec_pos]]
        return self.cached_tokens() + self.ep_tokens + self.ewait_tokens + nxt <= self.kv

    # -- the engine ----------------------------------------------------------------------

    def _set_rate(self) -> None:
        n = len(self.running)
        if not n:
            self.rate = 0.0
        elif self.episode:
            w = self.ep_end - self.t_prog
            self.rate = (self.ep_target - self.prog) / w if self.m and w > 0 else 0.0
        else:
            self.rate = 1.0 / (self.table[n] + self.k_tok * self.cached_tokens())

    def _progress(self, t: float) -> None:
        if t > self.t_prog:
            d = (t - self.t_prog) * self.rate
            if d:
                self.prog += d
                self.steps += d
                self.seq_steps += d * len(self.running)
            self.t_prog = t

    def _episode_start_time(self) -> float:
        """A prefill pass starts at the next decode-step boundary (at once on an idle engine)."""
        if self.episode or not self.ewait or len(self.running) >= self.slots:
            return INF
        if not self.running or self.rate <= 0:
            return max(self.t_prog, self.clock)
        boundary = math.ceil(self.prog - 1e-7)
        return self.t_prog + max(boundary - self.prog, 0.0) / self.rate

    def _start_episode(self, now: float) -> None:
        req = self.req
        prompt = req.prompt
        b = len(self.running)
        cached = self.cached_tokens()
        admitted: list[int] = []
        tokens = 0
        squares = 0.0
        ewait = self.ewait
        while ewait and b + len(admitted) < self.slots and len(admitted) < self.max_prompts:
            j = ewait[0]
            n = prompt[j]
            if admitted and tokens + n > self.budget:
                break
            if (admitted or b) and cached + tokens + n > self.kv:
                break
            ewait.popleft()
            self.ewait_tokens -= n
            admitted.append(j)
            tokens += n
            squares += float(n) * n
            w = now - req.reached[j]  # qwen3vl_queue_seconds: reaching the model to running
            self.model_wait_sum += w
            self.model_wait_count += 1
        if not admitted:
            return
        seconds = self.p_pass + self.p_prompt * len(admitted) + self.p_tok * tokens + self.p_sq * squares
        if b and self.m:
            # a step taken during the pass also waits for the host: the layers it launches, the tokens it streams
            seconds += self.m * (self.table[b] + self.k_tok * cached + self.m_step + self.m_seq * b)
        self.ep_target = self.prog + self.m
        self.passes += 1
        self.episode = admitted
        self.ep_tokens = tokens
        self.ep_end = now + seconds
        self._set_rate()

    def _end_episode(self, now: float) -> None:
        req = self.req
        ttft = req.ttft
        arrival = req.arrival
        start = req.start
        if self.m and self.running:
            self.prog = self.ep_target  # the running sequences took their steps through the pass
        prog = self.prog
        # a response waits behind the other streams' tokens on its way out of the model
        late = now + self.lag * len(self.running) ** 2
        for j in self.episode:
            ttft[j] = late - arrival[j]
            start[j] = prog
            self.sum_prompt += req.prompt[j]
            self.sum_start += prog
            heappush(self.running, (prog + req.max_tokens[j] - 1, j))
        self.episode = []
        self.ep_tokens = 0
        self.ep_end = INF
        self._set_rate()

    def _finish(self, now: float) -> None:
        req = self.req
        running = self.running
        prog = self.prog
        late = now + self.lag * len(running) ** 2
        while running and running[0][0] <= prog + 1e-7:
            _, j = heappop(running)
            req.done[j] = late
            req.status[j] = DONE
            self.sum_prompt -= req.prompt[j]
            self.sum_start -= req.start[j]
            self.inflight -= 1
        if not running:
            self.sum_start = 0.0
            self.sum_prompt = 0
        self._set_rate()

    def _built(self, now: float) -> None:
        group = min(self.workers, len(self.exec_items) - self.exec_built)
        if self.share and (self.running or self.episode):  # the engine thread's lost share
            lost = group * self.h * self.share
            self.t_prog = max(self.t_prog, now) + lost
            if self.episode:
                self.ep_end += lost
        self.exec_built += group
        self._build_next(now)

    def _submit(self, now: float) -> None:
        j = self.exec_items[self.exec_pos]
        self.exec_pos += 1
        self.ewait.append(j)
        self.ewait_tokens += self.req.prompt[j]
        if self.exec_pos == len(self.exec_items):  # `execute` returns
            self.exec_items = []
            self.exec_pos = self.exec_built = 0
            self.exec_next = INF
            if self.queue:
                self._batch_when_ready(now)

    def settle(self, t: float) -> None:
        """Process what happened up to t, if anything did (the router calls this for every pod and request)."""
        if t >= self.next_t or t >= self.kill_at:
            self.advance(t)

    def advance(self, t: float) -> None:
        """Run the pod up to time t."""
        if self.kill_at <= t:
            self._run(self.kill_at)
            if self.state != GONE:
                self._kill(self.kill_at)
            return
        self._run(t)

    def _run(self, t: float) -> None:
        while True:
            te = self.ep_end
            tf = INF
            if self.running and self.rate > 0:
                tf = self.t_prog + max(self.running[0][0] - self.prog, 0.0) / self.rate
            tb = self.exec_next
            tq = self.form_at
            tu = INF
            if self.exec_pos < self.exec_built and self._has_room():
                tu = self.clock
            ts = self._episode_start_time()
            tn = min(te, tf, tb, tu, ts, tq)
            if tn > t or tn == INF:
                self.next_t = tn
                break
            self._progress(tn)
            self.clock = tn
            if tf == tn:
                self._finish(tn)
            elif te == tn:
                self._end_episode(tn)
            elif tu == tn:
                self._submit(tn)
            elif tb == tn:
                self._built(tn)
            elif tq == tn:
                self.form_at = INF
                self._next_batch(tn)
            else:
                self._start_episode(tn)
            if self.running or self.episode:
                if self.busy_since is None:
                    self.busy_since = tn
            elif self.busy_since is not None:
                self.busy_acc += tn - self.busy_since
                self.busy_since = None
            if self.state == DRAINING and not self.inflight:
                self.ended = tn
                self.state = GONE
                return
        if self.running:  # an idle pod stays at its last event: a later call may start earlier than t
            self._progress(t)
            self.clock = t

    def _kill(self, t: float) -> None:
        status = self.req.status
        for j in (list(self.queue) + self.exec_items[self.exec_pos:] + list(self.ewait) + self.episode
                  + [j for _, j in self.running]):
            status[j] = KILLED
        self.queue.clear()
        self.exec_items = []
        self.exec_pos = self.exec_built = 0
        self.exec_next = INF
        self.ewait.clear()
        self.ewait_tokens = 0
        self.episode = []
        self.ep_end = INF
        self.running = []
        self.inflight = 0
        if self.busy_since is not None:
            self.busy_acc += max(t - self.busy_since, 0.0)
            self.busy_since = None
        self.ended = t
        self.state = GONE

    def drain(self, now: float, grace: float) -> None:
        """Deleted: out of the Service at once, in-flight and queued requests finish within the grace period."""
        self.advance(now)
        if self.state == GONE:
            return
        if self.state == STARTING or not self.inflight:
            self.ended = now
            self.state = GONE
            return
        self.state = DRAINING
        self.kill_at = now + grace

    def busy_fraction(self, t: float) -> float:
        """Share of the time since the previous scrape the engine had work (DCGM's duty cycle)."""
        busy = self.busy_acc + (t - self.busy_since if self.busy_since is not None and self.busy_since < t else 0.0)
        span = t - self.last_scrape
        frac = (busy - self.last_busy) / span if span > 0 else 0.0
        self.last_busy = busy
        self.last_scrape = t
        return min(max(frac, 0.0), 1.0)
