"""The ground floor every layer stands on: settings, ids, the job spec and config catalog, secrets,
disk checks, MLflow tracking and the object store. It imports nothing else of the project."""

__version__ = "0.1.0"  # the version jobs and reports record (pyproject.toml carries the same)
