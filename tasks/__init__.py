"""Prefect tasks: thin wrappers over the plain functions in data/, training/, evaluation/, deploy/ and serving/.

Tasks hand each other references (paths, URIs, hashes, run ids, score dicts), never models.
"""
