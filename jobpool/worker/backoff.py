"""Retry policy: how long a failed attempt waits before the next one.

Exponential backoff with full jitter (the AWS architecture blog's recommendation): the
delay of retry n is uniform in [base * factor**(n-1) / 2, base * factor**(n-1)],
capped at ``cap_s``. Half the delay is guaranteed so retries never come back at once;
the jittered half spreads a burst of failures over time.
"""

from __future__ import annotations

import math
import random

from pydantic import BaseModel, ConfigDict, Field


class RetryPolicy(BaseModel):
    """Per pool, overridable per handler."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=5, ge=1, description="attempts in all, the first included")
    base_s: float = Field(default=1.0, gt=0, description="delay before the first retry")
    factor: float = Field(default=2.0, ge=1, description="growth of the delay per attempt")
    cap_s: float = Field(default=300.0, gt=0, description="longest delay between attempts")

    def delay_s(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based) before the next one."""
        try:
            growth = self.factor ** max(attempt - 1, 0)
        except OverflowError:  # a very late attempt: the cap applies anyway
            growth = math.inf
        ceiling = min(self.cap_s, self.base_s * growth)
        return (rng or random).uniform(ceiling / 2, ceiling)

    def exhausted(self, attempt: int, max_attempts: int | None = None) -> bool:
        """True when ``attempt`` was the last one allowed."""
        return attempt >= (max_attempts or self.max_attempts)
