-- Finished recipients by last change, so PruneMessages finds messages whose
-- recipients all finished before the cutoff without reading the queue.
-- Partial: queued and deferred recipients, the ones that change often, are
-- not in it.

CREATE INDEX recipients_finished ON recipients (updated_at)
	WHERE state IN ('delivered', 'bounced', 'expired');
