"""The dcgm-exporter counters CSV: dcgm-exporter's syntax, and every DCGM field we use is enabled."""

import re
from pathlib import Path

import pytest

from monitoring.dcgm.counters import COUNTERS_CSV, CountersSyntaxError, load_counters, parse_counters

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
USED_FIELD = re.compile(r"\bDCGM_FI_[A-Z0-9_]*[A-Z0-9]\b")  # not the prefix in "DCGM_FI_PROF_*"
# What the rules, dashboards and KEDA read, and what an SRE needs beside them.
REQUIRED = {
    "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_SM_ACTIVE",
    "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
}


def test_counters_csv_parses_strictly_and_enables_what_an_sre_needs():
    counters = load_counters()
    enabled = {c.field for c in counters}
    assert REQUIRED <= enabled, f"missing: {sorted(REQUIRED - enabled)}"
    by_name = {c.field: c.prom_type for c in counters}
    # Energy and error totals only grow; utilization and memory go both ways.
    assert by_name["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
    assert by_name["DCGM_FI_DEV_GPU_UTIL"] == "gauge"
    assert by_name["DCGM_FI_DEV_FB_USED"] == "gauge"


def _files_using_dcgm_fields() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for top in ("monitoring", "k8s"):
        for path in (REPO / top).rglob("*"):
            if not path.is_file() or path == COUNTERS_CSV or "__pycache__" in path.parts:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            for name in USED_FIELD.findall(text):
                used.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return used


def test_every_dcgm_field_used_in_monitoring_or_k8s_is_enabled():
    used = _files_using_dcgm_fields()
    # The rules and the dashboard read at least these; the grep must find them.
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"} <= set(used)
    enabled = {c.field for c in load_counters()}
    missing = {name: sorted(files) for name, files in used.items() if name not in enabled}
    assert not missing, f"used but not enabled in {COUNTERS_CSV.name}: {missing}"


def test_copies_of_the_counters_csv_in_k8s_are_identical():
    """k8s/ ships the CSV in a ConfigMap; a copy that drifts would export other fields than we test."""
    copies = [p for p in (REPO / "k8s").rglob("*counters*.csv")]
    for copy in copies:
        assert copy.read_text(encoding="utf-8") == COUNTERS_CSV.read_text(encoding="utf-8"), (
            f"{copy.relative_to(REPO)} differs from monitoring/dcgm/counters.csv"
        )


def test_comments_and_empty_lines_are_skipped_and_spaces_trimmed():
    counters = parse_counters("# a comment, with commas\n\nDCGM_FI_DEV_GPU_UTIL ,  gauge , GPU utilization (in %).\n")
    assert [(c.field, c.prom_type, c.help, c.line) for c in counters] == [
        ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", 3)
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("DCGM_FI_DEV_GPU_UTIL, gauge\n", "expected 3 fields"),
        ("DCGM_FI_DEV_GPU_UTIL, gauge, utilization, in percent\n", "expected 3 fields"),
        ("DCGM_FI_DEV_GPU_UTIL, histogramm, GPU utilization\n", "type 'histogramm'"),
        ("DCGM_FI_DEV_GPU_UTIL, gauge, \n", "no help text"),
        ("GPU_UTIL, gauge, GPU utilization\n", "not a DCGM field name"),
        ('DCGM_FI_DEV_GPU_UTIL, gauge, "GPU utilization"\n', "quotes"),
        ("  # DCGM_FI_DEV_GPU_UTIL, gauge, indented: not a comment for Go's csv\n", "not a DCGM field name"),
        ("DCGM_FI_DEV_GPU_UTIL, gauge, a\n   \n", "blank line holding whitespace"),
        ("DCGM_FI_DEV_GPU_UTIL, gauge, a\nDCGM_FI_DEV_GPU_UTIL, gauge, b\n", "already enabled on line 1"),
        ("# only comments\n", "no counter enabled"),
    ],
)
def test_lines_dcgm_exporter_would_refuse_are_errors_naming_the_line(text, message):
    with pytest.raises(CountersSyntaxError, match=re.escape(message)):
        parse_counters(text)
