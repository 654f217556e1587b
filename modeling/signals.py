"""What training announces to the apps above it (evals subscribes in its AppConfig.ready)."""

from django.dispatch import Signal

# Sent once a trained checkpoint is registered and committed, with `checkpoint` and `job`.
# Receivers run in the worker that trained it; their errors are logged, not raised.
checkpoint_registered = Signal()
