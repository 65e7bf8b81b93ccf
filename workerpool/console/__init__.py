"""The browser console: the seed's screens on the server's HTTP port, behind a login.

A layer of its own above the Python API (``workerpool.client``) and the server: every action
it offers is one the API has, run with the server's admin login after the console checked
the user's role. ``service`` serves it from a thread; ``app`` has the pages and actions;
``views`` reads what each page shows; ``accounts`` has users, roles and the login limit.
"""
