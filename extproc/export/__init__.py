"""SIEM export: every exchange's decision and outcome (and every audit-service access) as an OCSF API Activity
event (class 6003) carrying a proof pointer into the recording, streamed to a file, Splunk HEC or syslog.

config.py   the ``export:`` section of gateway.yaml
ocsf.py     recording events -> one OCSF event per exchange (or audit access), with its proof pointer
sinks.py    the outputs: JSON lines file (rotated), Splunk HEC, syslog RFC 5424 over TCP/TLS; bounded queues, retries
exporter.py the tap on the recorder's chain: folds events, hands finished OCSF events to the sinks; the
            transparency log's checkpoints as follow-up ``proofs`` events (one per segment); metrics
proof.py    from a proof pointer back to its line in the store (``sessions verify --event``)

The recording stays the source of truth: an export never blocks or fails an exchange; what a sink cannot take is
dropped and counted, and ``mcp-extproc export backfill`` sends a time range again from the store.
"""
