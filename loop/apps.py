from django.apps import AppConfig


class LoopConfig(AppConfig):
    name = "loop"
    verbose_name = "The loop"

    def ready(self) -> None:
        # The strict toy-task checker as a verifiable reward jobs can name ("toy_task"):
        # registered from here because modeling, a lower app, must not import loop.
        from loop.checkpoint_section import GENERATIONS
        from loop.toytask import toy_task_reward
        from modeling.ml.rewards import register_reward
        from modeling.page_sections import checkpoint_section_register

        register_reward("toy_task", toy_task_reward)
        # The checkpoint page (a modeling view) shows the comparisons sampled from it.
        checkpoint_section_register(GENERATIONS)
