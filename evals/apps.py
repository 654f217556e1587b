from django.apps import AppConfig


class EvalsConfig(AppConfig):
    name = "evals"

    def ready(self) -> None:
        from evals.checkpoint_section import EVALUATIONS
        from evals.receivers import evaluate_new_checkpoint
        from modeling.page_sections import checkpoint_section_register
        from modeling.signals import checkpoint_registered

        checkpoint_registered.connect(evaluate_new_checkpoint, dispatch_uid="evals-new-checkpoint")
        # The checkpoint page (a modeling view) shows a checkpoint's evaluations.
        checkpoint_section_register(EVALUATIONS)
