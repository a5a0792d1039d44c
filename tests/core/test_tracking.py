"""Jobs that start at once share the MLflow experiment whichever of them creates it."""

from __future__ import annotations

from core.settings import Settings
from core import tracking


def test_a_job_that_loses_the_race_to_create_the_experiment_uses_it(tmp_path):
    settings = Settings(data_dir=tmp_path)
    real = tracking.client(settings)
    created = tracking._experiment_id(real, settings)  # the other job, a moment earlier

    class Late:
        """Looked before the other job created the experiment, creates after it did."""

        def __init__(self):
            self.looked = False

        def get_experiment_by_name(self, name):
            if not self.looked:
                self.looked = True
                return None
            return real.get_experiment_by_name(name)

        def create_experiment(self, *args, **kwargs):
            return real.create_experiment(*args, **kwargs)

    assert tracking._experiment_id(Late(), settings) == created
