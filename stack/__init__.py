"""The local stack: real processes (Triton, the frontend, Prometheus) started the way `make run` and the tests start them."""
