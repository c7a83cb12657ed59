"""base.locks: one holder at a time, a message naming it, and no lock file left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from base.errors import UserError
from base.locks import exclusive, is_locked


def test_one_holder_at_a_time(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    assert not is_locked(lock)
    with exclusive(lock, "busy"):
        assert is_locked(lock)
        with pytest.raises(UserError, match="busy .held by pid"), exclusive(lock, "busy"):
            pass
    assert not is_locked(lock) and not lock.exists()
    with exclusive(lock, "busy"):  # free again
        pass


def test_a_lock_file_left_by_a_killed_holder_is_free(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text("pid 1 on elsewhere\n")
    assert not is_locked(lock)
    with exclusive(lock, "busy"):
        assert is_locked(lock)
