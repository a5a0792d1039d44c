"""A trained folder as an MLflow Model: what a registered version is, so MLflow loads and serves it.

``log_chat_model`` logs the folder a job trained (a LoRA adapter or full weights) under the job's
run as an MLflow 3 LoggedModel: a ``pyfunc`` model from code (``deploy/chat_model.py``, nothing
pickled) carrying the folder as its ``weights`` artifact, a ``model_config`` saying what it is
(``chat_model_config``), a chat signature (``messages`` in, generated text out, ``max_new_tokens``
and ``temperature`` as params), an input example and the pip requirements loading needs. The
registry version is created from it (``deploy.registry.register_version`` with the returned
``models:/<model id>``), so ``mlflow.pyfunc.load_model("models:/<ns>.<name>@champion")`` and
``mlflow models serve`` work on any version, and customizer's own loaders take the weights from
the same model (``download_weights``).

>>> chat_model_config("adapter", "org/base", "chat", base_folder="/models/base")
{'artifact': 'adapter', 'prompt_format': 'chat', 'max_new_tokens': 128, 'base_model': 'org/base', 'base_folder': '/models/base'}
>>> is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"), is_hub_id("/models/base"), is_hub_id("s3://b/m")
(True, False, False)
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

from core.catalog import CustomizationConfig, Target
from core.settings import Settings
from core.storage import make_private
from core.tracking import client

log = logging.getLogger("customizer.mlflow_model")

CODE = Path(__file__).with_name("chat_model.py")  # the model's code, logged as a file (models from code)
WEIGHTS = "weights"  # the artifact holding the trained folder; deploy/chat_model.py reads it by this name
MAX_NEW_TOKENS = 128  # an answer's default length, when a request does not say
INPUT_EXAMPLE = {"messages": [{"role": "user", "content": "Hello! What can you do?"}]}
LOADING_NEEDS = ("transformers", "peft", "torch")  # what deploy/chat_model.py imports besides mlflow
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


class ModelFormatError(RuntimeError):
    """A registered version's files are not an MLflow Model customizer can take weights from."""


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hugging Face Hub repo id (``org/name``), not a path or URI."""
    return _HUB_ID.fullmatch(name) is not None and not name.startswith((".", "~"))


def base_reference(target: Target, base_dir: str) -> str:
    """Where a logged adapter's base loads from: the Hub id (the target's ``hub_id``, or its
    ``model_uri`` when that is a repo id), else the local folder the base was resolved into."""
    if target.hub_id:
        return target.hub_id
    uri = target.model_uri.removeprefix("hf://")
    return uri if is_hub_id(uri) and not Path(uri).exists() else str(base_dir)


def chat_model_config(artifact: str, base_model: str | None, prompt_format: str, prompt_template: str = "",
                      base_folder: str | None = None) -> dict[str, Any]:
    """The ``model_config`` of a logged version: what ``deploy/chat_model.py`` loads and how it prompts.

    Args:
        artifact: ``adapter`` or ``model`` (full weights).
        base_model: for an adapter, its base's Hub id or local folder (``base_reference``).
        prompt_format, prompt_template: the config's, so the model is prompted as it was trained.
        base_folder: for an adapter whose base is a Hub id, the local folder the base was resolved
            into: loading takes it where it exists (a machine without the Hub, the worker's own cache).
    """
    config: dict[str, Any] = {"artifact": artifact, "prompt_format": prompt_format, "max_new_tokens": MAX_NEW_TOKENS}
    if artifact == "adapter":
        config["base_model"] = base_model
        if base_folder and base_folder != base_model:
            config["base_folder"] = base_folder
    if prompt_format == "template":
        config["prompt_template"] = prompt_template
    return config


def config_for(artifact: str, config: CustomizationConfig, base_dir: str) -> dict[str, Any]:
    """``chat_model_config`` of a version trained with ``config`` on the base resolved into ``base_dir``."""
    return chat_model_config(artifact, base_reference(config.target, base_dir), config.prompt_format, config.prompt_template,
                             base_folder=str(base_dir))


def signature():
    """Chat in, text out: ``messages`` (a list of ``{role, content}``) and optional generation params."""
    # delayed: mlflow is heavy (start-up time)
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Object, ParamSchema, ParamSpec, Property, Schema

    message = Object([Property("role", DataType.string), Property("content", DataType.string)])
    return ModelSignature(
        inputs=Schema([ColSpec(Array(message), name="messages")]),
        outputs=Schema([ColSpec(DataType.string)]),
        params=ParamSchema([ParamSpec("max_new_tokens", DataType.long, MAX_NEW_TOKENS),
                            ParamSpec("temperature", DataType.double, 0.0)]),
    )


def pip_requirements() -> list[str]:
    """The installed versions of what loading needs (a local build tag such as ``+cpu`` left off,
    so an index can resolve them); MLflow adds its own pin."""
    return [f"{name}=={installed_version(name).split('+')[0]}" for name in LOADING_NEEDS]


def _logged(mlflow_client, run_id: str, name: str):
    """The READY LoggedModel named ``name`` that ``run_id`` already output, or None."""
    from mlflow.entities import LoggedModelStatus  # delayed: mlflow is heavy (start-up time)

    outputs = mlflow_client.get_run(run_id).outputs
    for output in outputs.model_outputs if outputs else []:
        model = mlflow_client.get_logged_model(output.model_id)
        if model.name == name and model.status == LoggedModelStatus.READY:
            return model
    return None


def logged_name(output_model: str) -> str:
    """The LoggedModel name of an output model (MLflow allows no ``/ : . % " '`` in it).

    >>> logged_name("team/support-bot.v2")
    'team-support-bot-v2'
    """
    return re.sub(r"[/:.%\"']", "-", output_model)


def log_chat_model(settings: Settings, run_id: str, folder: str | Path, model_config: dict[str, Any], output_model: str,
                   tags: dict[str, str] | None = None) -> str:
    """Log ``folder`` as a pyfunc chat model of ``output_model`` linked to ``run_id``; returns its
    ``models:/<model id>``.

    A run that already output a complete model of this output model gets it back (a re-run of the job
    logs nothing twice). A model whose files did not all upload is marked FAILED.

    Raises:
        MlflowException, OSError: the tracking store could not be written.
    """
    # delayed: mlflow is heavy (start-up time)
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    mlflow_client = client(settings)
    name = logged_name(output_model)
    if (found := _logged(mlflow_client, run_id, name)) is not None:
        return f"models:/{found.model_id}"
    run = mlflow_client.get_run(run_id)
    model = mlflow_client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id, tags=tags)
    try:
        mlflow_client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="customizer-mlmodel-") as scratch:
            local = Path(scratch) / "model"
            mlflow.pyfunc.save_model(
                path=str(local), python_model=str(CODE), artifacts={WEIGHTS: str(folder)}, model_config=model_config,
                signature=signature(), input_example=INPUT_EXAMPLE, pip_requirements=pip_requirements(),
                mlflow_model=Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                                   model_id=model.model_id),
            )
            for cache in local.rglob("__pycache__"):  # importing the code to check it leaves these behind
                shutil.rmtree(cache, ignore_errors=True)
            # MLflow copies the code file with its mode (world-readable in an install); a local artifact
            # store keeps the modes it is given, and the data folder holds nothing others may read.
            make_private(local)
            mlflow_client.log_model_artifacts(model.model_id, str(local))
    except BaseException:
        mlflow_client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    mlflow_client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    log.info("Logged %s from run %s as MLflow model %s", folder, run_id, model.model_id)
    return f"models:/{model.model_id}"


def weights_folder(model_dir: str | Path) -> Path:
    """The trained folder inside a downloaded version: the ``weights`` artifact of its MLflow Model.
    A version registered from a plain folder of files (before versions were MLflow Models) is that folder.

    Raises:
        ModelFormatError: an MLflow Model without a ``weights`` artifact.
    """
    # delayed: mlflow is heavy (start-up time)
    from mlflow.models import Model

    model_dir = Path(model_dir)
    if not (model_dir / "MLmodel").is_file():
        return model_dir
    artifacts = (Model.load(str(model_dir)).flavors.get("python_function") or {}).get("artifacts") or {}
    path = (artifacts.get(WEIGHTS) or {}).get("path")
    if not path or not (model_dir / path).is_dir():
        raise ModelFormatError(f"the MLflow Model in {model_dir} has no `{WEIGHTS}` artifact folder (artifacts: {sorted(artifacts) or 'none'})")
    return model_dir / path


def download_weights(settings: Settings, registered_model: str, version: str, dest: str | Path) -> Path:
    """Download a registered version's model into ``dest``; returns the folder of its weights.

    Raises:
        ModelFormatError: the version's model has no weights artifact.
        MlflowException, OSError: the registry or the artifact store could not be read.
    """
    import mlflow.artifacts  # delayed: mlflow is heavy (start-up time)

    location = client(settings).get_model_version_download_uri(registered_model, version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dest), tracking_uri=settings.tracking_uri)
    return weights_folder(local)
