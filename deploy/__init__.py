"""Deployment: the MLflow model registry, the artifact store that publishes a version's files
(file:// or S3), and job notifications. Plain Python; no orchestrator imports."""
