"""The agent's own reading of passwd and group (agent/accounts.py): the entries NSS's files
backend gives, hostile lines skipped, and nothing loaded on the way."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from corral.agent import accounts, users
from corral.agent.accounts import Account, Accounts, Group


def write(tmp_path: Path, passwd: str, group: str) -> Accounts:
    (tmp_path / "passwd").write_text(passwd)
    (tmp_path / "group").write_text(group)
    return Accounts(str(tmp_path / "passwd"), str(tmp_path / "group"))


def test_the_hosts_files_read_as_nss_reads_them() -> None:
    mine = Accounts()
    for entry in pwd.getpwall():
        found = mine.user(entry.pw_name)
        assert found == Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)
        assert found.name == pwd.getpwuid(entry.pw_uid).pw_name == mine.user_by_id(entry.pw_uid).name
        assert sorted(mine.group_ids(entry.pw_name, entry.pw_gid)) == sorted(
            set(os.getgrouplist(entry.pw_name, entry.pw_gid)))
    for g in grp.getgrall():
        assert mine.group(g.gr_name) == Group(g.gr_name, g.gr_gid, tuple(g.gr_mem))


def test_malformed_and_compat_lines_are_skipped_and_the_first_entry_wins(tmp_path: Path) -> None:
    mine = write(tmp_path, "\n".join([
        "# a comment",
        "",
        "+nisuser::::::",
        "-blocked:x:5:5::/:/bin/sh",
        "short:x:7:7",
        "badid:x:seven:7::/:/bin/sh",
        "huge:x:99999999999:1::/:/bin/sh",
        "neg:x:-1:1::/:/bin/sh",
        "user:x:1000:1000:U:/home/user:/bin/bash",
        "user:x:1001:1001::/elsewhere:/bin/sh",
        "dup:x:1000:50::/d:/bin/sh",
        "caf\xe9:x:1002:1002::/c:",
    ]) + "\n", "user:x:1000:\nwheel:x:10:user,other\nstaff:x:50:other,user\nbad:x:x:user\nwheel:x:11:user\n")
    assert [a.name for a in mine.accounts] == ["user", "user", "dup", "caf\xe9"]
    assert mine.user("user") == Account("user", 1000, 1000, "/home/user", "/bin/bash")
    assert mine.user_by_id(1000).name == "user"
    for name in ("blocked", "short", "badid", "huge", "neg", "+nisuser", "nisuser"):
        assert mine.user(name) is None
    assert mine.user("caf\xe9").shell == ""
    assert mine.group_ids("user", 1000) == (1000, 10, 50, 11)
    assert mine.group_ids("user", 10) == (10, 50, 11)
    assert mine.group("wheel") == Group("wheel", 10, ("user", "other"))
    assert mine.group_by_id(11).name == "wheel" and mine.group("bad") is None


def test_missing_files_have_no_entries(tmp_path: Path) -> None:
    mine = Accounts(str(tmp_path / "none"), str(tmp_path / "none"))
    assert mine.accounts == [] and mine.groups == [] and mine.user("root") is None


def test_users_resolve_from_the_files_and_fall_back_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "PASSWD", str(tmp_path / "passwd"))
    monkeypatch.setattr(accounts, "GROUP", str(tmp_path / "group"))
    monkeypatch.setattr(users, "ACCOUNT_FILES", (accounts.PASSWD, accounts.GROUP))
    monkeypatch.setattr(users, "_cache", {})
    write(tmp_path, "root:x:0:0::/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/zsh\n",
          "root:x:0:\nalice:x:1000:\ndocker:x:999:alice\n")
    assert users.resolve_user("user") == users.User("alice", 1000, 1000, "/home/alice", "/bin/zsh", (1000, 999))
    assert users.resolve_user("1000").name == "alice"
    assert users.resolve_user("root").groups == (0,)
    assert users.resolve_user("4321").uid == 4321  # a number with no entry: as Docker allows
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/bash\n")  # alice is gone: the cache sees it
    assert users.resolve_user("user").home == "/home/user"
    with pytest.raises(users.AgentError):
        users.resolve_user("alice")


def test_a_fifo_or_device_in_place_of_the_files_reads_as_empty(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # nobody writes to it: a blocking open would hang the agent
    assert Accounts(str(tmp_path / "fifo"), "/dev/zero").accounts == []
    assert Accounts(str(tmp_path / "fifo"), "/dev/zero").groups == []
