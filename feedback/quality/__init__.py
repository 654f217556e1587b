"""Label quality: agreement metrics (metrics.py) and the project / annotator reports built on them
(reports.py), and which annotators an export trusts (trust.py)."""
