from django.apps import AppConfig


class EvalsConfig(AppConfig):
    name = "evals"

    def ready(self) -> None:
        from evals.receivers import evaluate_new_checkpoint
        from modeling.signals import checkpoint_registered

        checkpoint_registered.connect(evaluate_new_checkpoint, dispatch_uid="evals-new-checkpoint")
