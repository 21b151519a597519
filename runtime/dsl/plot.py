"""Mermaid rendering of a graph, for docs, notebooks and `servegraph plot`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .steps import RouterStep, Step, TaskStep

if TYPE_CHECKING:
    from .graph import Graph


def to_mermaid(graph: Graph) -> str:
    lines = ["flowchart LR", "    _in((in))"]
    for name, step in graph.steps.items():
        lines.append(f"    {_node_id(name)}{_shape(step)}")
    for handler in graph.error_handlers:
        lines.append(f'    {_node_id(handler)}>"{handler}"]')
    for root in graph.roots():
        lines.append(f"    _in --> {_node_id(root)}")
    for name, outlets in graph.outlets().items():
        step = graph.steps[name]
        for outlet in outlets:
            arrow = "-. cycle .->" if outlet in step.cycle_targets else "-->"
            lines.append(f"    {_node_id(name)} {arrow} {_node_id(outlet)}")
        if step.on_error:
            lines.append(f"    {_node_id(name)} -. error .-> {_node_id(step.on_error)}")
    for name, handler in graph.error_handlers.items():
        for target in handler.before:
            lines.append(f"    {_node_id(name)} --> {_node_id(target)}")
    if graph.on_error:
        lines.append(f"    _graph_error{{{{any error}}}} -.-> {_node_id(graph.on_error)}")
    responder = graph.responder()
    if responder is not None:
        lines.append("    _out((out))")
        lines.append(f"    {_node_id(responder.name)} --> _out")
    return "\n".join(lines) + "\n"


def _node_id(name: str) -> str:
    """Mermaid ids must be plain words; step names may hold '-' or spaces."""
    return "s_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def _shape(step: Step) -> str:
    label = step.name
    if isinstance(step, RouterStep):
        routes = ", ".join(step.routes)
        return f'{{"{label}<br/>routes: {routes}"}}'
    if isinstance(step, TaskStep):
        return f'["{label}"]'
    return f'[["{label}<br/>{type(step).__name__}"]]'
