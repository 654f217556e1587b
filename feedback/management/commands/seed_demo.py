from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from feedback.demo import DEMO_USERS, ensure_demo_users, load_demo_project


class Command(BaseCommand):
    help = "Create the demo users (admin, reviewer, two annotators) and the demo project, once."

    def handle(self, *args, **options) -> None:
        created = ensure_demo_users()
        project = load_demo_project()
        credentials = Path(settings.VAR_DIR) / "demo-credentials.txt"
        if created:
            credentials.parent.mkdir(parents=True, exist_ok=True)
            with credentials.open("a") as out:
                for username, password in created.items():
                    out.write(f"{username} {password}\n")
            credentials.chmod(0o600)
            self.stdout.write("Demo logins (passwords shown once, also saved to var/):")
            for username, password in created.items():
                self.stdout.write(f"  {username:<12} {password}")
        else:
            names = ", ".join(name for name, _, _ in DEMO_USERS)
            self.stdout.write(f"Demo users exist ({names}); passwords are in {credentials}.")
        self.stdout.write(f"Demo project: {project.name} ({project.items.count()} items)")
