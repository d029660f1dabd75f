"""The local stack behind `make up` and what stands in for the world there: the stack and its
processes (`stack`), the Slack and PagerDuty stand-in (`notification_sink`), a throwaway PostgreSQL
(`pgtemp`) and the demo traffic (`demo`). Later, the high-availability topology lands here.

At the top of the layers: it may import anything below (`deployments`, `runtime`, the store).
"""
