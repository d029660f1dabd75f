"""Names vulture cannot see used (`make lint`): each is read by a framework, by data or by a
convention, not by a call in our code. A name dead for real is removed, not added here."""

# ruff: noqa: B018, F821
# Evidently's stattest signature (tasks/drift.py).
feature_type
# Enum members chosen on the command line (watchkeeper/cli).
petshop
test
off
# Configuration keys, read where their section is dumped or looked up by name.
accuracy_warning
accuracy_critical
factor
pipeline_runs
evaluation_results
aggregates
samples
outbox
ad_hoc
# Store columns written by the ORM and read by SQL, the API or the migrations.
_.root_cause_confidence
_.folded
_.dispatched_at
_.last_error
_.changed_at
_.changed_by
_.brought_news
brought_news
last_error
dispatched_at
root_cause_confidence
changed_by
changed_at
# SQLAlchemy's TypeDecorator and event hooks (watchkeeper/store).
impl
cache_ok
_.process_bind_param
_.process_result_value
_on_connect
_.isolation_level
_on_begin
# Alertmanager's webhook fields, validated though Watchkeeper keys on others (store/alerts.py).
truncated_alerts
group_labels
common_labels
common_annotations
external_url
# The OpenAPI model of an error answer (service/openapi.py).
media_type
# Credentials for one shared token: the tests' and an embedding program's way to build them.
_.shared
# The client's figures for the model service that owns it.
_.queued
# Called by migration 0009 (migrations are not scanned).
aggregate_stored
# uvicorn's workers import it by name (watchkeeper serve with intake.processes above 1).
service_from_environment
# SQLAlchemy calls these on a column type (store/schema.py KeyBytes).
bind_processor
result_processor
