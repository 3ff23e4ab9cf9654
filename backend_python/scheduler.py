"""What each engine step computes, decided on the host and handed to the model runner as plain data.

A step runs every decoding sequence's next token and fills the rest of a token budget
(``max_num_batched_tokens``) with prompt chunks: first of prompts already being
prefilled, then of waiting requests in arrival order. A long prompt therefore takes
several steps, and the streams around it keep their pace. A request is admitted once
its whole prompt fits in the free KV blocks (less those promised to prompts already
being prefilled); its prompt's longest cached prefix is taken from the prefix cache
instead of being computed. When decoding sequences outgrow the pool, the newest
running sequence is preempted: its blocks go back, and it is prefilled again later
(prompt and answer so far), so no request ever fails for lack of memory.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager, block_hashes
from .config import EngineConfig
from .sequence import Sequence


@dataclass(frozen=True)
class Chunk:
    """Tokens ``start:end`` of a sequence to prefill; the last chunk of a prompt samples its next token."""

    seq: Sequence
    start: int
    end: int
    last: bool


@dataclass
class StepPlan:
    """One step: prompt chunks to prefill, and the sequences that started or were preempted in it. Every
    decoding sequence has the block for its next token; ``Scheduler.decode`` makes the decode step's
    rows when it is launched (after the prefill, or between its layers)."""

    prefill: list[Chunk] = field(default_factory=list)
    decoding: int = 0  # sequences that take a decode step in this step
    admitted: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)


@dataclass
class DecodeRows:
    """A decode step's rows: each sequence's next token goes at position ``lengths[i]`` of its cache."""

    seqs: list[Sequence] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    def __init__(self, config: EngineConfig, num_blocks: int):
        self.config = config
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the newest is preempted first
        self._slots = list(range(config.max_num_seqs - 1, -1, -1))

    # -- admission ---------------------------------------------------------------------

    def fits(self, tokens: int) -> bool:
        """Whether one sequence of ``tokens`` (prompt and answer) fits in the whole pool."""
        return self.blocks.blocks_for(tokens) <= self.blocks.num_blocks

    def has_room(self, prompt_tokens: int) -> bool:
        """Whether a new request would be admitted behind those already waiting: backpressure holds
        the rest in Triton's queue. With nothing waiting, one is always let in to wait here."""
        if not self.waiting:
            return True
        if len(self.running) + len(self.waiting) >= self.config.max_num_seqs:
            return False
        needed = sum(self._blocks_to_admit(s) for s in self.waiting) + self._promised()
        return needed + self.blocks.blocks_for(prompt_tokens + 1) <= self.blocks.free

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def unfinished(self) -> int:
        return len(self.running) + len(self.waiting)

    # -- one step ----------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget = self.config.max_num_batched_tokens
        for seq in list(self.running):
            if seq.slot >= 0 and self._decodes(seq) and self._reserve(seq, seq.computed + 1, plan):
                plan.decoding += 1
        budget -= plan.decoding
        cap = self.config.long_prefill_token_threshold if plan.decoding else 0
        for seq in list(self.running):
            if budget > 0 and seq.slot >= 0 and seq.prefilling:
                end = min(seq.target, seq.computed + min(budget, cap or budget))
                # Preempting for a prompt only when nothing decodes: then something always makes progress.
                if self._reserve(seq, end + (end == seq.target), plan, preempt=not plan.decoding):
                    budget -= self._chunk(seq, end, plan)
        while budget > 0 and self.waiting and len(self.running) < self.config.max_num_seqs and not plan.preempted:
            seq = self.waiting[0]
            if seq.finished:
                self.waiting.popleft()
                continue
            if seq.in_flight or not self._admit(seq):
                break
            self.waiting.popleft()
            plan.admitted.append(seq)
            end = min(seq.target, seq.computed + min(budget, cap or budget))
            self._reserve(seq, end + (end == seq.target), plan, preempt=False)  # admitted: it fits
            budget -= self._chunk(seq, end, plan)
        return plan

    def decode(self, skip: tuple[Sequence, ...] = ()) -> DecodeRows:
        """The rows of a decode step to launch now: every decoding sequence with a block for its next
        token (one more is taken if free; preempting is ``schedule``'s alone)."""
        rows = DecodeRows()
        for seq in self.running:
            if self._decodes(seq) and seq not in skip:
                if seq.computed // self.config.block_size >= len(seq.blocks):
                    if not self.blocks.can_take(1 + self._promised()):
                        continue
                    seq.blocks += self.blocks.allocate(1)
                rows.seqs.append(seq)
                rows.lengths.append(seq.computed)
                seq.computed += 1
        return rows

    def undo(self, rows: DecodeRows) -> None:
        """Rows that were not launched after all (blocks they took stay theirs)."""
        for seq in rows.seqs:
            seq.computed -= 1

    def finish(self, seq: Sequence) -> None:
        """A finished (or failed, or cancelled) sequence gives up its blocks; those of known tokens stay
        cached for a later prompt that starts the same way (the next turn of this chat)."""
        if seq in self.running:
            self._release(seq)
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    # -- the parts -----------------------------------------------------------------------

    def _decodes(self, seq: Sequence) -> bool:
        return not seq.prefilling and not seq.finished and seq.scheduled < seq.request.sampling.max_tokens

    def _chunk(self, seq: Sequence, end: int, plan: StepPlan) -> int:
        start = seq.computed
        plan.prefill.append(Chunk(seq, start, end, last=end == seq.target))
        seq.computed = end
        # Full blocks are cached as soon as their computation is launched: any later reader runs after it.
        known = min(end, len(seq.tokens))
        seq.hashes = block_hashes(seq.tokens[:known], seq.prompt.visuals, self.config.block_size, seq.hashes)
        self.blocks.register(seq.blocks, seq.hashes)
        return end - start

    def _admit(self, seq: Sequence) -> bool:
        """Start a waiting sequence if its prompt (plus its first answer token) fits; take its longest
        cached prefix. Never the whole prompt: its last token is computed, for the next token's logits."""
        target = len(seq.tokens)
        seq.hashes = block_hashes(seq.tokens, seq.prompt.visuals, self.config.block_size, seq.hashes)
        reused = self.blocks.cached_prefix(seq.hashes[: (target - 1) // self.config.block_size])
        new = self.blocks.blocks_for(target + 1) - len(reused)
        if not self.blocks.can_take(new + self._promised(), reused):
            return False
        self.blocks.take(reused)
        seq.blocks = list(reused)
        seq.target = target
        seq.computed = seq.cached = len(reused) * self.config.block_size
        seq.slot = self._slots.pop()
        self.running.append(seq)
        return True

    def _blocks_to_admit(self, seq: Sequence) -> int:
        return self.blocks.blocks_for(len(seq.tokens) + 1)

    def _promised(self) -> int:
        """Blocks the prompts being prefilled still need (they were admitted on that promise)."""
        return sum(max(0, self.blocks.blocks_for(s.target + 1) - len(s.blocks)) for s in self.running if s.prefilling)

    def _reserve(self, seq: Sequence, tokens: int, plan: StepPlan, preempt: bool = True) -> bool:
        """Give ``seq`` blocks for ``tokens`` tokens, preempting the newest running sequences if it must
        (``seq`` itself last). False if ``seq`` cannot run in this step."""
        need = self.blocks.blocks_for(tokens) - len(seq.blocks)
        while need > 0 and not self.blocks.can_take(need):
            if not preempt:
                return False
            victim = self.running[-1]
            self._preempt(victim, plan)
            if victim is seq:
                return False
        if need > 0:
            seq.blocks += self.blocks.allocate(need)
        return True

    def _preempt(self, seq: Sequence, plan: StepPlan) -> None:
        """Back to the front of the queue, to be prefilled again (prompt and answer so far) once the
        tokens it has in flight have reached the host."""
        self._release(seq)
        self.running.remove(seq)
        seq.blocks, seq.computed, seq.target = [], 0, 0
        self.waiting.appendleft(seq)
        plan.preempted.append(seq)

    def _release(self, seq: Sequence) -> None:
        known = min(seq.computed, len(seq.tokens))
        seq.hashes = block_hashes(seq.tokens[:known], seq.prompt.visuals, self.config.block_size, seq.hashes)
        self.blocks.register(seq.blocks, seq.hashes)
        self.blocks.release(seq.blocks)
        seq.blocks = []
        self._slots.append(seq.slot)
        seq.slot = -1
