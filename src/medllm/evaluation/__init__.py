"""Benchmark evaluation: load medical QA benchmarks, generate R1-style answers, parse them, score and report."""
