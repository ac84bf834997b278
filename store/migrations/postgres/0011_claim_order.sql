-- The claim reads queued and deferred recipients apart, each in the order
-- it leases them (next_attempt, then id), and stops at its limit: it no
-- longer sorts every due recipient of the queue per claim (issue 12).
CREATE INDEX recipients_due_order ON recipients (state, next_attempt, id);
DROP INDEX recipients_due;
ALTER INDEX recipients_due_order RENAME TO recipients_due;
