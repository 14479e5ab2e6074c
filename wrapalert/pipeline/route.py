"""Routing: the first `[[route]]` whose matchers all match sets a group's severity and
the sinks it goes to. Decided once, from the event that creates the group."""

from __future__ import annotations

from dataclasses import dataclass

from wrapalert.config import RouteConfig
from wrapalert.match import Selector
from wrapalert.model import Event
from wrapalert.pipeline.stage import EVERYWHERE, Destination


@dataclass(frozen=True, slots=True)
class Route:
    selector: Selector  # parsed by config, once
    to: Destination


class Router:
    """Severity and sinks for a new group; with no routes, "warning" to every sink."""

    def __init__(self, routes: tuple[RouteConfig, ...] = ()) -> None:
        self.routes = tuple(Route(r.match, Destination(r.severity, r.sinks)) for r in routes)

    def route(self, event: Event) -> Destination:
        for route in self.routes:
            if route.selector.matches(event):
                return route.to
        return EVERYWHERE
