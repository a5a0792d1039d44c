"""Serving: vLLM where it runs (``customizer serving start``), ``customizer serve-models`` (an
OpenAI-compatible, batching server over transformers + PEFT) where it does not, the
serving-compatibility check, and the hand-off to a serving endpoint.

Modules: ``server`` (the FastAPI app, streaming, running it), ``model`` (the base model and its
adapters), ``batching`` (continuous batching across adapters), ``lora`` (each row's adapter in a
mixed batch), ``generation`` (decoding and logprobs), ``constrained`` and ``schema_constraint``
(``response_format`` JSON), ``schemas`` (the OpenAI wire format), ``auth`` (API keys), ``metrics``
(``/metrics``), ``compat`` (would an engine load this adapter?), ``handoff`` (make a version live on
an endpoint), ``vllm`` (starting vLLM) and ``vllm_resolver`` (customizer's plugin inside vLLM).
"""
