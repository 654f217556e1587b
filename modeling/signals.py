"""What training announces to the apps above it (evals subscribes in its AppConfig.ready)."""

from django.dispatch import Signal

# Sent once a checkpoint is committed, with `checkpoint` and `job`: a trained one (in the worker
# that trained it) or a registered one (job None; unless VEREDICTO_EVALUATE_REGISTERED is off or
# the caller says not to). Receivers' errors are logged, not raised.
checkpoint_registered = Signal()
