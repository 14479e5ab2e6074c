"""Routing: the first `[[route]]` whose matchers all match sets a group's severity and
the sinks it goes to. Decided once, from the event that creates the group."""

from __future__ import annotations

from dataclasses import dataclass

from wrapalert.config import RouteConfig
from wrapalert.model import Event
from wrapalert.pipeline.mute import Matcher

DEFAULT_SEVERITY = "warning"


@dataclass(frozen=True)
class Route:
    matchers: tuple[Matcher, ...]
    trust: bool | None  # None: either
    severity: str
    sinks: tuple[str, ...] | None

    def matches(self, event: Event) -> bool:
        if self.trust is not None and event.trusted is not self.trust:
            return False
        return all(m.matches(event) for m in self.matchers)


class Router:
    """Severity and sinks for a new group; with no routes, "warning" to every sink."""

    def __init__(self, routes: tuple[RouteConfig, ...] = ()) -> None:
        self.routes = tuple(_compile(r) for r in routes)

    def route(self, event: Event) -> tuple[str, tuple[str, ...] | None]:
        for route in self.routes:
            if route.matches(event):
                return route.severity, route.sinks
        return DEFAULT_SEVERITY, None


def _compile(cfg: RouteConfig) -> Route:
    trust: bool | None = None
    matchers = []
    for text in cfg.match:
        name, _, value = text.partition("=")
        if name.strip() == "trust":
            trust = value == "trusted"
        else:
            matchers.append(Matcher.parse(text))
    return Route(tuple(matchers), trust, cfg.severity, cfg.sinks)
