"""Routing: the first `[[route]]` whose matchers all match sets a group's severity and
the sinks it goes to. Decided once, from the event that creates the group."""

from __future__ import annotations

from wrapalert.config import RouteConfig
from wrapalert.match import DEFAULT_SEVERITY
from wrapalert.model import Event


class Router:
    """Severity and sinks for a new group; with no routes, "warning" to every sink."""

    def __init__(self, routes: tuple[RouteConfig, ...] = ()) -> None:
        self.routes = routes  # their match lists parsed by config, once

    def route(self, event: Event) -> tuple[str, tuple[str, ...] | None]:
        for route in self.routes:
            if route.matches(event):
                return route.severity, route.sinks
        return DEFAULT_SEVERITY, None
