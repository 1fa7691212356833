"""What an event is and how it is written: the event and its envelope, its address (a channel),
and the Server-Sent Events wire format.

Pure functions and values, no I/O: everything above builds on them. Imports only the app's
``exceptions``.
"""
