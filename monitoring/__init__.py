"""Monitoring for the platform: Prometheus rules, Grafana dashboards, dcgm-exporter counters."""
