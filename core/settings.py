"""The one settings object: where customizer keeps its state and which services it talks to.

Every value can be set from the environment with the ``CUSTOMIZER_`` prefix, e.g.
``CUSTOMIZER_DATA_DIR=/srv/customizer`` moves everything the embedded defaults write.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration. Defaults need no setup: SQLite, local folders, Prefect's local API."""

    model_config = SettingsConfigDict(env_prefix="CUSTOMIZER_", extra="ignore")

    data_dir: Path = Field(
        default=Path("~/.customizer"),
        description="Folder for everything the embedded defaults keep: model cache, jobs, MLflow, store, Prefect.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking/registry URI. Default: SQLite under the data folder."
    )
    mlflow_experiment: str = Field(default="customizer", description="MLflow experiment that holds job runs.")
    store_uri: str | None = Field(
        default=None,
        description="Where adapters are published: file:///path or s3://bucket/prefix. Default: a folder under the data folder.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, Ceph, moto). Credentials come from the AWS chain."
    )
    config_dirs: list[Path] = Field(
        default_factory=list, description="Extra folders of config YAML files added to the built-in catalog."
    )
    benchmark_dirs: list[Path] = Field(
        default_factory=list,
        description="Extra folders of general benchmark YAML files (lm-eval task format, data beside them), "
        "named by file name without .yaml. They are the operator's: lm-eval runs their templates as code, so "
        "jobs only ever name a benchmark, never give a file.",
    )
    hub_offline: bool = Field(
        default=True, description="Never contact a model hub. Set false to allow Hugging Face downloads."
    )
    torch_threads: int | None = Field(default=None, description="CPU threads for torch; default: all cores.")
    worker_gpus: int | None = Field(
        default=None, ge=0,
        description="GPUs a training worker has; when set, jobs asking for more are refused at creation. Default: "
        "this machine's (`customizer up` runs the API and the worker together).",
    )
    eval_precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="dtype models are scored in: auto is bfloat16 where the hardware runs it natively (CPUs with "
        "AVX512-BF16 or AMX, GPUs with bf16), float32 elsewhere. Base and candidate are always scored alike.",
    )
    policy_dir: Path | None = Field(
        default=None, description="Folder of per-namespace promotion policies (<namespace>.yaml); default <data>/policies."
    )
    approval_poll_seconds: int = Field(
        default=10, ge=1, description="How often a job waiting for an approval checks for the answer."
    )
    # Publication to the store.
    s3_multipart_threshold: int = Field(
        default=8 << 20, ge=1, description="Files of at least this many bytes go to S3 in parts (multipart upload)."
    )
    s3_multipart_chunksize: int = Field(
        default=8 << 20,
        ge=5 << 20,
        description="Part size in bytes for multipart uploads (S3's minimum is 5 MiB; raised as needed to stay within 10,000 parts).",
    )
    s3_max_concurrency: int = Field(default=10, ge=1, description="Parallel part uploads/downloads per file.")
    s3_max_attempts: int = Field(
        default=5, ge=1, description="Attempts per S3 request; only throttling, 5xx and connection errors are retried."
    )
    s3_checksums: Literal["when_supported", "when_required"] = Field(
        default="when_supported",
        description="When S3 requests carry a checksum and answers are checked against theirs: when_supported "
        "(every request that can) or when_required (only where S3 demands one; for S3-compatible stores that "
        "reject the newer checksum headers).",
    )
    # Serving: the embedded server (`customizer serve-models`) and the hand-off to vLLM / NIM.
    serve_config: str = Field(
        default="huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu",
        description="Config URN whose base model `customizer serve-models` loads.",
    )
    serve_host: str = Field(default="127.0.0.1", description="Address `customizer serve-models` listens on.")
    serve_port: int = Field(default=8000, ge=0, le=65535, description="Port `customizer serve-models` listens on.")
    serve_max_adapters: int = Field(
        default=8, ge=1, description="Adapters `customizer serve-models` keeps in memory; the least recently used is evicted."
    )
    serving_endpoint: str | None = Field(
        default=None,
        description="OpenAI-compatible server (vLLM, NIM, or customizer serve-models) to load promoted adapters into "
        "through its /v1/load_lora_adapter route, e.g. http://vllm:8000.",
    )
    serving_api_key: SecretStr | None = Field(default=None, description="Bearer token for serving_endpoint.")
    serving_lora_root: str | None = Field(
        default=None,
        description="Where the serving engine sees the store (e.g. a mounted bucket, /mnt/adapters); adapters are "
        "then named to it as <root>/<namespace>/<name>/<version>. Default: the published store URI.",
    )
    serving_timeout_s: float = Field(default=120.0, gt=0, description="Timeout for one call to serving_endpoint.")
    serving_allow_embedding_targets: bool = Field(
        default=False,
        description="Let the serving check pass adapters that target embeddings or the LM head "
        "(only for engines that support them).",
    )
    # vLLM (`customizer serving start`), in its own venv: its pins conflict with Prefect's (`make vllm`).
    vllm_python: Path | None = Field(
        default=None,
        description="Python of the venv vLLM is installed in. Default: .venv-vllm/bin/python in the project folder (`make vllm`).",
    )
    vllm_host: str = Field(default="127.0.0.1", description="Address `customizer serving start` has vLLM listen on.")
    vllm_port: int = Field(default=8100, ge=1, le=65535, description="Port `customizer serving start` has vLLM listen on.")
    vllm_max_lora_rank: int = Field(
        default=64, ge=1,
        description="Largest LoRA rank vLLM makes room for (rounded up to a vLLM choice; raised when a champion needs more): "
        "adapters the resolver loads later must fit in it.",
    )
    vllm_max_loras: int = Field(default=4, ge=1, description="Adapters vLLM holds in one batch (raised to the champions' count).")
    vllm_max_model_len: int | None = Field(default=None, ge=1, description="vLLM's --max-model-len; default: the model's own.")
    vllm_cpu_kvcache_gib: int = Field(default=2, ge=1, description="KV cache vLLM's CPU build reserves (VLLM_CPU_KVCACHE_SPACE), in GiB.")
    vllm_base_model: str | None = Field(
        default=None,
        description="The base model vLLM serves (set by `customizer serving start`): its LoRA resolver loads only adapters of it.",
    )
    vllm_in_up: bool = Field(
        default=False, description="`customizer up` also starts vLLM (as `customizer serving start`), when its venv is installed."
    )
    api_database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the API's state (jobs, entities, configs), e.g. postgresql+psycopg://... "
        "Default: on `postgres_url` if set, else SQLite under the data folder.",
    )
    postgres_url: str | None = Field(
        default=None,
        description="A PostgreSQL server for the platform's state, postgresql://user:password@host:port: the API's state, "
        "MLflow's store and Prefect's server each get a database there (customizer_api, customizer_mlflow, "
        "customizer_prefect; `customizer up` makes them). api_database_url and mlflow_tracking_uri, if set, win.",
    )
    api_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Bootstrap API keys accepted as bearer tokens, each with the namespaces it may use ("*": all), as '
        'JSON, e.g. {"k1": ["*"], "k2": ["team-a"]}. Each is a principal named key-<first 8 hex digits of the key\'s '
        'sha256> with every role (submit, review, admin) in its namespaces; other principals are added with '
        '`customizer keys add` or POST /v1/principals (kept hashed in <data folder>/api/principals.json). '
        'Authentication is on when a bootstrap key or a principal exists. Neither: no authentication, no identities '
        '(the embedded default, for a laptop only; the API warns at start).',
    )
    auth_required: bool = Field(
        default=False,
        description="Authentication is on even when no key or principal is visible to this process: `customizer up` "
        "sets it for the worker, which is not given the API's keys.",
    )
    datastore_uri: str | None = Field(
        default=None,
        description="Where the Data Store keeps dataset and model repo files: file:///path or s3://bucket/prefix. "
        "Default: a folder under the data folder.",
    )
    max_json_body_bytes: int = Field(
        default=4 << 20, ge=1024,
        description="Largest request body the API reads for JSON and form requests; larger ones are refused with 413.",
    )
    max_upload_bytes: int = Field(
        default=5 << 30, ge=1024,
        description="Largest Data Store commit (the files' contents travel inline, base64-encoded) the API reads; "
        "larger ones are refused with 413.",
    )
    url_schemes: list[Literal["hf", "s3", "file", "http", "https"]] = Field(
        default_factory=lambda: ["hf", "s3", "file", "http", "https"],
        description="Schemes a URL the server reads may use (dataset files_url, model artifacts, base models, "
        "evaluation endpoints); file:// and http(s):// are further limited by allowed_file_roots and allowed_http_hosts.",
    )
    allowed_file_roots: list[Path] = Field(
        default_factory=list,
        description="Folders a file:// URL (or a server path) given to the API may point into. "
        "Default: the data folder, plus the store and Data Store folders when they are file:// URIs. The service's "
        "own state in the data folder (API database, MLflow, Prefect, jobs, caches) is never readable this way.",
    )
    allowed_http_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts (host or host:port) an http(s):// URL given to the API may name, e.g. an evaluation "
        "target's api_endpoint. Default: none, except the serving_endpoint's host.",
    )
    services_nice: int = Field(
        default=10, ge=0, le=19,
        description="Niceness `customizer up` gives the REST API, the Prefect server and the MLflow UI (the worker and the "
        "jobs it runs keep the normal priority): on a machine that both trains and answers clients, training gets the "
        "CPU first and clients wait a little longer. 0: all at the same priority.",
    )
    notify_urls: SecretStr | None = Field(
        default=None,
        description="Where job notifications (completed, failed, waiting for approval, promoted) go: a JSON object "
        'from a namespace, or "*" for every namespace, to a list of Apprise URLs (slack://, workflows:// for Teams, '
        "mailtos://, json:// or jsons:// for any webhook, ...), e.g. "
        '{"*": ["slack://T000/B000/XXXX"], "team-a": ["jsons://hooks.example.com/team-a"]}. '
        "Secret: the URLs carry tokens. Default: none are sent.",
    )
    notify_webhook_url: SecretStr | None = Field(
        default=None,
        description="Deprecated, use notify_urls: one http(s) webhook that receives every namespace's notifications "
        'as Slack-compatible JSON {"text": ...}, e.g. a Slack incoming webhook.',
    )
    customize_deployment: str = Field(
        default="customize/customizer", description="Prefect deployment (flow/deployment) that runs customization jobs."
    )
    evaluate_deployment: str = Field(
        default="evaluate/customizer", description="Prefect deployment (flow/deployment) that runs evaluation jobs."
    )

    @model_validator(mode="after")
    def _notifications_deliverable(self) -> Settings:
        """Refuse, at start-up and naming the setting, notification URLs that could never be delivered."""
        check_notify_settings(self)
        return self

    @property
    def notify_routes(self) -> dict[str, list[str]]:
        """``notify_urls`` read: namespace (or ``"*"``) -> Apprise URLs; empty when it is not set.

        Raises:
            SettingError: naming CUSTOMIZER_NOTIFY_URLS and what is wrong with it.
        """
        return parse_notify_urls(self.notify_urls.get_secret_value()) if self.notify_urls else {}

    @property
    def root(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def policies_dir(self) -> Path:
        return (self.policy_dir or self.root / "policies").expanduser()

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return self._postgres("mlflow") or f"sqlite:///{self.root / 'mlflow' / 'mlflow.db'}"

    @property
    def prefect_database_url(self) -> str | None:
        """Prefect's server database on ``postgres_url``; None: Prefect's own default (SQLite in ``prefect_home``)."""
        return self._postgres("prefect")

    def _postgres(self, service: str) -> str | None:
        # delayed: core.postgres imports SQLAlchemy, which only PostgreSQL setups need here (start-up time)
        from core.postgres import database_url

        return database_url(self.postgres_url, service) if self.postgres_url else None

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.root / "mlflow" / "artifacts"

    @property
    def serving_cache_dir(self) -> Path:
        return self.root / "serving"

    @property
    def publish_uri(self) -> str:
        return self.store_uri or (self.root / "store").as_uri()

    @property
    def api_db_url(self) -> str:
        return self.api_database_url or self._postgres("api") or f"sqlite:///{self.root / 'api' / 'api.db'}"

    @property
    def api_configs_dir(self) -> Path:
        """Configs created through the API, as YAML files the catalog reads like any other config folder."""
        return self.root / "api" / "configs"

    @property
    def datastore_root_uri(self) -> str:
        return self.datastore_uri or (self.root / "datastore").as_uri()

    @property
    def file_roots(self) -> list[Path]:
        """Folders a file:// URL given to the API may point into (resolved)."""
        roots = [Path(root).expanduser().resolve() for root in self.allowed_file_roots]
        if self.allowed_file_roots:
            return roots
        roots = [self.root]
        for uri in (self.publish_uri, self.datastore_root_uri):
            parsed = urlparse(uri)
            if parsed.scheme == "file":
                roots.append(Path(parsed.path).expanduser().resolve())
        return roots

    @property
    def private_dirs(self) -> list[Path]:
        """The service's own state (API database, MLflow, Prefect, jobs, caches): never read through a
        URL a caller gives, even under an allowed root."""
        folders = (self.root / "api", self.root / "mlflow", self.prefect_home, self.jobs_dir, self.models_dir,
                   self.root / "cache", self.serving_cache_dir, self.policies_dir)
        return [folder.expanduser().resolve() for folder in folders]

    @property
    def http_hosts(self) -> set[str]:
        """Hosts an http(s):// URL given to the API may name (lower case)."""
        hosts = {host.strip().lower() for host in self.allowed_http_hosts if host.strip()}
        if self.serving_endpoint:
            hosts.add(urlparse(self.serving_endpoint).netloc.lower())
        return hosts


class SettingError(Exception):
    """A setting's value is unusable; the message names the setting. Not a ValueError on purpose: pydantic
    would wrap it and echo the raw input, and notification URLs are secrets (a webhook's path is its token)."""


_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")  # a namespace as an output_model spells it


def parse_notify_urls(raw: str) -> dict[str, list[str]]:
    """Read CUSTOMIZER_NOTIFY_URLS: a JSON object from a namespace (or ``"*"``) to a list of URLs.

    Errors name the setting and the namespace, never a URL: URLs carry tokens.

    >>> parse_notify_urls('{"*": ["json://hooks.example.com/all"], "team-a": []}')
    {'*': ['json://hooks.example.com/all'], 'team-a': []}
    >>> parse_notify_urls('{"Team A": ["json://x"]}')
    Traceback (most recent call last):
    ...
    core.settings.SettingError: CUSTOMIZER_NOTIFY_URLS: 'Team A' is not a namespace (lowercase letters, digits, '.', '_' or '-') nor "*"

    Raises:
        SettingError: the text is not such an object.
    """
    try:
        routes = json.loads(raw)
    except json.JSONDecodeError as exc:  # its message holds no part of the text
        raise SettingError(f"CUSTOMIZER_NOTIFY_URLS is not valid JSON ({exc.msg} at line {exc.lineno} column "
                           f'{exc.colno}); expected an object such as {{"*": ["slack://T000/B000/XXXX"]}}') from None
    if not isinstance(routes, dict):
        raise SettingError("CUSTOMIZER_NOTIFY_URLS must be a JSON object from a namespace (or \"*\") to a list of "
                           f"Apprise URLs, got a JSON {type(routes).__name__}")
    for namespace, urls in routes.items():
        if namespace != "*" and not _NAMESPACE.match(namespace):
            raise SettingError(f"CUSTOMIZER_NOTIFY_URLS: {namespace!r} is not a namespace "
                               "(lowercase letters, digits, '.', '_' or '-') nor \"*\"")
        if not isinstance(urls, list) or not all(isinstance(url, str) and url.strip() for url in urls):
            raise SettingError(f'CUSTOMIZER_NOTIFY_URLS["{namespace}"] must be a list of Apprise URLs (strings)')
    return {namespace: [url.strip() for url in urls] for namespace, urls in routes.items()}


class _Silence(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@functools.lru_cache(maxsize=64)  # settings are read per request and per task; a URL's answer never changes
def _apprise_reads(url: str) -> bool:
    # delayed: apprise loads its ~150 service plugins (~0.2 s); only processes that notify pay for it
    import apprise

    apprise_logger = logging.getLogger("apprise")
    silence = _Silence()
    apprise_logger.addFilter(silence)  # its load errors repeat the URL, token included
    try:
        return apprise.Apprise.instantiate(url) is not None
    finally:
        apprise_logger.removeFilter(silence)


def check_notify_settings(settings: Settings) -> None:
    """Check that Apprise reads every notification URL and that the deprecated webhook is http(s).

    Raises:
        SettingError: naming the setting, the namespace and the URL's position and scheme, not the URL.
    """
    webhook = settings.notify_webhook_url.get_secret_value() if settings.notify_webhook_url else None
    if webhook is not None:
        parts = urlparse(webhook.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingError("CUSTOMIZER_NOTIFY_WEBHOOK_URL must be an http:// or https:// URL with a host, "
                               f"got {f'a {parts.scheme}:// URL' if parts.scheme else 'no scheme'}")
    for namespace, urls in settings.notify_routes.items():
        for index, url in enumerate(urls):
            if not _apprise_reads(url):
                scheme = url.partition("://")[0] if "://" in url else ""
                raise SettingError(
                    f'CUSTOMIZER_NOTIFY_URLS["{namespace}"][{index}]: Apprise cannot read this '
                    f"{f'{scheme}:// URL' if scheme else 'URL (it has no scheme://)'}: an unknown service, or a "
                    "token or field missing or malformed (see https://github.com/caronc/apprise/wiki)")


def get_settings() -> Settings:
    """Read the settings from the environment (cheap; not cached so tests can change them)."""
    return Settings()


def apply_environment(settings: Settings) -> None:
    """Point the libraries customizer drives at the settings, before they are imported.

    Prefect, Hugging Face and MLflow read their configuration from the environment at import time,
    so this runs first in every entry point. Values the user already set are left alone.
    """
    defaults = {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # A first start migrates a new SQLite database; on a busy 2-core machine that can take >20 s.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "customizer",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # library code also runs outside flows
        "HF_DATASETS_OFFLINE": "1",  # datasets only ever reads local JSON here
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_DATASETS_CACHE": str(settings.root / "cache" / "datasets"),
        "GIT_PYTHON_REFRESH": "quiet",
    }
    if settings.prefect_database_url:
        defaults["PREFECT_API_DATABASE_CONNECTION_URL"] = settings.prefect_database_url
    settings.prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect's SQLite file lives there
    if settings.hub_offline:
        defaults["HF_HUB_OFFLINE"] = "1"
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
