"""Label quality: agreement metrics (metrics.py), Dawid–Skene models of annotators
(dawid_skene.py) and the reliability figures drawn from them (reliability.py), the project /
annotator reports built on them (reports.py), and which annotators an export trusts (trust.py)."""
