"""The names of the MLflow tags customizer writes and reads, on a job's run and on a registered model
version. One module, so a writer and its readers cannot drift apart; the values are the wire
contract (runs and versions already in a registry carry them).

>>> CONFIG
'customizer.config'
>>> approval("training")
'customizer.approval.training'
"""

# A job's run (and the version registered from it).
JOB_ID = "customizer.job_id"
FLOW_RUN_ID = "customizer.flow_run_id"
KIND = "customizer.kind"  # "evaluation" for evaluation jobs
CODE_VERSION = "customizer.code_version"
CONFIG = "customizer.config"
OUTPUT_MODEL = "customizer.output_model"
SPEC = "customizer.spec"
HYPERPARAMETERS = "customizer.hyperparameters"
TRAINING_TYPE = "customizer.training_type"
FINETUNING_TYPE = "customizer.finetuning_type"
BASE_MODEL = "customizer.base_model"
BASE_MODEL_DIGEST = "customizer.base_model.digest"
DATASET_URI = "customizer.dataset.uri"
DATASET_SHA256 = "customizer.dataset.sha256"
REPLAY_SOURCE = "customizer.replay.source"
REPLAY_EXAMPLES = "customizer.replay.examples"
REPLAY_SHA256 = "customizer.replay.sha256"
REPLAY_PROMPTS_SHA256 = "customizer.replay.prompts_sha256"
POLICY = "customizer.policy"
WARNINGS = "customizer.warnings"
PROGRESS = "customizer.progress"
STOP_REASON = "customizer.stop_reason"
TRAINING_PRECISION = "customizer.training_precision"  # what training ran in (a config's `auto` resolved)
FAILURE = "customizer.failure"
POWER = "customizer.power"
FORGETTING = "customizer.forgetting"
SCORES_BASELINE = "customizer.scores.baseline"
SCORES_CANDIDATE = "customizer.scores.candidate"
TASK_METRIC = "customizer.task_metric"
BENCHMARK_VERSIONS = "customizer.benchmark_versions"
DECISION = "customizer.decision"
DECISION_REASONS = "customizer.decision.reasons"
# The platform's signature (core.secrets.sign) of a version's decision, its approvals, its run and
# ARTIFACT_SHA256: only a version whose signature matches can be trusted as champion (deploy.trust).
DECISION_SIGNATURE = "customizer.decision.signature"
ARTIFACT_SHA256 = "customizer.artifact.sha256"  # digest of the published files' sha256 (deploy.trust.files_digest)
ARTIFACT = "customizer.artifact"  # "adapter" or the weights' kind
AUDIT = "customizer.audit"  # on a version: its job's audit trail, one line per record (core.audit.summary)

# Publication and serving.
PUBLISHED_URI = "customizer.published_uri"
SERVING_CHECK = "customizer.serving_check"
SERVING_ENDPOINT = "customizer.serving.endpoint"
SERVING_LIVE_AS = "customizer.serving.live_as"
SERVING_WARNING = "customizer.serving.warning"


def approval(stage: str) -> str:
    """The tag of a stage's approval record (``training`` or ``promotion``)."""
    return f"customizer.approval.{stage}"
