"""The audit trail: append-only on disk, kept across restarts, read by job (joined through flow runs),
model and action, and failing loudly when it cannot be written."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from core import audit
from core.settings import Settings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path)


def _db_file(settings: Settings) -> Path:
    return Path(settings.api_db_url.removeprefix("sqlite:///"))


def test_records_cannot_be_changed_or_deleted(settings):
    kept = audit.record(settings, "model.promoted", "customizer", job="cust-1", model="team/bot@2",
                        before={"champion": "1"}, after={"champion": "2"}, detail="team/bot@2 is the champion")
    with sqlite3.connect(_db_file(settings)) as conn:  # straight to the database, around the module
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit SET principal = 'mallory' WHERE id = ?", (kept["id"],))
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit")
    (found,) = audit.records(settings)
    assert found["principal"] == "customizer" and found["before"] == {"champion": "1"} and found["after"] == {"champion": "2"}


def test_records_survive_a_restart(settings):
    audit.record(settings, "job.created", "alice", job="cust-9", flow_run="run-9", namespace="team-a")
    audit.record(settings, "gate.decided", "customizer", job="cust-run-9", flow_run="run-9", model="team-a/bot",
                 after={"action": "promote", "reasons": ["task: passed"]})
    # A new process opens its own engine on the same database: the restarted API or another worker.
    script = ("import json, sys; from pathlib import Path; from core import audit; from core.settings import Settings; "
              "print(json.dumps(audit.records(Settings(data_dir=Path(sys.argv[1])), job='cust-9')))")
    out = subprocess.run([sys.executable, "-c", script, str(settings.data_dir)], cwd=ROOT, capture_output=True, text=True, check=True)
    read = json.loads(out.stdout)
    assert [(r["action"], r["principal"]) for r in read] == [("job.created", "alice"), ("gate.decided", "customizer")]
    assert read[1]["after"]["reasons"] == ["task: passed"] and read[0]["at"] <= read[1]["at"]


def test_a_job_finds_its_flow_runs_records_and_models_match_with_or_without_a_version(settings):
    audit.record(settings, "job.created", "alice", job="cust-rest", flow_run="run-1", namespace="team-a")
    audit.record(settings, "gate.decided", "customizer", job="cust-flow", flow_run="run-1", model="team-a/bot")
    audit.record(settings, "model.registered", "customizer", job="cust-flow", flow_run="run-1", model="team-a/bot@3")
    audit.record(settings, "model.registered", "customizer", job="cust-other", flow_run="run-2", model="team-a/bot@4")
    audit.record(settings, "model.registered", "customizer", job="cust-x", flow_run="run-3", model="team-a/bot-two@1")

    rest = [r["action"] for r in audit.records(settings, job="cust-rest")]
    assert rest == ["job.created", "gate.decided", "model.registered"]  # the REST id reaches the flow's records
    assert [r["action"] for r in audit.records(settings, job="cust-flow")] == rest  # and the flow's id the REST record
    assert [r["job"] for r in audit.records(settings, job="cust-other")] == ["cust-other"]

    assert [r["model"] for r in audit.records(settings, model="team-a/bot")] == ["team-a/bot", "team-a/bot@3", "team-a/bot@4"]
    assert [r["model"] for r in audit.records(settings, model="team-a/bot@3")] == ["team-a/bot@3"]
    assert len(audit.records(settings, model="team-a/bot", action="model.registered")) == 2
    assert {r["namespace"] for r in audit.records(settings)} == {"team-a"}  # taken from the model where not given
    assert audit.records(settings, namespace="team-b") == []


def test_a_trail_that_cannot_be_written_or_read_raises(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database's folder should be")
    broken = Settings(data_dir=tmp_path, api_database_url=f"sqlite:///{blocker / 'api.db'}")
    with pytest.raises(audit.AuditError, match=r"could not write the audit record gate.decided to sqlite:///.*not-a-folder"):
        audit.record(broken, "gate.decided", "customizer", job="cust-1")
    with pytest.raises(audit.AuditError, match="could not read the audit trail"):
        audit.records(broken, job="cust-1")
    with pytest.raises(ValueError, match="unknown audit action 'model.deleted'"):
        audit.record(Settings(data_dir=tmp_path), "model.deleted", "customizer")


def test_the_summary_keeps_the_newest_lines_within_its_limit(settings):
    for n in range(40):
        audit.record(settings, "alias.moved", "customizer", model="team/bot@1", detail=f"move {n:02d} " + "x" * 40)
    text = audit.summary(audit.records(settings), limit=500)
    assert len(text) <= 500 and text.startswith("...\n") and text.endswith("move 39 " + "x" * 40)
    assert "alias.moved by customizer: move 39" in text and "move 00" not in text


def test_every_alias_move_is_on_record_and_one_that_cannot_be_recorded_is_undone(tmp_path):
    # delayed: the registry brings MLflow (start-up time), which only this test needs
    from core import tracking
    from deploy import registry

    settings = Settings(data_dir=tmp_path)
    run_id = tracking.start_run(settings, "cust-alias", tags={}, params={})
    registry.register_version(settings, "team/bot", "file:///adapter", run_id, {}, job="cust-alias", flow_run="run-7")
    registry.register_version(settings, "team/bot", "file:///adapter", run_id, {})  # already candidate: no move
    registry.promote(settings, "team/bot", "1", principal="ana", job="cust-alias")
    moved = audit.records(settings, action="alias.moved")
    assert [(r["principal"], r["job"], r["model"], r["before"], r["after"]) for r in moved] == [
        ("customizer", "cust-alias", "team/bot@1", {"alias": "candidate", "version": None}, {"alias": "candidate", "version": "1"}),
        ("ana", "cust-alias", "team/bot@1", {"alias": "champion", "version": None}, {"alias": "champion", "version": "1"}),
    ]
    assert moved[0]["flow_run"] == "run-7" and moved[1]["namespace"] == "team"

    # The trail cannot be written: the alias goes back where it was and the error says why.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    broken = Settings(data_dir=tmp_path, api_database_url=f"sqlite:///{blocker / 'audit.db'}")
    second = tracking.start_run(settings, "cust-alias-2", tags={}, params={})
    with pytest.raises(audit.AuditError, match="could not write the audit record alias.moved"):
        registry.register_version(broken, "team/bot", "file:///adapter", second, {})
    assert registry.describe(settings, "team/bot", "1").aliases == ["candidate", "champion"]
    with pytest.raises(audit.AuditError, match="could not write the audit record alias.moved"):
        registry.promote(broken, "team/bot", "2")
    assert registry.champion_version(settings, "team/bot") == "1"
    other = tracking.start_run(settings, "cust-other", tags={}, params={})
    with pytest.raises(audit.AuditError):
        registry.register_version(broken, "team/new", "file:///adapter", other, {})  # no alias before: removed again
    assert "candidate" not in tracking.client(settings).get_registered_model("team.new").aliases
    assert len(audit.records(settings, action="alias.moved")) == 2
