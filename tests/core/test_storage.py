"""The private data folder (``core.storage``): what is created after ``private_umask`` is the user's
alone, and ``make_private`` takes group and other bits off an existing tree without following links."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from core.storage import NotPrivate, make_private, private_umask

pytestmark = pytest.mark.unit


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def restored_umask():
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


def test_what_is_created_after_private_umask_is_the_users_alone(tmp_path, restored_umask):
    os.umask(0o022)
    (tmp_path / "before.db").write_text("x")
    private_umask()
    (tmp_path / "after.db").write_text("x")
    (tmp_path / "jobs").mkdir()
    assert _mode(tmp_path / "before.db") == 0o644  # the umask was really open before
    assert _mode(tmp_path / "after.db") == 0o600 and _mode(tmp_path / "jobs") == 0o700


def test_an_open_tree_is_tightened_and_links_are_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    outside.chmod(0o644)
    root = tmp_path / "data"
    (root / "mlflow" / "artifacts").mkdir(parents=True)
    (root / "mlflow" / "mlflow.db").write_text("x")
    (root / "mlflow" / "run.sh").write_text("x")
    (root / "mlflow" / "mlflow.db").chmod(0o644)
    (root / "mlflow" / "run.sh").chmod(0o775)
    for folder in (root, root / "mlflow", root / "mlflow" / "artifacts"):
        folder.chmod(0o755)
    (root / "mlflow" / "link").symlink_to(outside)

    make_private(root)

    assert _mode(root) == 0o700 and _mode(root / "mlflow") == 0o700 and _mode(root / "mlflow" / "artifacts") == 0o700
    assert _mode(root / "mlflow" / "mlflow.db") == 0o600 and _mode(root / "mlflow" / "run.sh") == 0o700  # owner bits kept
    assert _mode(outside) == 0o644  # the link's target is not the data folder's


def test_a_missing_data_folder_is_created_private(tmp_path):
    make_private(tmp_path / "new" / "data")
    assert _mode(tmp_path / "new" / "data") == 0o700


def test_the_home_folder_is_never_taken_for_a_data_folder():
    with pytest.raises(NotPrivate, match="folder of its own"):
        make_private(Path.home().resolve())
