"""Autoscaling simulator and capacity planner for the Triton deployment.

Replays a traffic trace against a measured pod profile and the ScaledObject of a
built k8s/ overlay, and reports latency, rejections and GPU-hours per policy.
"""
