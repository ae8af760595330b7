"""Optional packages: the pip extra of ddrl that brings each, and the one-line error when one is missing.

The first command's venv (requirements.txt) holds what training classic-control and MuJoCo envs needs; Atari,
MinAtar, EnvPool, MLflow, plots, GIFs, Spark Connect, notebooks and venv-pack are extras (pyproject.toml), all of
them in requirements-test.txt.  Whatever needs one imports it where it is used, through ``require``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ddrl.config import ConfigError

EXTRAS = {
    "ale_py": "atari", "cv2": "atari", "minatar": "minatar", "envpool": "envpool", "mlflow": "mlflow",
    "matplotlib": "plots", "PIL": "plots", "pygame": "render", "venv_pack": "cluster", "grpc": "connect",
    "pandas": "connect", "nbclient": "notebooks", "mujoco": "mujoco", "pyspark": "spark",
}
"""Top-level module to the extra (``pip install 'ddrl[EXTRA]'``) that installs it."""


def install_hint(module: str) -> str:
    """How to install what brings ``module``."""
    extra = EXTRAS.get(module.split(".")[0])
    if extra is None:
        return f"pip install {module.split('.')[0]}"
    return f"pip install 'ddrl[{extra}]' (in a clone: .venv/bin/pip install -e '.[{extra}]')"


def missing(module: str, needed_for: str) -> str:
    """The one line for ``needed_for`` (a config field or a feature) when ``module`` cannot be imported."""
    return f"{needed_for}: needs {module.split('.')[0]!r}, which is not installed: {install_hint(module)}"


def missing_extra(error: BaseException, needed_for: str) -> ConfigError | None:
    """``missing``'s line as a ``ConfigError`` when ``error`` is the import of a package an extra brings, else None."""
    name = getattr(error, "name", None) if isinstance(error, ImportError) else None
    if name is None or name.split(".")[0] not in EXTRAS:
        return None
    return ConfigError(missing(name, needed_for))


def require(module: str, needed_for: str) -> ModuleType:
    """``module``, imported; ``ConfigError`` with ``missing``'s line when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if (error.name or module).split(".")[0] != module.split(".")[0]:
            raise  # the package is there but something it imports is not: that error says more
        raise ConfigError(missing(module, needed_for)) from None
