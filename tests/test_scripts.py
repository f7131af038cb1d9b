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
TOOLS = ("bash", "cat", "chmod", "dirname", "env", "grep", "awk", "ls", "seq", "sort", "tail")


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


def run_setup(  # type: ignore[no-untyped-def]
    tmp_path: Path,
    repo: Path,
    *,
    uid: int,
    sudo: bool,
    installed: bool,
    args: tuple[str, ...] = (),
    commands: dict[str, str] | None = None,
):
    """Run scripts/setup (with ``args``) as user ``uid`` on a machine with or without sudo,
    where the packages are ``installed`` or not, with ``commands`` (name: script body) stood
    in too; return the process and what ran, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (commands or {}).items():
        _stand_in(bin_dir / name, body)
    for tool in TOOLS:
        os.symlink(shutil.which(tool), bin_dir / tool)
    log = tmp_path / "ran.log"
    _stand_in(bin_dir / "id", f'[ "$1" = -un ] && echo tester || echo {uid}\n')
    _stand_in(bin_dir / "dpkg", f"exit {0 if installed else 1}\n")
    _stand_in(bin_dir / "python3", "exit 0\n")  # ≥ 3.11, venv and ensurepip at hand
    if not (bin_dir / "apt-get").exists():
        _stand_in(
            bin_dir / "apt-get", 'echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> "$LOG"\n'
        )
    if sudo:  # as sudo does: the caller's environment is not passed on
        _stand_in(
            bin_dir / "sudo", 'echo "sudo $*" >> "$LOG"; exec env -i PATH="$PATH" LOG="$LOG" "$@"\n'
        )
    result = subprocess.run(
        [shutil.which("bash"), str(repo / "scripts" / "setup"), *args],
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


def _readme_postgis_package() -> str:
    """The PostGIS package the README's PostgreSQL section tells to install."""
    readme = (SCRIPTS.parent / "README.md").read_text()
    section = readme.split("## Running on PostgreSQL + PostGIS", 1)[1]
    line = next(line for line in section.splitlines() if "apt-get install" in line)
    (package,) = [word for word in line.split() if "postgis" in word]
    return package


#: A machine without PostgreSQL: installing it (apt-get) brings pg_lsclusters, which shows
#: a cluster 15 not started; the other PostgreSQL commands log how they were called.
_NO_POSTGRESQL = {
    "apt-get": (
        'echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> "$LOG"\n'
        'if [[ " $* " == *" postgresql "* ]]; then\n'
        "  printf '#!/bin/bash\\necho \"15 main 5432 down postgres /var/lib/x /var/log/x\"\\n'"
        ' > "$(dirname "$0")/pg_lsclusters"; chmod +x "$(dirname "$0")/pg_lsclusters"\n'
        "fi\n"
    ),
    "pg_ctlcluster": 'echo "pg_ctlcluster $*" >> "$LOG"\n',
    "pg_isready": "exit 0\n",
    "psql": 'echo "psql $*" >> "$LOG"; [ "$1" = -q ]\n',  # no role yet for this user
    "runuser": 'echo "runuser $*" >> "$LOG"; shift 3; "$@"\n',
}


def test_setup_postgis_installs_the_packages_the_readme_names(tmp_path, checkout):
    """``--postgis`` on a machine without PostgreSQL: the packages the README tells to
    install, the cluster started, a role for this user; nothing of it without the option."""
    result, ran = run_setup(
        tmp_path,
        checkout,
        uid=0,
        sudo=False,
        installed=False,
        args=("--postgis",),
        commands=_NO_POSTGRESQL,
    )
    assert result.returncode == 0, result.stderr
    packages = [word for line in installs(ran) for word in line.split()[2:-1] if word[0] != "-"]
    assert packages == ["libsqlite3-mod-spatialite", "postgresql", _readme_postgis_package()]
    assert "pg_ctlcluster --skip-systemctl-redirect 15 main start" in ran
    assert 'runuser -u postgres -- psql -q -c CREATE ROLE "tester" SUPERUSER LOGIN' in ran


def test_setup_refuses_an_option_it_does_not_know(tmp_path, checkout):
    """``--postgres`` (or any other typo) was ignored: the script set up SQLite alone and
    said it had succeeded."""
    result, ran = run_setup(
        tmp_path,
        checkout,
        uid=0,
        sudo=False,
        installed=False,
        args=("--postgres",),
        commands=_NO_POSTGRESQL,
    )
    assert result.returncode == 2
    assert "--postgres" in result.stderr and "--postgis" in result.stderr
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
