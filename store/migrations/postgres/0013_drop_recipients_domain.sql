-- No query looks recipients up by domain alone: the claim filters the rows
-- recipients_due yields, and the queue listing's domain filter is checked
-- per message through recipients_message. The index only cost an entry per
-- recipient written and deleted (issue 12).
DROP INDEX recipients_domain;
