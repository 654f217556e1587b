"""Label quality: agreement metrics (metrics.py) and the project / annotator reports built on them
(reports.py)."""
