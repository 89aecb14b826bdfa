"""The HTTP frontend: the quart-trio app, its ASGI middleware, and the projection views."""
