"""The stage interface: what every step of an event's path through the daemon shares.

Modelled on structlog's processors and Alertmanager's notify stages: a stage
is a callable that takes the event's `Flow` and returns it (perhaps with
more decided about it) or None, which ends the event's path there (the stage
that drops it counts why). A `Chain` runs stages in order and stops at the
first None. Stages do their setup in `__init__` and keep `__call__` hot: it
runs once per accepted event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from wrapalert.match import DEFAULT_SEVERITY
from wrapalert.model import Event

Key = tuple[str, ...]  # a group's key: its group_by field values


@dataclass(frozen=True, slots=True)
class Destination:
    """How loud a group is and where its reports go: a route's decision."""

    severity: str = DEFAULT_SEVERITY
    sinks: tuple[str, ...] | None = None  # None: every sink


EVERYWHERE = Destination()  # without routes (or none matching): "warning", every sink


@dataclass(slots=True)
class Flow:
    """One accepted event on its way through the stages: a typed context, no bag."""

    event: Event
    route: Destination = EVERYWHERE  # set by the route stage
    # Set by the aggregate stage: the key of the exact group this event started or woke
    # (its first news since a report). The scan stage reads it: the detector sees a
    # source and daemon only then, not at every event of a flood.
    woke: Key | None = None


class Stage(Protocol):
    """One step: the flow goes on (returned) or stops here (None)."""

    def __call__(self, flow: Flow) -> Flow | None: ...


class Chain:
    """Stages in order; an event stops at the first stage that returns None."""

    __slots__ = ("stages",)

    def __init__(self, stages: Iterable[Stage]) -> None:
        self.stages = tuple(stages)

    def __call__(self, flow: Flow) -> Flow | None:
        for stage in self.stages:
            result = stage(flow)
            if result is None:
                return None
            flow = result
        return flow
