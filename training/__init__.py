"""Training: specs, the config catalog, dataset ingest, prompt rendering, base-model resolution and
one module per training method. Plain Python; no orchestrator imports."""
