"""The HPA algorithm against the worked examples of the Kubernetes documentation
(Horizontal Pod Autoscaling: algorithm details, and configurable scaling behavior)."""

import pytest

from planner.hpa import (
    Behavior,
    HorizontalPodAutoscaler,
    replicas_for_average_value,
    replicas_for_pod_metrics,
    replicas_for_value,
)

pytestmark = pytest.mark.unit


def test_double_when_the_metric_is_twice_the_target():
    # "if the current metric value is 200m, and the desired value is 100m, the number of replicas will be doubled"
    assert replicas_for_pod_metrics(3, [200, 200, 200], 0, 0, 100, 0.1) == 6


def test_halve_when_the_metric_is_half_the_target():
    # "If the current value is instead 50m, you'll halve the number of replicas"
    assert replicas_for_pod_metrics(4, [50, 50, 50, 50], 0, 0, 100, 0.1) == 2


@pytest.mark.parametrize("value,expected", [(105, 4), (95, 4), (109, 4), (111, 5), (89, 4)])
def test_no_action_within_the_default_tolerance(value, expected):
    # ratio within 0.1 of 1.0: no scaling. 89 % -> ceil(0.89 * 4) = 4 as well.
    assert replicas_for_pod_metrics(4, [value] * 4, 0, 0, 100, 0.1) == expected


def test_missing_metrics_count_as_the_target_when_scaling_down():
    # Two pods report 50 % of the target, one reports nothing: it is assumed at 100 %.
    assert replicas_for_pod_metrics(3, [50, 50], 1, 0, 100, 0.1) == 2


def test_missing_metrics_count_as_zero_when_scaling_up():
    assert replicas_for_pod_metrics(3, [200, 200], 1, 0, 100, 0.1) == 4


def test_not_ready_pods_that_reverse_a_scale_up_cancel_it():
    # 2 ready pods at 150 %, 2 not-yet-ready pods taken as 0 %: 300/400 < 1, direction reversed.
    assert replicas_for_pod_metrics(4, [150, 150], 0, 2, 100, 0.1) == 4


def test_not_ready_pods_dampen_a_scale_up():
    # 2 ready at 300 %, 1 not ready at 0 %: 600/300 = 2.0 -> 6 instead of ceil(3 * 2) from the ready pods alone.
    assert replicas_for_pod_metrics(3, [300, 300], 0, 1, 100, 0.1) == 6


def test_external_value_is_compared_as_is_and_scaled_by_ready_pods():
    assert replicas_for_value(current=4, ready=3, value=1.0, target=0.5, tolerance=0.1) == 6
    assert replicas_for_value(current=4, ready=4, value=0.52, target=0.5, tolerance=0.1) == 4


def test_external_average_value_is_shared_by_the_pods():
    assert replicas_for_average_value(current=4, status_replicas=4, total=40, target=4, tolerance=0.1) == 10
    # 17 / (4 * 4) = 1.06: within tolerance.
    assert replicas_for_average_value(current=4, status_replicas=4, total=17, target=4, tolerance=0.1) == 4


def _hpa(spec, lo=1, hi=100):
    return HorizontalPodAutoscaler(min_replicas=lo, max_replicas=hi, behavior=Behavior.from_spec(spec))


DOCS_SCALE_DOWN = {
    "scaleDown": {
        "stabilizationWindowSeconds": 0,
        "policies": [
            {"type": "Pods", "value": 4, "periodSeconds": 60},
            {"type": "Percent", "value": 10, "periodSeconds": 60},
        ],
    }
}


def test_docs_scale_down_policies_80_to_72_to_64():
    # "if there are 80 replicas and the target has to be scaled down to 10 replicas then during the first
    # step 8 replicas will be reduced. In the next iteration when the number of replicas is 72, 10% of the
    # pods is 7.2 but the number is rounded up to 8."
    hpa = _hpa(DOCS_SCALE_DOWN)
    assert hpa.reconcile(0, 80, [10]) == 72
    assert hpa.reconcile(15, 72, [10]) == 72  # the 60 s period still holds the first 8
    assert hpa.reconcile(61, 72, [10]) == 64


def test_docs_scale_down_below_40_uses_the_pods_policy():
    # "When the number of replicas falls below 40 the first policy (Pods) is applied and 4 replicas will be reduced at a time."
    hpa = _hpa(DOCS_SCALE_DOWN)
    assert hpa.reconcile(0, 30, [10]) == 26


def test_docs_select_policy_min_limits_to_five_pods_per_minute():
    # "To ensure that no more than 5 Pods are removed per minute, you can add a second scale-down policy
    # with a fixed size of 5, and set selectPolicy to minimum."
    hpa = _hpa(
        {
            "scaleDown": {
                "stabilizationWindowSeconds": 0,
                "selectPolicy": "Min",
                "policies": [
                    {"type": "Percent", "value": 10, "periodSeconds": 60},
                    {"type": "Pods", "value": 5, "periodSeconds": 60},
                ],
            }
        }
    )
    assert hpa.reconcile(0, 100, [10]) == 95


def test_docs_default_scale_up_four_pods_or_double_every_15_seconds():
    # Default: "4 pods or a 100% of the currently running replicas may at most be added every 15 seconds".
    hpa = _hpa(None)
    assert hpa.reconcile(0, 2, [40]) == 6
    assert hpa.reconcile(15.5, 6, [40]) == 12
    assert hpa.reconcile(31, 12, [40]) == 24


def test_docs_default_scale_down_stabilization_uses_the_highest_recommendation_of_300_s():
    hpa = _hpa(None)
    assert hpa.reconcile(0, 10, [10]) == 10
    for t in range(15, 300, 15):
        assert hpa.reconcile(t, 10, [3]) == 10
    assert hpa.reconcile(301, 10, [3]) == 3


def test_scale_up_stabilization_window_uses_the_lowest_recommendation():
    hpa = _hpa({"scaleUp": {"stabilizationWindowSeconds": 60}})
    assert hpa.reconcile(0, 2, [2]) == 2
    assert hpa.reconcile(15, 2, [8]) == 2
    assert hpa.reconcile(61, 2, [8]) == 6  # 8 wanted, default policy allows +4


def test_select_policy_disabled_never_scales_down():
    hpa = _hpa({"scaleDown": {"selectPolicy": "Disabled"}})
    assert hpa.reconcile(0, 10, [1]) == 10
    assert hpa.reconcile(1000, 10, [1]) == 10


def test_min_and_max_clamp():
    hpa = _hpa(None, lo=2, hi=5)
    assert hpa.reconcile(0, 3, [50]) == 5
    hpa = _hpa({"scaleDown": {"stabilizationWindowSeconds": 0}}, lo=2, hi=5)
    assert hpa.reconcile(0, 4, [0]) == 2


def test_highest_metric_wins_and_a_failed_metric_blocks_scale_down():
    hpa = _hpa({"scaleDown": {"stabilizationWindowSeconds": 0}})
    assert hpa.reconcile(0, 4, [2, 7]) == 7
    assert hpa.reconcile(100, 7, [2, None]) == 7


def test_bad_behavior_is_a_clear_error():
    with pytest.raises(ValueError, match="selectPolicy"):
        Behavior.from_spec({"scaleUp": {"selectPolicy": "Fastest"}})
    with pytest.raises(ValueError, match="type"):
        Behavior.from_spec({"scaleUp": {"policies": [{"type": "Nodes", "value": 1, "periodSeconds": 15}]}})
