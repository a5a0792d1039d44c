"""Published versions as Data Store model repos: ``<namespace>/<name>`` is the output model, a
revision is a version number (``main``: the trusted champion), and the files are those the
version's manifest lists, read from the artifact store and verified against it.

``huggingface_hub.snapshot_download(repo_id, revision="3", endpoint=<api>/v1/hf)`` asks for the
repo's info at the revision, lists its tree at the commit id the info gave, then downloads each
file at that commit id; the commit id of a version is derived from its name and its files' sha256,
so it never changes (published versions are immutable) and names one version only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from api.errors import NotFound
from core import objects
from core.settings import Settings
from deploy.registry import CHAMPION
from deploy.store import MANIFEST, Manifest, NotPublished, StoreError, open_store, read_published_file, verify_published
from deploy.trust import files_digest, trusted_champion


@dataclass(frozen=True)
class PublishedRepo:
    output_model: str
    version: str
    sha: str
    manifest: Manifest


def _sha(output_model: str, manifest: Manifest) -> str:
    digest = files_digest({n: e.sha256 for n, e in manifest.files.items()})
    return hashlib.sha1(f"{output_model}@{manifest.version}:{digest}".encode()).hexdigest()


def _versions(settings: Settings, output_model: str) -> list[str]:
    """The versions of ``output_model`` with a manifest, in number order (one listing of its folder)."""
    store = open_store(settings.publish_uri, settings)
    try:
        keys = store.list(output_model)
    except (*objects.store_errors(), objects.PathRefused) as exc:
        raise StoreError(f"listing {output_model} in {settings.publish_uri} failed: {exc}") from exc
    found = [key.partition("/")[0] for key in keys if key.count("/") == 1 and key.endswith(f"/{MANIFEST}")]
    return sorted(found, key=lambda v: (len(v), v))


def find(settings: Settings, namespace: str, name: str, revision: str) -> PublishedRepo | None:
    """The published version ``revision`` of ``namespace/name``; None when the model has no published
    version at all (it is not a published model).

    Raises:
        NotFound: the model is published but has no such revision (``main`` without a champion).
        deploy.store.StoreError: the store cannot be read, or the version's files do not match its manifest.
        deploy.trust.UntrustedChampion, deploy.registry.RegistryUnavailable: ``main`` cannot be resolved.
    """
    output_model = f"{namespace}/{name}"
    versions = _versions(settings, output_model)
    if not versions:
        return None
    if revision == "main":
        champion = trusted_champion(settings, output_model, principal=None, purpose="data store download")
        if champion is None:
            raise NotFound(f"{output_model} has no {CHAMPION}: name a published version as the revision ({', '.join(versions)})")
        revision = champion.version
    candidates = [revision] if revision in versions else versions if len(revision) == 40 else []
    for version in candidates:
        try:
            manifest = verify_published(output_model, version, settings)
        except NotPublished:
            continue
        sha = _sha(output_model, manifest)
        if version == revision or sha == revision:
            return PublishedRepo(output_model, version, sha, manifest)
    raise NotFound(f"revision {revision!r} of {output_model} does not exist (published versions: {', '.join(versions)})")


def info(repo: PublishedRepo) -> dict:
    """The Hub's repo info for a published version."""
    return {
        "id": repo.output_model, "_id": repo.sha, "sha": repo.sha, "private": False, "disabled": False, "gated": False,
        "author": repo.output_model.split("/")[0], "library_name": "peft" if "adapter_config.json" in repo.manifest.files else "transformers",
        "siblings": [{"rfilename": path, "size": entry.size} for path, entry in sorted(repo.manifest.files.items())],
        "tags": [], "downloads": 0, "likes": 0,
    }


def tree(repo: PublishedRepo) -> list[dict]:
    """The Hub's tree entries for a published version's files (they sit at its top level)."""
    return [{"type": "file", "oid": entry.sha256[:40], "size": entry.size, "path": path,
             "lfs": {"oid": entry.sha256, "size": entry.size, "pointerSize": 0}}
            for path, entry in sorted(repo.manifest.files.items())]


def headers(repo: PublishedRepo, path: str) -> dict[str, str]:
    """A file's metadata headers, or NotFound when the version does not hold it."""
    entry = repo.manifest.files.get(path)
    if entry is None:
        raise NotFound(f"{path} is not in {repo.output_model} version {repo.version}")
    return {"X-Repo-Commit": repo.sha, "ETag": f'"{entry.sha256}"', "Content-Length": str(entry.size), "Accept-Ranges": "none"}


def content(settings: Settings, repo: PublishedRepo, path: str) -> bytes:
    """A file of the version, verified against its manifest (``deploy.store.read_published_file``)."""
    return read_published_file(repo.output_model, repo.version, path, settings)


MODEL_REPOS = "hf://models/"  # a published version as an Entity Store model's files_url: hf://models/<ns>/<name>@<version>


def repo_url(output_model: str, version: str) -> str:
    """The Data Store model repo of a published version.

    >>> repo_url("team/bot", "3")
    'hf://models/team/bot@3'
    """
    return f"{MODEL_REPOS}{output_model}@{version}"


def parse_repo_url(url: str) -> tuple[str, str, str]:
    """``hf://models/<namespace>/<name>[@<revision>]`` -> ``(namespace, name, revision)`` (``main`` by default).

    >>> parse_repo_url("hf://models/team/bot@3"), parse_repo_url("hf://models/team/bot")
    (('team', 'bot', '3'), ('team', 'bot', 'main'))

    Raises:
        ValueError: the URL is not a Data Store model repo.
    """
    repo, _, revision = url.removeprefix(MODEL_REPOS).partition("@")
    namespace, _, name = repo.strip("/").partition("/")
    if not url.startswith(MODEL_REPOS) or not namespace or not name or "/" in name or (url.count("@") and not revision):
        raise ValueError(f"{url!r} is not a Data Store model repo (hf://models/<namespace>/<name>[@<version>])")
    return namespace, name, revision or "main"


def version_folder(settings: Settings, namespace: str, name: str, revision: str) -> str:
    """The store folder of a published version (its manifest verified), named as a Data Store model
    repo names it (``parse_repo_url``).

    Raises:
        NotFound: the model has no published version, or none at the revision.
        deploy.store.StoreError: the store cannot be read, or the version's files do not match its manifest.
        deploy.trust.UntrustedChampion, deploy.registry.RegistryUnavailable: ``main`` cannot be resolved.
    """
    repo = find(settings, namespace, name, revision)
    if repo is None:
        raise NotFound(f"{namespace}/{name} has no published version")
    return open_store(settings.publish_uri, settings).uri(f"{repo.output_model}/{repo.version}") + "/"
