"""Benchmarks: ``python -m benchmarks [NAME ...]`` runs every ``bench_*.py`` here (or those named)."""
