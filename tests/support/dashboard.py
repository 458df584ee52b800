"""The bundled Grafana dashboard as data, and Grafana's variable interpolation, for the dashboard, deploy
and fleet tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .contract import COLLECTOR_OF, metric_names

DASHBOARD_PATH = Path(__file__).resolve().parent.parent.parent / "grafana" / "netio-exporter.json"


def load_dashboard() -> dict:
    return json.loads(DASHBOARD_PATH.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, rows and the panels of collapsed rows included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def query_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in all_panels(dashboard) if panel["type"] != "row"]


def collectors_of(expr: str) -> set[str | None]:
    """The collectors whose series ``expr`` needs: other namespaces' (``netns!=""``) come with netns only."""
    return {COLLECTOR_OF.get(name) for name in metric_names(expr)} | ({"netns"} if 'netns!=""' in expr else set())


_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::[\w]+)?\}|\[\[(\w+)\]\]")


def variables_used(text: str) -> set[str]:
    return {a or b or c for a, b, c in _VARIABLE.findall(text)}


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def _regex_escape(value: str) -> str:
    # Grafana's prometheusSpecialRegexEscape (multi-value or "All" variables inside a regex matcher)
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def _plain_escape(value: str) -> str:
    # Grafana's prometheusRegularEscape (single-value variables)
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


def interpolate(expr: str, dashboard: dict, values: dict[str, list[str] | str], macros: dict[str, str]) -> str:
    """Substitute variables as Grafana's Prometheus data source does; ``values[name]`` is the selection,
    ``"$__all"`` for "All"."""
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}

    def value_of(name: str) -> str:
        if name in macros:
            return macros[name]
        variable = variables[name]
        selected = values[name]
        if variable.get("multi") or variable.get("includeAll"):
            if selected == "$__all":
                if variable.get("allValue"):
                    return variable["allValue"]
                raise AssertionError(f"${name}: All without allValue needs the variable's options")
            selected = [selected] if isinstance(selected, str) else selected
            escaped = [_regex_escape(one) for one in selected]
            return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        return _plain_escape(selected)

    return _VARIABLE.sub(lambda m: value_of(m.group(1) or m.group(2) or m.group(3)), expr)
