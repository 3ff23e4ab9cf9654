"""HTTP routers: the OpenAI-compatible API and the health/metrics endpoints."""
