"""scripts/setup and scripts/run, run against stand-in commands (apt-get, sudo, id, the
gridapi command): who installs packages, and what is printed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
#: The real commands the scripts use besides those stood in for.
TOOLS = ("bash", "cat", "dirname", "env", "grep", "awk", "ls", "seq", "sort", "tail")


def _stand_in(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the scripts in a checkout whose .venv is a stand-in that succeeds."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("setup", "run"):
        shutil.copy(SCRIPTS / name, repo / "scripts" / name)
    (repo / ".venv" / "bin").mkdir(parents=True)
    _stand_in(repo / ".venv" / "bin" / "python", "exit 0\n")
    _stand_in(repo / ".venv" / "bin" / "gridapi", 'echo "gridapi $*" >> "$LOG"\n')
    return repo


def run_setup(tmp_path: Path, repo: Path, *, uid: int, sudo: bool, installed: bool):  # type: ignore[no-untyped-def]
    """Run scripts/setup as user ``uid`` on a machine with or without sudo, where the
    packages are ``installed`` or not; return the process and what ran, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        os.symlink(shutil.which(tool), bin_dir / tool)
    log = tmp_path / "ran.log"
    _stand_in(bin_dir / "id", f'[ "$1" = -un ] && echo tester || echo {uid}\n')
    _stand_in(bin_dir / "dpkg", f"exit {0 if installed else 1}\n")
    _stand_in(bin_dir / "python3", "exit 0\n")  # ≥ 3.11, venv and ensurepip at hand
    _stand_in(bin_dir / "apt-get", 'echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> "$LOG"\n')
    if sudo:  # as sudo does: the caller's environment is not passed on
        _stand_in(
            bin_dir / "sudo", 'echo "sudo $*" >> "$LOG"; exec env -i PATH="$PATH" LOG="$LOG" "$@"\n'
        )
    result = subprocess.run(
        [shutil.which("bash"), str(repo / "scripts" / "setup")],
        env={"PATH": str(bin_dir), "LOG": str(log), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    ran = log.read_text().splitlines() if log.exists() else []
    return result, ran


def installs(ran: list[str]) -> list[str]:
    return [line for line in ran if line.startswith("apt-get install")]


def test_setup_as_root_installs_without_sudo(tmp_path, checkout):
    """As root the packages are installed directly: no sudo is needed, or asked for."""
    result, ran = run_setup(tmp_path, checkout, uid=0, sudo=False, installed=False)
    assert result.returncode == 0, result.stderr
    assert not [line for line in ran if line.startswith("sudo")]
    (install,) = installs(ran)
    assert "libsqlite3-mod-spatialite" in install
    assert install.endswith("DEBIAN_FRONTEND=noninteractive")


def test_setup_as_a_user_installs_through_sudo_without_prompts(tmp_path, checkout):
    """sudo resets the environment: DEBIAN_FRONTEND set before it never reached apt-get,
    which could then stop to ask questions."""
    result, ran = run_setup(tmp_path, checkout, uid=1000, sudo=True, installed=False)
    assert result.returncode == 0, result.stderr
    (install,) = installs(ran)
    assert "libsqlite3-mod-spatialite" in install
    assert install.endswith("DEBIAN_FRONTEND=noninteractive")
    assert ran[ran.index(install) - 1].startswith("sudo ")


def test_setup_as_a_user_without_sudo_says_what_it_needs(tmp_path, checkout):
    """Not root and no sudo: the script died on 'sudo: command not found'. It says what
    needs root and how to go on, and installs nothing."""
    result, ran = run_setup(tmp_path, checkout, uid=1000, sudo=False, installed=False)
    assert result.returncode == 1
    assert "needs root" in result.stderr and "sudo" in result.stderr
    assert "apt-get install libsqlite3-mod-spatialite" in result.stderr
    assert "command not found" not in result.stderr
    assert installs(ran) == []


def test_setup_as_a_user_without_sudo_needs_none_when_all_is_installed(tmp_path, checkout):
    result, ran = run_setup(tmp_path, checkout, uid=1000, sudo=False, installed=True)
    assert result.returncode == 0, result.stderr
    assert ran == []


@pytest.mark.parametrize("password", [None, "Chosen-Secret-2027"])
def test_run_prints_no_password(tmp_path, checkout, password):
    """The curl hint printed the demo password, and one chosen in GRIDAPI_DEMO_PASSWORD
    (a secret on a shared screen or in a terminal's scrollback) as well."""
    _stand_in(checkout / "scripts" / "setup", "exit 0\n")
    log = tmp_path / "ran.log"
    env = {"PATH": os.environ["PATH"], "LOG": str(log), "GRIDAPI_PORT": "5055"}
    if password:
        env["GRIDAPI_DEMO_PASSWORD"] = password
    result = subprocess.run(
        [shutil.which("bash"), str(checkout / "scripts" / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout + result.stderr
    assert "/api/v1/auth/token" in printed and "5055" in printed
    assert "Gridapi-Demo-2026" not in printed
    assert password is None or password not in printed
    assert log.read_text().splitlines()[-1] == "gridapi serve --port 5055"
