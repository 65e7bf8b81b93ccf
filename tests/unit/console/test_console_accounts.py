"""The console's accounts: roles, scrypt hashes, the users file's errors, ``save_user`` and the
reload that takes a removed user's access away."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from workerpool.console import accounts
from workerpool.console.accounts import (
    ADMIN,
    OPERATOR,
    VIEWER,
    Account,
    Accounts,
    allows,
    hash_password,
    load_users,
    save_user,
    verify_password,
)
from workerpool.core.errors import BadInput

HASH = hash_password("correct horse")  # one hash for every file: scrypt takes tens of ms


def test_roles_nest_admin_over_operator_over_viewer():
    assert allows(ADMIN, OPERATOR) and allows(ADMIN, VIEWER) and allows(OPERATOR, VIEWER)
    assert allows(VIEWER, VIEWER) and allows(ADMIN, ADMIN)
    assert not allows(VIEWER, OPERATOR) and not allows(OPERATOR, ADMIN)
    assert not allows("root", VIEWER) and not allows(ADMIN, "root")


def test_a_hash_describes_itself_and_verifies_only_its_password():
    kind, n, r, p, salt, digest = HASH.split("$")
    assert (kind, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32
    assert verify_password("correct horse", HASH)
    assert not verify_password("correct horsE", HASH)
    assert hash_password("correct horse") != HASH  # a fresh salt each time


@pytest.mark.parametrize("encoded", [
    "", "scrypt", "bcrypt$16384$8$1$c2FsdA==$aGFzaA==", "scrypt$x$8$1$c2FsdA==$aGFzaA==",
    "scrypt$16384$8$1$not base64!$aGFzaA==", "scrypt$16384$8$1$c2FsdA==$c2hvcnQ=",
    "scrypt$1000$8$1$c2FsdA==$" + "A" * 44,  # n not a power of two
    "scrypt$1048576$8$1$c2FsdA==$" + "A" * 44,  # a gigabyte per verification
    "scrypt$16384$8$1$c2FsdA==$" + "A" * 44 + "$extra",
])
def test_a_malformed_hash_verifies_nothing_and_raises_nothing(encoded: str):
    assert verify_password("correct horse", encoded) is False


def test_a_password_that_is_not_utf8_is_refused_not_raised():
    assert verify_password("\udcff", HASH) is False


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_the_users_file_skips_comments_and_blank_lines(tmp_path: Path):
    path = write(tmp_path / "users", "# the console's users", "", "alice:admin:" + HASH,
                 "   ", "  # bob reads", "bob.b@example-1:viewer:" + HASH)
    assert load_users(path) == {"alice": Account("alice", ADMIN, HASH),
                                "bob.b@example-1": Account("bob.b@example-1", VIEWER, HASH)}


@pytest.mark.parametrize(("line", "message"), [
    ("alice:root:{h}", "line 2: unknown role 'root' for 'alice'; use one of viewer, operator, "
                       "admin"),
    ("al ice:admin:{h}", "line 2: bad user name 'al ice'; use 1-64 letters, digits and _ . @ -"),
    ("a" * 65 + ":admin:{h}", f"line 2: bad user name '{'a' * 65}'; use 1-64 letters, digits "
                              "and _ . @ -"),
    ("alice:admin:scrypt$1$2", "line 2: the password hash of 'alice' is malformed; set the "
                               "password again with `workerpool console-user alice --role "
                               "admin`"),
    ("alice:admin", "line 2: expected name:role:hash, found 2 field(s); write one account per "
                    "line (workerpool console-user writes them)"),
    ("bob:viewer:{h}", "line 2: user 'bob' is already on line 1; keep one line per user"),
])
def test_a_malformed_users_file_names_the_file_line_and_fix(tmp_path: Path, line: str,
                                                            message: str):
    path = write(tmp_path / "users", "bob:operator:" + HASH, line.format(h=HASH))
    with pytest.raises(BadInput) as caught:
        load_users(path)
    assert str(caught.value) == f"{path} {message}"


def test_a_missing_or_unreadable_users_file_says_how_to_fix_it(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(BadInput) as caught:
        load_users(missing)
    assert str(caught.value) == (f"console users file {missing} does not exist; create it with "
                                 f"`workerpool console-user NAME --role ROLE --file {missing}`")
    with pytest.raises(BadInput) as caught:
        load_users(tmp_path)  # a folder
    assert str(caught.value) == (f"cannot read console users file {tmp_path}: Is a directory; "
                                 "make it a text file this user can read (workerpool "
                                 "console-user writes one)")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(BadInput, match="it is not UTF-8 text"):
        load_users(binary)


def test_save_user_creates_the_file_with_mode_0600(tmp_path: Path):
    path = tmp_path / "users"
    save_user(path, "alice", ADMIN, "first password")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = load_users(path)
    assert list(users) == ["alice"] and users["alice"].role == ADMIN
    assert verify_password("first password", users["alice"].password_hash)
    assert [p.name for p in tmp_path.iterdir()] == ["users"]  # no temporary file left


def test_save_user_replaces_its_line_and_keeps_the_others(tmp_path: Path):
    path = write(tmp_path / "users", "# operators", "bob:operator:" + HASH, "",
                 "alice:viewer:" + HASH, "# the end")
    os.chmod(path, 0o644)
    save_user(path, "alice", OPERATOR, "second password")
    lines = path.read_text().splitlines()
    assert lines[:3] == ["# operators", "bob:operator:" + HASH, ""]
    assert lines[3].startswith("alice:operator:scrypt$") and lines[4] == "# the end"
    assert len(lines) == 5
    assert verify_password("second password", load_users(path)["alice"].password_hash)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    save_user(path, "carol", VIEWER, "third password")
    assert path.read_text().splitlines()[-1].startswith("carol:viewer:")


@pytest.mark.parametrize(("name", "role", "password", "message"), [
    ("bad name", VIEWER, "long enough", "bad user name 'bad name': use 1-64 letters, digits "
                                         "and _ . @ -"),
    ("alice", "root", "long enough", "unknown role 'root': use one of viewer, operator, admin"),
    ("alice", VIEWER, "short", "the password is too short: use at least 8 characters"),
])
def test_save_user_refuses_bad_input_and_writes_nothing(tmp_path: Path, name: str, role: str,
                                                        password: str, message: str):
    with pytest.raises(BadInput) as caught:
        save_user(tmp_path / "users", name, role, password)
    assert str(caught.value) == message
    assert not (tmp_path / "users").exists()


def test_save_user_into_a_missing_folder_is_one_line(tmp_path: Path):
    with pytest.raises(BadInput) as caught:
        save_user(tmp_path / "no" / "users", "alice", VIEWER, "long enough")
    assert str(caught.value) == (f"cannot write console users file {tmp_path / 'no' / 'users'}: "
                                 "No such file or directory; check that its folder exists and "
                                 "is writable")


def test_accounts_authenticate_and_follow_the_file(tmp_path: Path):
    path = write(tmp_path / "users", "alice:admin:" + HASH, "bob:viewer:" + HASH)
    held = Accounts(path)
    assert held.authenticate("alice", "correct horse") == Account("alice", ADMIN, HASH)
    assert held.authenticate("alice", "wrong") is None
    assert held.authenticate("nobody", "correct horse") is None
    write(path, "alice:admin:" + HASH)  # bob removed
    assert held.get("bob") is None and held.get("alice") is not None
    save_user(path, "bob", OPERATOR, "bob's new password")  # replaced by a rename
    bob = held.get("bob")
    assert bob is not None and bob.role == OPERATOR
    assert held.names() == ["alice", "bob"]


def test_a_users_file_broken_after_start_leaves_no_accounts(tmp_path: Path):
    path = write(tmp_path / "users", "alice:admin:" + HASH)
    held = Accounts(path)
    write(path, "alice:root:" + HASH)
    assert held.get("alice") is None
    assert held.problem == (f"{path} line 1: unknown role 'root' for 'alice'; use one of "
                            "viewer, operator, admin")
    path.unlink()
    assert held.get("alice") is None and held.problem is not None
    write(path, "alice:admin:" + HASH)
    assert held.get("alice") is not None and held.problem is None


def test_a_users_file_that_is_broken_at_start_is_refused(tmp_path: Path):
    with pytest.raises(BadInput, match="does not exist"):
        Accounts(tmp_path / "users")
    with pytest.raises(BadInput, match="does not exist"):
        Accounts.from_file(tmp_path / "users")


def test_the_one_time_admin_is_held_in_memory_only(tmp_path: Path):
    held, password = Accounts.one_time_admin()
    assert len(password) >= 16
    admin = held.authenticate("admin", password)
    assert admin is not None and admin.role == ADMIN and held.path is None
    assert held.authenticate("admin", password + "x") is None
    held.reload_if_changed()  # nothing to reread
    assert held.get("admin") == admin
    assert Accounts.one_time_admin()[1] != password


def test_the_limiter_key_is_hashed_and_bounded():
    key = accounts.login_failures_key("203.0.113.7")
    assert key.startswith("workerpool:console:login-failures:") and "203" not in key
    assert len(accounts.login_failures_key("x" * 10000)) == len(key)
