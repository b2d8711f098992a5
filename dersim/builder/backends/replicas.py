"""Replicas of one HTTP expert: which replica takes the next call, and which are out of rotation.

An expert may be served by several replicas (the same model behind several `base_url`s). Each
replica takes at most `max_in_flight` calls at once; a call goes to the live replica with the
fewest calls in flight (the lowest index among ties). After `max_failures` transient failures in
a row (refused connections, 5xx, timeouts) a replica is taken out of rotation for `probe_after_s`
seconds; then one probe call at a time goes to it: a success puts it back, a failure takes it out
again for twice as long (at most `MAX_PROBE_S`). A call that fails on one replica is tried on the
others before the failure reaches the builder's retries, and its journal key never names the
replica, so the journal is valid whichever replica answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_PROBE_S = 60.0


@dataclass
class Replica:
    """One replica's load and health."""

    url: str
    in_flight: int = 0
    failures: int = 0  # transient failures in a row
    down_until: float = 0.0  # out of rotation until this time (monotonic seconds); 0 = live
    probe_s: float = 0.0  # how long the next failed probe takes it out
    answered: int = 0
    failed: int = 0
    started: float = 0.0  # when the pool started (its clock)

    def is_down(self, now: float) -> bool:
        return self.down_until > now

    def capacity(self, now: float, max_in_flight: int) -> int:
        """Calls it may take now: none while out of rotation, one at a time while probed."""
        if self.is_down(now):
            return 0
        return (1 if self.down_until else max_in_flight) - self.in_flight


class ReplicaPool:
    """Chooses a replica for each call and tracks their health (thread-safe)."""

    def __init__(
        self,
        urls: list[str],
        max_in_flight: int,
        max_failures: int = 3,
        probe_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replicas = [Replica(url, started=clock()) for url in urls]
        self.max_in_flight, self.max_failures, self.probe_after_s = (
            max_in_flight,
            max_failures,
            probe_after_s,
        )
        self._clock = clock
        self._changed = threading.Condition()

    def acquire(self, exclude: set[int]) -> int | None:
        """The index of the replica that takes the next call, once one outside `exclude` has room
        (waiting for a slot); None at once when every replica outside `exclude` is out of rotation
        (the call fails fast and the builder's retry, with backoff, tries again later)."""
        with self._changed:
            while True:
                now = self._clock()
                open_ = [i for i in range(len(self.replicas)) if i not in exclude]
                if not open_:
                    return None
                free = [i for i in open_ if self.replicas[i].capacity(now, self.max_in_flight) > 0]
                if free:
                    index = min(free, key=lambda i: (self.replicas[i].in_flight, i))
                    self.replicas[index].in_flight += 1
                    return index
                if all(self.replicas[i].is_down(now) for i in open_):
                    return None
                self._changed.wait()

    def release(self, index: int, ok: bool) -> None:
        """Record the end of a call on replica `index`: answered (`ok`, or refused for a reason
        that is the request's, not the replica's) or failed transiently."""
        with self._changed:
            replica = self.replicas[index]
            replica.in_flight -= 1
            if ok:
                replica.answered += 1
                replica.failures, replica.down_until, replica.probe_s = 0, 0.0, 0.0
            else:
                replica.failed += 1
                replica.failures += 1
                probing = replica.down_until > 0
                if probing or replica.failures >= self.max_failures:
                    replica.probe_s = (
                        min(replica.probe_s * 2, MAX_PROBE_S) if probing else self.probe_after_s
                    )
                    replica.down_until = self._clock() + replica.probe_s
            self._changed.notify_all()

    def next_probe_s(self) -> float:
        """Seconds until the first replica out of rotation may be probed (0 when one is live)."""
        now = self._clock()
        with self._changed:
            return max(0.0, min(r.down_until for r in self.replicas) - now)

    def status(self) -> str:
        """One line for the progress display: calls/s per replica, and which are down."""
        now = self._clock()
        with self._changed:
            parts = []
            for i, replica in enumerate(self.replicas):
                rate = replica.answered / max(now - replica.started, 1e-9)
                state = " down" if replica.is_down(now) else ""
                parts.append(f"r{i} {rate:.1f}/s{state}")
            return ", ".join(parts)
