"""An isolated venv with the StreetVision subnet's pinned transformers (4.45.2), for serving-compatibility tests.

The subnet's stock miner runs `transformers ~4.45.0`; the project runs transformers 5. Tests that must prove an
exported folder loads in the miner's environment run code in this venv: transformers 4.45.2 with its own
dependencies (huggingface_hub 0.x, tokenizers, safetensors) and Pillow, installed in the venv, plus the torch and
torchvision already installed in the project's environment. Installing torch again would download it with its CUDA
packages (about 8 minutes here); instead a `.pth` file appends the project environment's site-packages to the
venv's path, after the venv's own, so the venv's transformers 4.45.2 and huggingface_hub shadow the project's
transformers 5 and only what the venv lacks (torch, torchvision, numpy) comes from there. The project's packages
are installed editable through a `.pth` finder, which an appended path does not run: they stay unimportable.

The venv is built once (about half a minute) under ``~/.cache/roadwork/`` (or ``$ROADWORK_LEGACY_VENV_DIR``), in a
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
    """transformers 4.45.2 and Pillow; the key also names the torch/torchvision the venv borrows (fast image
    processors in 4.45 need torchvision), so a torch upgrade builds a new venv."""
    import torch
    import torchvision

    return [
        f"transformers=={LEGACY_TRANSFORMERS_VERSION}",
        "pillow",
        f"# borrowed: torch=={torch.__version__.split('+')[0]} torchvision=={torchvision.__version__.split('+')[0]}",
    ]


def _project_site_packages() -> str:
    import torch

    return str(Path(torch.__file__).resolve().parents[1])


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
    installs = [r for r in requirements if not r.startswith("#")]
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *installs],
        check=True, env=env,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, env=env, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "zz_roadwork_borrowed_torch.pth").write_text(_project_site_packages() + "\n")
    marker.write_text("\n".join(requirements) + "\n")
    return python


__all__ = ["LEGACY_TRANSFORMERS_VERSION", "ensure_legacy_venv", "legacy_requirements", "legacy_venv_dir"]


if __name__ == "__main__":
    print(ensure_legacy_venv())
