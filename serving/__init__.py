"""Serving: ``customizer serve-models`` (an OpenAI-compatible server over transformers + PEFT), the
serving-compatibility check, and the hand-off to a vLLM / NIM endpoint.

Modules: ``server`` (the FastAPI app, streaming, running it), ``model`` (the base model and its
adapters), ``generation`` (decoding and logprobs), ``schemas`` (the OpenAI wire format),
``compat`` (would an engine load this adapter?), ``handoff`` (make a version live on vLLM / NIM).
"""
