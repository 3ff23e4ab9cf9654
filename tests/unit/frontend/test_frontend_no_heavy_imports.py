import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_building_the_app_imports_neither_torch_nor_transformers_nor_the_backend():
    script = (
        "import sys\n"
        "from frontend.app import create_app\n"
        "create_app()\n"
        "import frontend.ui, frontend.chat, frontend.triton_client\n"
        "heavy = [m for m in ('torch', 'transformers', 'backend_python', 'torchvision') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout.strip()}"
