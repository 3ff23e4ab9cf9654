"""One Triton pod: the dynamic batcher's bounded queue in front of a continuous-batching engine.

The model's `execute` blocks until the engine has a slot for every request of its batch
(docs/contracts.md, "backpressure"), so at most one batch waits inside `execute` while the
rest stays in Triton's queue. New sequences join the running batch at a decode-step
boundary; their prefill pauses the decode steps of the others. Decode steps between two
membership changes all take the same time, so the pod jumps from change to change instead
of stepping token by token.
"""

from __future__ import annotations

import math
from collections import deque
from heapq import heappop, heappush

from planner.profile import PodProfile

PENDING, DONE, REJECTED, KILLED, NO_ENDPOINT = 0, 1, 2, 3, 4

STARTING, READY, DRAINING, GONE = "starting", "ready", "draining", "gone"


class Requests:
    """Per-request inputs and outcomes shared by all pods (plain lists: fast to index)."""

    def __init__(self, arrivals, prompt_tokens, max_tokens):
        n = len(arrivals)
        self.arrival = [float(x) for x in arrivals]
        self.prompt = [int(x) for x in prompt_tokens]
        self.max_tokens = [int(x) for x in max_tokens]
        self.ttft = [math.nan] * n
        self.done = [math.nan] * n
        self.queue_time = [math.nan] * n
        self.status = [PENDING] * n


class Pod:
    __slots__ = (
        "id", "created", "ready_at", "state", "ended", "kill_at", "queue", "held", "active", "run_start",
        "run_step", "step_time", "next_done", "busy_acc", "busy_since", "success", "failure", "queue_us",
        "slots", "batch", "qmax", "table", "prefill_base", "prefill_tok", "req", "last_busy", "last_scrape", "metrics_from", "timeout", "prefills_per_step", "steps", "seq_steps",
    )  # fmt: skip

    def __init__(self, pod_id: int, created: float, ready_at: float, profile: PodProfile, table: list[float], req: Requests):
        self.id = pod_id
        self.created = created
        self.ready_at = ready_at
        self.state = STARTING
        self.ended = math.inf
        self.kill_at = math.inf
        self.queue: deque[int] = deque()
        self.held: list[int] | None = None
        self.active: list[tuple[int, int]] = []
        self.run_start = created
        self.run_step = 0
        self.step_time = 0.0
        self.next_done = math.inf
        self.busy_acc = 0.0
        self.busy_since: float | None = None
        self.success = 0
        self.failure = 0
        self.queue_us = 0.0
        self.steps = 0
        self.seq_steps = 0
        self.slots = profile.slots
        self.batch = profile.max_batch_size
        self.qmax = profile.max_queue_size
        self.timeout = profile.queue_timeout_seconds or math.inf
        self.prefills_per_step = profile.prefills_per_step or profile.slots
        self.table = table
        self.prefill_base = profile.prefill_base_seconds
        self.prefill_tok = profile.prefill_seconds_per_token
        self.req = req
        self.last_busy = 0.0
        self.last_scrape = created
        self.metrics_from = created + profile.cold_start.image_pull_seconds

    def arrive(self, i: int, t: float) -> None:
        if t >= self.next_done:
            self.advance(t)
        if self.held is None:
            self.success += 1
            self.req.queue_time[i] = 0.0
            if len(self.active) < self.slots:
                self._admit([i], t)
            else:
                self.held = [i]
        elif self.qmax and len(self.queue) >= self.qmax:
            self.failure += 1
            self.req.status[i] = REJECTED
        else:
            self.queue.append(i)

    def _admit(self, batch: list[int], now: float) -> None:
        """Prefill at the next decode-step boundary, `prefills_per_step` sequences at a time with
        one decode step of the running batch between two prefills."""
        active = self.active
        start = self.run_start
        if active:
            if now > start:
                d = self.step_time
                k = math.ceil((now - start) / d - 1e-9)
                self.run_step += k
                self.steps += k
                self.seq_steps += k * len(active)
                start += k * d
        elif now > start:
            start = now
        if self.busy_since is None:
            self.busy_since = start
        req = self.req
        prompt = req.prompt
        arrival = req.arrival
        ttft = req.ttft
        max_tokens = req.max_tokens
        table = self.table
        per = self.prefills_per_step
        for g in range(0, len(batch), per):
            group = batch[g : g + per]
            if g:
                start += table[len(active)]
                self.run_step += 1
                self.steps += 1
                self.seq_steps += len(active)
            end = start + self.prefill_base + self.prefill_tok * sum(prompt[j] for j in group)
            step = self.run_step
            for j in group:
                ttft[j] = end - arrival[j]
                heappush(active, (step + max_tokens[j] - 1, j))
            start = end
        self.run_start = start
        d = table[len(active)]
        self.step_time = d
        self.next_done = start + max(active[0][0] - self.run_step, 0) * d

    def _dispatch(self, now: float) -> None:
        """Triton's side: `execute` submits its batch one request at a time, each waiting for a
        free slot; when it returns, the next batch is formed from the queue."""
        free = self.slots - len(self.active)
        held = self.held
        admitted: list[int] = []
        if held is not None:
            take = min(free, len(held))
            admitted = held[:take]
            free -= take
            if take < len(held):
                self.held = held[take:]
                if admitted:
                    self._admit(admitted, now)
                return
            self.held = None
        q = self.queue
        req = self.req
        arrival = req.arrival
        qt = req.queue_time
        timeout = self.timeout
        while q:
            b: list[int] = []
            while q and len(b) < self.batch:
                j = q.popleft()
                w = now - arrival[j]
                if w > timeout:
                    self.failure += 1
                    req.status[j] = REJECTED
                    continue
                qt[j] = w
                self.queue_us += w * 1e6
                b.append(j)
            if not b:
                break
            self.success += len(b)
            take = min(free, len(b))
            admitted += b[:take]
            free -= take
            if take < len(b):
                self.held = b[take:]
                break
        if admitted:
            self._admit(admitted, now)

    def advance(self, t: float) -> None:
        """Run the engine up to time t: every completion at or before t."""
        if self.kill_at <= t:
            self._run(self.kill_at)
            if self.state != GONE:
                self._kill(self.kill_at)
            return
        self._run(t)

    def _run(self, t: float) -> None:
        req = self.req
        done = req.done
        status = req.status
        active = self.active
        while self.next_done <= t:
            nd = self.next_done
            step = max(active[0][0], self.run_step)
            self.steps += step - self.run_step
            self.seq_steps += (step - self.run_step) * len(active)
            self.run_step = step
            self.run_start = nd
            while active and active[0][0] <= step:
                _, j = heappop(active)
                done[j] = nd
                status[j] = DONE
            self._dispatch(nd)
            if active:
                d = self.table[len(active)]
                self.step_time = d
                self.next_done = self.run_start + (active[0][0] - self.run_step) * d
            else:
                self.next_done = math.inf
                self.busy_acc += nd - self.busy_since
                self.busy_since = None
                if self.state == DRAINING and self.held is None and not self.queue:
                    self.ended = nd
                    self.state = GONE

    def _kill(self, t: float) -> None:
        status = self.req.status
        for j in list(self.queue) + (self.held or []) + [j for _, j in self.active]:
            status[j] = KILLED
        self.queue.clear()
        self.held = None
        self.active = []
        if self.busy_since is not None:
            self.busy_acc += max(t - self.busy_since, 0.0)
            self.busy_since = None
        self.next_done = math.inf
        self.ended = t
        self.state = GONE

    def drain(self, now: float, grace: float) -> None:
        """Deleted: out of the Service at once, in-flight and queued requests finish within the grace period."""
        self.advance(now)
        if self.state == GONE:
            return
        if self.state == STARTING or (not self.active and self.held is None and not self.queue):
            self.ended = now
            self.state = GONE
            return
        self.state = DRAINING
        self.kill_at = now + grace

    def pending(self) -> int:
        return len(self.queue)

    def busy_fraction(self, t: float) -> float:
        """Share of the time since the previous scrape the engine had work (prefill or decode)."""
        busy = self.busy_acc + (t - self.busy_since if self.busy_since is not None and self.busy_since < t else 0.0)
        span = t - self.last_scrape
        frac = (busy - self.last_busy) / span if span > 0 else 0.0
        self.last_busy = busy
        self.last_scrape = t
        return min(max(frac, 0.0), 1.0)
