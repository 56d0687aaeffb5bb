"""Weighted priority lanes: which lane the next free slot serves.

Smooth weighted round-robin (the nginx upstream algorithm): every pick adds each
non-empty lane's weight to its credit, serves the lane with the most credit and takes
the total weight of the non-empty lanes from it. Over any window the picks follow the
weights (4:3:2:1 by default) and they interleave rather than come in bursts; a lane
with weight >= 1 is served at least once per ``total weight`` picks, so it is never
starved; a lane that is alone with work gets every pick. Empty lanes neither earn nor
keep credit, so a lane that was idle cannot burst ahead when work arrives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from jobpool.models import Priority

_LANES = tuple(Priority)  # iterating the enum class itself is slow, and runs per job

DEFAULT_WEIGHTS: Mapping[Priority, int] = {
    Priority.CRITICAL: 4,
    Priority.HIGH: 3,
    Priority.NORMAL: 2,
    Priority.LOW: 1,
}


class WeightedLanes:
    """Smooth weighted round-robin over the priority lanes that have work."""

    def __init__(self, weights: Mapping[Priority, int] = DEFAULT_WEIGHTS) -> None:
        for priority in _LANES:
            if weights.get(priority, 0) < 1:
                raise ValueError(f"weight of {priority.value!r} must be >= 1")
        self._weights = dict(weights)
        self._credit = dict.fromkeys(_LANES, 0)

    def pick(self, ready: Iterable[Priority]) -> Priority | None:
        """The lane to serve next among ``ready`` (lanes with work), or None if none."""
        has_work = set(ready)
        lanes = [p for p in _LANES if p in has_work]
        if not lanes:
            return None
        for priority in _LANES:
            if priority not in has_work:
                self._credit[priority] = 0
        if len(lanes) == 1:
            return lanes[0]  # alone with work: it gains its weight and pays it back
        total = 0
        for lane in lanes:
            self._credit[lane] += self._weights[lane]
            total += self._weights[lane]
        chosen = max(lanes, key=lambda lane: self._credit[lane])
        self._credit[chosen] -= total
        return chosen
