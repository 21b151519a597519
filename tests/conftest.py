"""Make tests/graph_steps.py importable by path ("graph_steps.Name"), whatever pytest's import mode."""

import sys
from pathlib import Path

TESTS_DIR = str(Path(__file__).parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
