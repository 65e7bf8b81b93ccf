"""The one place that touches Celery and kombu: the app factory, the task shell, the consumer's
bootsteps, the Redis transport, and a start-up check of the private parts they rely on."""
