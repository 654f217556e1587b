"""The API's routers, one per app, mounted on core's NinjaAPI (config/urls.py serves it at /api/).
This module sits above every app, so core never has to import the apps that use it."""

from core.api import api

api.add_router("/", "feedback.api.router")
api.add_router("/", "modeling.api.router")
api.add_router("/", "evals.api.router")

__all__ = ["api"]
