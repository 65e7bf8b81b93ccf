"""The spec layer: what users write in YAML, read and checked before anything runs.

Step templates (shipped in ``templates/``), deployment process files, project variables and
their scoping, and the deployment record the client stores and the server runs. It imports
only the core.
"""
