"""Deployment: MLflow tracking and registry, the artifact store (file:// or S3), serving hand-off.
Plain Python; no orchestrator imports."""
