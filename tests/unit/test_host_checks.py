"""Start-up checks explain what is missing instead of failing obscurely."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.api.server import serve
from corral.config import Settings
from corral.runtime import host


def test_non_root_start_says_it_needs_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as stopped:
        serve(Settings(data_dir=tmp_path))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "must run as root" in err and "sudo" in err and "Traceback" not in err


def test_missing_tools_and_kernel_features_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.shutil, "which", lambda tool: None if tool == "bwrap" else f"/usr/bin/{tool}")
    real_read = Path.read_text

    def fake_read(path: Path, *args: object, **kwargs: object) -> str:
        if str(path) == "/proc/filesystems":
            return "nodev\tproc\n\text4\n"
        if str(path) == "/proc/sys/user/max_user_namespaces":
            return "0\n"
        return real_read(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", fake_read)
    with pytest.raises(host.HostUnsupported) as failed:
        host.check_host()
    message = str(failed.value)
    assert "bubblewrap" in message and "overlayfs" in message and "user namespaces are disabled" in message
