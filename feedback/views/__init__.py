from .annotation import (
    history,
    home,
    landing,
    markdown_preview,
    progress,
    skip,
    submit,
    task,
    work,
)
from .data import (
    data_page,
    import_detail,
    import_preview,
    import_start,
    snapshot_create,
    snapshot_detail,
    snapshot_download,
)
from .projects import project_edit, project_new
from .quality import adjudicate, disagreements, quality
from .records import record, records, records_bulk
from .review import review_accept, review_judgement, review_queue

__all__ = [
    "adjudicate",
    "data_page",
    "disagreements",
    "history",
    "home",
    "import_detail",
    "import_preview",
    "import_start",
    "landing",
    "markdown_preview",
    "progress",
    "project_edit",
    "project_new",
    "quality",
    "record",
    "records",
    "records_bulk",
    "review_accept",
    "review_judgement",
    "review_queue",
    "skip",
    "snapshot_create",
    "snapshot_detail",
    "snapshot_download",
    "submit",
    "task",
    "work",
]
