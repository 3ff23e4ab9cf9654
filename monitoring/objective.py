"""The time-to-first-token objective (monitoring/objective.yml) and the budgets derived from it.

Queue time is part of the time to first token. Half of the objective may go to waiting before a
request runs (the queue alert's threshold); KEDA scales out at half of that again, so a new pod is
ready before the budget is spent (the queue-time trigger's target). The rest is prefill, the
frontend and the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

OBJECTIVE_FILE = Path(__file__).with_name("objective.yml")


@dataclass(frozen=True)
class TtftObjective:
    seconds: float
    share: float

    def __post_init__(self) -> None:
        if self.seconds <= 0 or not 0 < self.share < 1:
            raise ValueError(f"the objective needs seconds > 0 and 0 < share < 1, got {self}")

    @property
    def error_budget(self) -> float:
        """Share of requests allowed over the objective."""
        return 1 - self.share

    @property
    def queue_budget_seconds(self) -> float:
        return self.seconds / 2

    @property
    def queue_target_seconds(self) -> float:
        return self.seconds / 4


def load_objective(path: Path = OBJECTIVE_FILE) -> TtftObjective:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))["time_to_first_token"]
    return TtftObjective(seconds=float(data["seconds"]), share=float(data["share"]))
