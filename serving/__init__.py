"""Serving: ``customizer serve-models`` (an OpenAI-compatible server over transformers + PEFT), the
serving-compatibility check, and the hand-off to a vLLM / NIM endpoint."""
