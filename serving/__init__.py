"""Serving layer: the vLLM engine service and the Ray Serve deployments/builders around it."""
