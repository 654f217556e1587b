"""API endpoints for the annotation app, one module per subdomain. Every write goes through the
same services as the UI, and every endpoint applies the same role rules."""

from ninja import Router

from . import annotation, data

router = Router()
router.add_router("", annotation.router)
router.add_router("", data.router)
