"""API endpoints for evaluation runs, results and the arena leaderboard, with the same role
rules as the dashboard."""

from ninja import Router

router = Router()
