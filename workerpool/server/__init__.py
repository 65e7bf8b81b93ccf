"""The server layer: the deployment orchestrator, the local stack supervisor with its embedded
Redis, and the pools page. It imports the core and the spec, never client or worker code."""
