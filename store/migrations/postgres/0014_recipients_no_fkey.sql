-- The foreign key from recipients to messages ran a lookup and locked the
-- message row (a WAL record) per inserted recipient (issue 12).
-- PruneMessages and DeleteMessage, the only statements that delete
-- messages, delete their recipients (and bodies) themselves in the same
-- statement. (recipients_domain went in 0013.)
ALTER TABLE recipients DROP CONSTRAINT recipients_message_id_fkey;
