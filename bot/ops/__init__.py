"""Operations: what a long-running service shows its owner — health checks, readiness, metrics.

`events` is the lifecycle's view (imports nothing but the store); `metrics` holds the
Prometheus instruments; `health` decides readiness; `http` serves all three on the bot's loop.
"""
