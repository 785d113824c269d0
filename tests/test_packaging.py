"""The built wheel in a fresh venv, beside a user project that has its own top-level ``server`` package
(issue 9, part 1). Before the package was named ``presence_server``, the wheel installed ``server`` and its
``pytest11`` entry point named ``server.pytest_plugin``: the user's ``server/`` (first on ``sys.path`` under
``python -m pytest``) shadowed it, and pytest stopped with ``Error while loading plugin "pytest11"``.

Installing the runtime dependencies from PyPI into the fresh venv would take a minute, so the venv gets the
wheel alone (``--no-deps``) and a ``.pth`` file that lends it the dependencies of the environment running this
test: a view of that environment's site-packages without anything of our own distribution in it (the editable
install's finder, its ``.pth`` and its metadata). A directory named in a ``.pth`` file is only appended to
``sys.path``; ``.pth`` files inside it are not run, so nothing there can bring back the editable install.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "pubnub-presence-server"
# What a build of the wheel reads: setuptools finds the package, the readme and the licence from these.
SOURCES = ("pyproject.toml", "README.md", "presence_server")

# The user's own code: a top-level package named ``server``, as many projects have.
USER_PACKAGE = """
    def greet(name: str) -> str:
        return f"hello {name}"
"""

# The user's tests: their ``server`` is theirs, and our fixture works, served by the package from the wheel.
USER_TESTS = """
    import json
    import sys
    import urllib.request
    from pathlib import Path

    import presence_server.pytest_plugin as plugin
    import server


    def get(url):
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.status == 200
            return json.loads(reply.read())


    def test_their_server_package_is_their_own():
        assert Path(server.__file__).resolve() == Path(__file__).resolve().parent.parent / "server" / "__init__.py"
        assert server.greet("alice") == "hello alice"


    def test_presence_server_comes_from_the_installed_wheel():
        assert Path(plugin.__file__).resolve().is_relative_to(Path(sys.prefix).resolve())


    def test_the_presence_server_fixture_serves_them(presence_server):
        base = presence_server.url + "/v2/presence/sub-key/demo/channel/lobby"
        assert get(base + "/heartbeat?uuid=alice")["status"] == 200
        assert get(base)["occupancy"] == 1
        assert presence_server.advance(presence_server.settings.default_timeout + 1) == 1
        assert get(base)["occupancy"] == 0
"""


def clean_env() -> dict[str, str]:
    """This process's environment without what would leak this project or this test run into the child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON")) and k != "VIRTUAL_ENV"}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run(args: list[str | Path], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def build_wheel(source: Path, work: Path) -> Path:
    """A wheel built from a copy of ``source`` (setuptools writes ``build/`` and egg-info into the tree it builds)."""
    tree = work / "source"
    tree.mkdir(parents=True)
    for name in SOURCES:
        if (source / name).is_dir():
            shutil.copytree(source / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source / name, tree / name)
    for licence in source.glob("LICEN[CS]E*"):
        shutil.copy(licence, tree / licence.name)
    dist = work / "dist"
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, tree], cwd=work, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("*.whl")
    return wheel


def lent_site_packages(view: Path) -> Path:
    """A directory of links to this environment's site-packages, less our own distribution's files."""
    sources = dict.fromkeys(Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib"))
    ours = {
        Path(str(file)).parts[0]
        for dist in importlib.metadata.distributions(path=[str(p) for p in sources])
        if dist.metadata["Name"].lower().replace("_", "-") == DISTRIBUTION
        for file in dist.files or ()
    }
    view.mkdir()
    for site_packages in sources:
        for entry in site_packages.iterdir():
            if entry.name in ours or entry.suffix == ".pth" or (view / entry.name).exists():
                continue
            (view / entry.name).symlink_to(entry)
    # Nothing left in the view may import ``presence_server`` or ``server``: only the wheel and the user may.
    assert not [name for name in os.listdir(view) if name.split(".")[0] in ("presence_server", "server")]
    return view


def fresh_venv(where: Path, wheel: Path, lend: Path) -> Path:
    """A venv without pip, with the wheel installed by this environment's pip and ``lend`` appended to its path."""
    venv.create(where, with_pip=False, symlinks=True)
    python = where / "bin" / "python"
    site_packages = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=where)
    assert site_packages.returncode == 0, site_packages.stderr
    Path(site_packages.stdout.strip(), "lent-dependencies.pth").write_text(f"{lend}\n")
    installed = run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        cwd=where,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


def user_project(root: Path) -> Path:
    (root / "server").mkdir(parents=True)
    (root / "server" / "__init__.py").write_text(textwrap.dedent(USER_PACKAGE))
    (root / "tests").mkdir()
    (root / "tests" / "test_users.py").write_text(textwrap.dedent(USER_TESTS))
    (root / "pyproject.toml").write_text(
        '[project]\nname = "user-app"\nversion = "1.0"\n\n'
        '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n'
    )
    return root


def users_pytest(source: Path, work: Path) -> subprocess.CompletedProcess[str]:
    """The user's ``python -m pytest``, in their project, with a wheel built from ``source`` installed."""
    wheel = build_wheel(source, work / "build")
    python = fresh_venv(work / "venv", wheel, lent_site_packages(work / "lent"))
    project = user_project(work / "project")
    return run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project)


def test_users_own_server_package_and_the_fixture_coexist(tmp_path: Path) -> None:
    result = users_pytest(ROOT, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "3 passed" in result.stdout, output
