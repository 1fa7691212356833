"""Security response headers of the project's own (the Content-Security-Policy is django-csp's)."""
