"""customizer: validate a dataset, fine-tune a base model, evaluate it against the base, gate,
register the result in MLflow and publish the adapter to an artifact store."""

__version__ = "0.1.0"
