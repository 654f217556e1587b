"""API endpoints for training jobs and checkpoints. Launches go through the same services and
the same admin-only rule as the UI."""

from ninja import Router

router = Router()
