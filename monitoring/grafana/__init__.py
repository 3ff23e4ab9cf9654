"""Grafana provisioning and the dashboards, generated as code."""
