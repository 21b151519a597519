"""More graphs for the outside-client tests (`servegraph serve served_graphs_extra:<name>`)."""

from __future__ import annotations

import numpy as np

import servegraph as sg


def make_arrays(body: dict) -> dict:
    """Arrays of several dtypes and a byte string, so clients can check how they decode tensors."""
    return {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 2,
        "i64": np.array([-1, 2**40], dtype=np.int64),
        "flags": np.array([True, False]),
        "raw": b"hi",
        "label": body.get("label"),
    }


arrays = sg.Graph("arrays")
arrays.to(name="make", handler=make_arrays).respond()
