"""The frontend's image stays small only while no module of the package pulls in the model's stack."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "torchvision", "transformers", "backend_python", "av")  # av: the model decodes videos

# A fresh interpreter imports every module of the package and builds the app, then names each
# heavy top-level package that anything on the way loaded (a submodule counts for its package).
SCRIPT = f"""
import importlib, pkgutil, sys
import frontend
modules = [m.name for m in pkgutil.walk_packages(frontend.__path__, "frontend.")]
for name in modules:
    importlib.import_module(name)
from frontend.app import create_app
create_app()
loaded = {{name.split(".")[0] for name in sys.modules}}
print(len(modules))
print(",".join(sorted(loaded & set({HEAVY!r}))))
"""


def test_importing_every_frontend_module_and_building_the_app_loads_no_model_stack():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert result.returncode == 0, result.stderr
    count, heavy = result.stdout.splitlines()[-2:]
    assert int(count) >= 10, f"only {count} frontend modules found: the walk missed the package"
    assert heavy == "", f"the frontend imported {heavy}"
