-- Resolved alerts are kept for [anomalies] keep_alerts_days of series time; the index finds the
-- ones past it.
CREATE INDEX alerts_resolved ON anomalies.alerts (resolved_at) WHERE status = 'resolved';
