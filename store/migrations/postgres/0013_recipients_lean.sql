-- Fewer writes per recipient on the hot path (issue 12). Every recipient
-- insert and every outcome (an update that cannot be HOT: it changes the
-- state) wrote an entry in recipients_domain, which only the queue listing
-- filtered by domain could use (it finds the messages first and checks
-- their recipients through recipients_message instead). The foreign key to
-- messages ran a lookup and locked the message row (a WAL record) per
-- inserted recipient; PruneMessages and DeleteMessage, the only statements
-- that delete messages, delete their recipients themselves.
DROP INDEX recipients_domain;
ALTER TABLE recipients DROP CONSTRAINT recipients_message_id_fkey;
