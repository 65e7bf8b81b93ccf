"""One step on its worker: set-up (variables, packages, features), the script's run, its log
and service messages, and its artifacts."""
