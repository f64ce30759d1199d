"""The agent's own reading of passwd and group (agent/accounts.py): the entries NSS's files
backend gives, hostile lines skipped, and nothing loaded on the way."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from corral.agent import accounts, users
from corral.agent.accounts import Account, Group


def test_the_hosts_files_read_as_nss_reads_them() -> None:
    for entry in pwd.getpwall():
        found = accounts.user(entry.pw_name)
        assert found == Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)
        by_id = accounts.user_by_id(entry.pw_uid)
        assert by_id is not None and by_id.name == pwd.getpwuid(entry.pw_uid).pw_name
        assert sorted(accounts.group_ids(entry.pw_name, entry.pw_gid)) == sorted(
            set(os.getgrouplist(entry.pw_name, entry.pw_gid)))
    for g in grp.getgrall():
        assert accounts.group(g.gr_name) == Group(g.gr_name, g.gr_gid, tuple(g.gr_mem))
        by_gid = accounts.group_by_id(g.gr_gid)
        assert by_gid is not None and by_gid.name == grp.getgrgid(g.gr_gid).gr_name


def test_malformed_and_compat_lines_are_skipped_and_the_first_entry_wins(tmp_path: Path) -> None:
    passwd, group = str(tmp_path / "passwd"), str(tmp_path / "group")
    (tmp_path / "passwd").write_text("\n".join([
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
    ]) + "\n")
    (tmp_path / "group").write_text(
        "user:x:1000:\nwheel:x:10:user,other\nstaff:x:50:other,user\nbad:x:x:user\nwheel:x:11:user\n")
    assert accounts.user("user", passwd) == Account("user", 1000, 1000, "/home/user", "/bin/bash")
    assert accounts.user_by_id(1000, passwd) == accounts.user("user", passwd)
    dup = accounts.user("dup", passwd)  # a second name for uid 1000: found by name, not by id
    assert dup is not None and dup.gid == 50 and accounts.user_by_id(50, passwd) is None
    for name in ("blocked", "short", "badid", "huge", "neg", "+nisuser", "nisuser"):
        assert accounts.user(name, passwd) is None
    assert accounts.user("caf\xe9", passwd) == Account("caf\xe9", 1002, 1002, "/c", "")
    assert accounts.group_ids("user", 1000, group) == (1000, 10, 50, 11)
    assert accounts.group_ids("user", 10, group) == (10, 50, 11)
    assert accounts.group("wheel", group) == Group("wheel", 10, ("user", "other"))
    assert accounts.group_by_id(11, group) == Group("wheel", 11, ("user",))
    assert accounts.group("bad", group) is None


def test_missing_files_fifos_and_devices_read_as_empty(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # nobody writes to it: a blocking open would hang the agent
    for path in (str(tmp_path / "none"), str(tmp_path / "fifo"), "/dev/zero"):
        assert accounts.user("root", path) is None and accounts.user_by_id(0, path) is None
        assert accounts.group("root", path) is None and accounts.group_ids("root", 7, path) == (7,)


def test_users_resolve_from_the_files_and_fall_back_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "PASSWD", str(tmp_path / "passwd"))
    monkeypatch.setattr(accounts, "GROUP", str(tmp_path / "group"))
    monkeypatch.setattr(users, "ACCOUNT_FILES", (accounts.PASSWD, accounts.GROUP))
    monkeypatch.setattr(users, "_cache", {})
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/zsh\n")
    (tmp_path / "group").write_text("root:x:0:\nalice:x:1000:\ndocker:x:999:alice\n")
    assert users.resolve_user("user") == users.User("alice", 1000, 1000, "/home/alice", "/bin/zsh", (1000, 999))
    assert users.resolve_user("1000").name == "alice"
    assert users.resolve_user("root").groups == (0,)
    assert users.resolve_user("4321").uid == 4321  # a number with no entry: as Docker allows
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/bash\n")  # alice is gone: the cache sees it
    assert users.resolve_user("user").home == "/home/user"
    with pytest.raises(users.AgentError):
        users.resolve_user("alice")
