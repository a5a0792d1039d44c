"""customizer, the app: the command line (``customizer ...``), ``customizer up`` (the local platform),
the worker that serves the flows as deployments, and the job summary it prints. Everything it runs
lives in the layers below (see the README's Layout)."""

from core import __version__  # noqa: F401  (the one version, kept with the ground package)
