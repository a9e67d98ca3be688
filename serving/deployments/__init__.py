"""Ray Serve deployments: thin wrappers around framework-free services."""
