"""checkov finds nothing wrong in the rendered manifests that a skip annotation does not explain."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from k8s_manifests import REPO

pytestmark = pytest.mark.unit

# checkov conflicts with the project's pins, so it lives in its own venv (see k8s/README.md).
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
OFFLINE = {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}


@pytest.fixture(scope="module")
def checkov_report(rendered, tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not CHECKOV.is_file():
        pytest.fail(
            f"{CHECKOV} is missing: python3 -m venv .venv-checkov && "
            ".venv-checkov/bin/pip install checkov==3.3.30"
        )
    folder: Path = tmp_path_factory.mktemp("rendered")
    for build, objects in rendered.items():
        (folder / f"{build}.yaml").write_text(yaml.safe_dump_all(objects))
    result = subprocess.run(
        [str(CHECKOV), "--directory", str(folder), "--framework", "kubernetes", "--skip-download",
         "--output", "json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, **OFFLINE},
    )
    assert result.stdout.strip(), f"checkov printed nothing (exit {result.returncode}):\n{result.stderr}"
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def test_checkov_has_no_failed_check(checkov_report: dict) -> None:
    failed = [
        f"{c['check_id']} {c['resource']} ({c['check_name']})" for c in checkov_report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert checkov_report["summary"]["passed"] > 100, "checkov ran the Kubernetes checks"


def test_every_skipped_check_is_explained_in_the_manifest(checkov_report: dict) -> None:
    skipped = checkov_report["results"]["skipped_checks"]
    assert skipped, "the skip annotations are read (checkov reports them as skipped)"
    unexplained = [
        f"{c['check_id']} {c['resource']}" for c in skipped
        if len(c.get("check_result", {}).get("suppress_comment", "").split()) < 5
    ]
    assert not unexplained, "skips without a reason:\n" + "\n".join(unexplained)
