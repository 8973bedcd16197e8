"""Monitoring: the connection log, live counters, the status HTTP endpoint
(JSON, Prometheus, HTML dashboard) and the ``fastscp status`` terminal view.
It reads what the other layers publish (ServerState counters, handler
attributes, the catalog writer's counters) and never reaches into them.
See docs/monitoring.md."""
