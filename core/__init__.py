"""The ground floor every layer stands on: settings, ids, the job spec and config catalog, secrets,
disk checks, MLflow tracking and the object store. It imports nothing else of the project."""
