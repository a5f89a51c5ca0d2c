"""Shared pytest fixtures and helpers for the roadwork test suite.

Hub (no real Hub is reachable; see DESIGN.md "Hub in tests")
--------------------------------------------------------------
``hub_server`` (session)   A loopback Hub (tests/hub_server.py) on 127.0.0.1:<free port>, shared by the
                           whole session: use ``hub_server.unique_repo_id("name")`` for fresh repo ids.
                           Has ``.endpoint``, ``.token``, ``.username`` and test helpers ``.seed()``,
                           ``.head()``, ``.read()``, ``.files()``, ``.requests``. It changes no global state.
``hub`` (function)         Same server, with the *already imported* huggingface_hub/transformers/peft in
                           this process pointed at it for the duration of one test (env vars + the
                           constants huggingface_hub froze at import, see ``point_hf_client_at``), and an
                           empty per-test download cache. Restored afterwards.
``fresh_python`` (function) ``fresh_python(code, cwd=None, env_extra=None, *, hub=None)`` runs
                           ``python -c code`` in a clean subprocess (PYTHONPATH dropped, temp HF_HOME,
                           offline unless ``hub=`` or ``env_extra["HF_ENDPOINT"]`` is given). This is the
                           most faithful way to run client code: HF_ENDPOINT is set before any import.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest


try:  # tests/ may or may not become a package
    from .hub_server import HubServer
except ImportError:
    from hub_server import HubServer


# ----------------------------------------------------------------------------------------------
# Hub
# ----------------------------------------------------------------------------------------------

# Environment variables a child process must not inherit from ours (caches, endpoint, token, offline).
_HF_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "HUGGING_FACE_", "TRANSFORMERS_")
_PY_ENV_DROP = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")


def _no_proxy(value: str | None) -> str:
    hosts = [h for h in (value or "").split(",") if h]
    for h in ("127.0.0.1", "localhost"):
        if h not in hosts:
            hosts.append(h)
    return ",".join(hosts)


def hub_env(hub: HubServer) -> dict[str, str]:
    """Environment variables that point a *not yet imported* HF client at ``hub``."""
    return {
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": hub.token,
        # The server never offers Xet/LFS; disabling Xet also makes upload_folder take the plain
        # create_commit route (it works with Xet enabled too, see test_hub_server.py).
        "HF_HUB_DISABLE_XET": "1",
        "NO_PROXY": _no_proxy(os.environ.get("NO_PROXY")),
        "no_proxy": _no_proxy(os.environ.get("no_proxy")),
    }


def point_hf_client_at(mp: pytest.MonkeyPatch, hub: HubServer, cache_dir: str | os.PathLike) -> None:
    """Point the huggingface_hub/transformers already imported in *this* process at ``hub``.

    huggingface_hub reads HF_ENDPOINT/HF_HUB_OFFLINE/HF_HOME once, at import, into
    ``huggingface_hub.constants`` (ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE, HF_URL_HOSTS, HF_HUB_OFFLINE,
    HF_HUB_CACHE); every call site reads those module attributes at call time, so patching them
    works. Two objects captured the endpoint on creation and are patched too: the module-level
    ``huggingface_hub.hf_api.api`` (behind ``huggingface_hub.create_repo`` & co) and transformers'
    lazily created shared ``transformers.utils.hub._hf_api``. The token is read from HF_TOKEN at
    call time. Everything is undone when ``mp`` is undone.
    """
    from huggingface_hub import constants
    from huggingface_hub import hf_api as hf_api_module

    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        mp.delenv(key, raising=False)
    for key, value in hub_env(hub).items():
        mp.setenv(key, value)

    cache_dir = str(cache_dir)
    mp.setattr(constants, "ENDPOINT", hub.endpoint)
    mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    mp.setattr(constants, "HF_URL_HOSTS", frozenset(constants.HF_URL_HOSTS | {hub.host, "localhost"}))
    mp.setattr(constants, "HF_HUB_OFFLINE", False)
    mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
    mp.setattr(constants, "HF_HUB_CACHE", cache_dir)
    mp.setattr(hf_api_module.api, "endpoint", hub.endpoint)

    # transformers builds its shared HfApi on first use: drop any existing one (monkeypatch puts
    # it back on undo). One created *during* the test is dropped by ``_reset_transformers_hf_api``.
    if "transformers.utils.hub" in sys.modules:
        mp.setattr(sys.modules["transformers.utils.hub"], "_hf_api", None)


def _reset_transformers_hf_api() -> None:
    module = sys.modules.get("transformers.utils.hub")
    if module is not None:
        module._hf_api = None


@pytest.fixture(scope="session")
def hub_server():
    """Loopback Hub for the whole session (set ROADWORK_TEST_HUB_LOG=1 to log requests)."""
    with HubServer() as server:
        yield server


@pytest.fixture
def hub(hub_server, tmp_path):
    """``hub_server``, with this process's HF client pointed at it for one test (see module doc)."""
    with pytest.MonkeyPatch.context() as mp:
        point_hf_client_at(mp, hub_server, tmp_path / "hf_hub_cache")
        try:
            yield hub_server
        finally:
            _reset_transformers_hf_api()  # one created during the test points at the hub


# ----------------------------------------------------------------------------------------------
# Subprocesses
# ----------------------------------------------------------------------------------------------


def run_fresh_python(
    code: str,
    cwd: str | os.PathLike | None = None,
    env_extra: dict[str, str | None] | None = None,
    *,
    hub: HubServer | None = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run ``python -c <dedented code>`` in a clean interpreter; return the CompletedProcess (text).

    * cwd: a fresh temp dir unless given; PYTHONPATH & co removed. The project is installed editable, so
      tests that must not import it prepend roadwork_testing.BLOCK_PROJECT_IMPORTS.
    * HF_*/TRANSFORMERS_* variables of this process are dropped; HF_HOME is a fresh temp dir.
    * Offline (HF_HUB_OFFLINE=TRANSFORMERS_OFFLINE=HF_DATASETS_OFFLINE=1) unless ``hub`` is given
      (then HF_ENDPOINT/HF_TOKEN/HF_HUB_DISABLE_XET point at it) or env_extra sets HF_ENDPOINT.
    * env_extra is applied last; a value of None removes the variable.
    * check=True raises AssertionError with stdout/stderr when the exit status is not 0.
    """
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="roadwork-fresh-")))
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_HF_ENV_PREFIXES) and k not in _PY_ENV_DROP
        }
        env.update(
            HF_HOME=str(tmp / "hf_home"),
            HF_HUB_DISABLE_TELEMETRY="1",
            PYTHONDONTWRITEBYTECODE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        env.setdefault("OMP_NUM_THREADS", "1")  # CPU cores are shared
        if hub is not None:
            env.update(hub_env(hub))
        elif not (env_extra and env_extra.get("HF_ENDPOINT")):
            env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        for key, value in (env_extra or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        run_dir = Path(cwd) if cwd is not None else tmp / "cwd"
        run_dir.mkdir(parents=True, exist_ok=True)
        code = textwrap.dedent(code)
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=run_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"fresh python exited with {proc.returncode}\n--- code ---\n{code}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def fresh_python():
    """The ``run_fresh_python`` helper: ``fresh_python(code, cwd=None, env_extra=None, *, hub=None)``."""
    return run_fresh_python
