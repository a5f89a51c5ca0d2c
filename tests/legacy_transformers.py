"""An isolated venv with the StreetVision subnet's pinned transformers (4.45.2), for serving-compatibility tests.

The subnet's stock miner runs `transformers ~4.45.0`; the project runs transformers 5. Tests that must prove an
exported folder loads in the miner's environment run code in this venv: no system site-packages, no project
package, only torch/torchvision (the versions installed here), transformers 4.45.2 and Pillow.

The venv is built once (about 2 minutes) under ``~/.cache/roadwork/`` (or ``$ROADWORK_LEGACY_VENV_DIR``), in a
folder named by a hash of its requirements, so a change of requirements builds a new one and reruns are quick.

    python tests/legacy_transformers.py        # build (or find) it and print its python
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path


LEGACY_TRANSFORMERS_VERSION = "4.45.2"


def legacy_requirements() -> list[str]:
    """torch/torchvision as installed here (fast image processors in 4.45 need torchvision), transformers 4.45.2."""
    import torch
    import torchvision

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        f"transformers=={LEGACY_TRANSFORMERS_VERSION}",
        "pillow",
    ]


def legacy_venv_dir(requirements: list[str] | None = None) -> Path:
    requirements = requirements or legacy_requirements()
    key = hashlib.sha256("\n".join([sys.version.split()[0], *requirements]).encode()).hexdigest()[:12]
    root = Path(os.environ.get("ROADWORK_LEGACY_VENV_DIR", Path.home() / ".cache" / "roadwork"))
    return root / f"tf445-venv-{key}"


def _python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_legacy_venv(requirements: list[str] | None = None) -> Path:
    """The python of a venv with `requirements` installed; built on first use, reused while the marker is there."""
    requirements = requirements or legacy_requirements()
    venv_dir = legacy_venv_dir(requirements)
    marker = venv_dir / "requirements.done"
    python = _python(venv_dir)
    if marker.exists() and python.exists():
        return python
    # A half-built venv (interrupted install) is rebuilt from scratch.
    venv.EnvBuilder(clear=True, with_pip=True, system_site_packages=False).create(venv_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
        check=True, env=env,
    )  # fmt: skip
    marker.write_text("\n".join(requirements) + "\n")
    return python


__all__ = ["LEGACY_TRANSFORMERS_VERSION", "ensure_legacy_venv", "legacy_requirements", "legacy_venv_dir"]


if __name__ == "__main__":
    print(ensure_legacy_venv())
