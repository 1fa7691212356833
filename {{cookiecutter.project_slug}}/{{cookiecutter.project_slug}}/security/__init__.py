"""What the project does for security beyond Django's own: which client address is believed
(``proxies.py``), how fast sign-in may be tried (``login_throttle.py``), and response headers
(``middleware.py``; the Content-Security-Policy is django-csp's)."""
