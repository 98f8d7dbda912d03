-- The identities a projection folded move into the projection's own schema, so that a replayed
-- generation carries its own and the switch to it is a rename, whatever the history's length.
CREATE TABLE budgets.kairos_applied (
    identity bytea  PRIMARY KEY CHECK (length(identity) = 32),
    seq      bigint NOT NULL
);
INSERT INTO budgets.kairos_applied SELECT identity, seq FROM kairos.applied_events WHERE projection = 'budgets';

CREATE TABLE audit.kairos_applied (
    identity bytea  PRIMARY KEY CHECK (length(identity) = 32),
    seq      bigint NOT NULL
);
INSERT INTO audit.kairos_applied SELECT identity, seq FROM kairos.applied_events WHERE projection = 'audit';

DROP TABLE kairos.applied_events;
