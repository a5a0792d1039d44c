"""Training takes a slot of Prefect's global concurrency limits (all training, and its namespace's),
so scheduled jobs cannot stack GPU work: a job waits for its namespace's slot, then trains."""

import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterState, TaskRunFilterStateType

from core.settings import get_settings
from core import tracking
from tests.flows.test_approvals import start
from tests.flows.test_customize import spec_for

GLOBAL, NAMESPACE = "customizer-training", "customizer-training-team"  # the test's output model is team/ok-bot


def training_task_running(client) -> bool:
    running = client.read_task_runs(task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=["RUNNING"]))))
    return any(run.name.startswith("train-") for run in running)


def test_training_waits_for_a_slot_of_its_namespace(services, ok_dataset):
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GLOBAL, limit=2))
        # Another job of the namespace holds its only slot.
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=NAMESPACE, limit=1, active_slots=1))
        try:
            thread, outcome = start(spec_for(ok_dataset))
            deadline = time.monotonic() + 300
            while not training_task_running(client):
                assert thread.is_alive(), outcome
                assert time.monotonic() < deadline, "the job never reached training"
                time.sleep(0.3)
            time.sleep(5)
            # Still waiting: the slots are taken together, so it holds none of the global limit either.
            assert thread.is_alive() and training_task_running(client)
            assert client.read_global_concurrency_limit_by_name(GLOBAL).active_slots == 0

            released = time.time()
            client.update_global_concurrency_limit(NAMESPACE, GlobalConcurrencyLimitUpdate(active_slots=0))
            thread.join(timeout=600)
            result = outcome["result"]
            assert result.decision.action == "promote", outcome
            # Not one training step before the slot was free.
            steps = tracking.client(get_settings()).get_metric_history(result.mlflow_run_id, "train_loss")
            assert steps and min(m.timestamp for m in steps) / 1000 > released
            # Both slots were given back when training ended.
            assert client.read_global_concurrency_limit_by_name(GLOBAL).active_slots == 0
            assert client.read_global_concurrency_limit_by_name(NAMESPACE).active_slots == 0
        finally:
            client.delete_global_concurrency_limit_by_name(GLOBAL)
            client.delete_global_concurrency_limit_by_name(NAMESPACE)
