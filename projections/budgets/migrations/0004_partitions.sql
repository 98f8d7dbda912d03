-- Budgets can run partitioned (projections.partitions): each partition folds the catalog for
-- itself, at its own stream position, so the catalog row is kept per partition ('<k>/<n>',
-- from kairos.partition()); '' is the row of the unpartitioned runner and of a replay.
ALTER TABLE budgets.catalog DROP COLUMN singleton;
ALTER TABLE budgets.catalog ADD COLUMN part text NOT NULL DEFAULT '';
ALTER TABLE budgets.catalog ADD PRIMARY KEY (part);
