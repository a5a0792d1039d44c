"""Prefect tasks: thin wrappers over the plain functions in training/, evaluation/ and deploy/.

Tasks hand each other references (paths, URIs, hashes, run ids, score dicts), never models.
"""
