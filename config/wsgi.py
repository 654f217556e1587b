import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()
# Import every app's views (numpy, krippendorff and the rest) as the process starts, not while its
# first request waits: that request was a page several seconds slower than the next (issue #17).
get_resolver().url_patterns  # noqa: B018 -- the import is the point
