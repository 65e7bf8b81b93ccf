"""Attacker tests: from inside a script, with another pool's credentials, with crafted
messages. They use the session's Redis, whose admin password and whose pools' own passwords
are what an attacker looks for."""
