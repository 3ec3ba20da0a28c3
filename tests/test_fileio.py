import os
import stat

import pytest

from kalahash.fileio import atomic_path, atomic_write_text


def test_atomic_write_replaces_whole_with_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    atomic_write_text(path, "a,b\n1,2\n")
    atomic_write_text(path, "a,b\n3,4\n")
    assert path.read_text() == "a,b\n3,4\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["table.csv"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("half a fi")
        raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_a_replaced_file_keeps_its_mode(tmp_path):
    """A table made read-only (or private) stays so after an atomic rewrite, not the default mode."""
    path = tmp_path / "results.csv"
    for mode in (0o444, 0o600):
        path.write_text("a\n")
        path.chmod(mode)
        atomic_write_text(path, "a\n1\n")
        assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text() == "a\n1\n"
