"""Monitoring: the connection log, live counters, the status HTTP endpoint
(JSON, Prometheus, HTML dashboard) and the ``fastscp status`` terminal view.
It reads what the other layers publish (the server's totals through
``events.ServerTotals``, the frozen events observers are told, the catalog
writer's counters) and never reaches into them.
See docs/monitoring.md."""
