"""Entry points that let code written for other serving frameworks run on servegraph unchanged but for imports."""
