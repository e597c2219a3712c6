"""The test lab itself: without MariaDB it must fail loudly, never skip quietly."""

import pytest

import mariadb_lab


def test_missing_mariadb_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(mariadb_lab, "find_binary", lambda name: None)
    with pytest.raises(mariadb_lab.LabError, match="mariadbd.*apt-get install -y mariadb-server"):
        mariadb_lab.Lab.start()
