"""Evaluation: lm-eval benchmarks (versioned YAML under ``benchmarks/``), task metrics, and the
promotion gate. Plain Python; no orchestrator imports."""
