package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Bulk writes on PostgreSQL (issue 12).
//
// A batch of the Enqueue group commit used to be one statement per message,
// per recipient and per injection event: PostgreSQL spent more CPU per
// message than the gateway. Now it is a fixed number of statements per
// batch: one INSERT ... SELECT FROM unnest(...) per table, pipelined with
// the NOTIFY (and with the statement that learns the transaction id, see
// pgTxStart), in one round trip. The recipients and events take their ids
// from their sequences (the column default) in the order of the arrays
// (ORDER BY the ordinality: the defaults are computed above the sort), so
// the ids a statement returns, sorted, are its rows' in order, whatever the
// order of RETURNING.

const (
	pgBulkMessages = `INSERT INTO messages (id, key_id, subaccount, mail_from, size, smtputf8, body_type,
		dsn_ret, dsn_envid, campaign_id, msys_api, created_at, info)
		SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
			$6::boolean[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[], $13::text[])`
	pgBulkBodies = `INSERT INTO message_bodies (message_id, seq, chunk)
		SELECT * FROM unnest($1::text[], $2::integer[], $3::bytea[])`
	pgBulkRecipients = `INSERT INTO recipients (message_id, address, domain, state, attempts, next_attempt,
		last_reply, dsn_notify, dsn_orcpt, updated_at, lease_owner, lease_until)
		SELECT u.message_id, u.address, u.domain, u.state, u.attempts, u.next_attempt,
			u.last_reply, u.dsn_notify, u.dsn_orcpt, u.updated_at, u.lease_owner, u.lease_until
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::integer[],
			$6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::text[], $12::timestamptz[])
			WITH ORDINALITY AS u(message_id, address, domain, state, attempts, next_attempt,
				last_reply, dsn_notify, dsn_orcpt, updated_at, lease_owner, lease_until, ord)
		ORDER BY u.ord
		RETURNING id`
	pgBulkEvents = `INSERT INTO events (type, time, message_id, key_id, subaccount, recipient, campaign_id,
		metadata, tags, reply, detail)
		SELECT u.type, u.time, u.message_id, u.key_id, u.subaccount, u.recipient, u.campaign_id,
			u.metadata::jsonb, CASE WHEN u.tags IS NULL THEN NULL
				ELSE ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)) END, u.reply, u.detail
		FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::bigint[],
			$6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
			WITH ORDINALITY AS u(type, time, message_id, key_id, subaccount, recipient, campaign_id, metadata, tags, reply, detail, ord)
		ORDER BY u.ord
		RETURNING id`
)

// readIDs reads the ids a bulk insert of n rows returned, in the order of
// its rows.
func readIDs(br pgx.BatchResults, n int, what string) ([]int64, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("insert %s: %w", what, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("insert %s: %w", what, err)
	}
	if len(ids) != n {
		return nil, fmt.Errorf("insert %s: got %d ids for %d rows", what, len(ids), n)
	}
	slices.Sort(ids)
	return ids, nil
}

// insertPGMessages writes messages, recipients (setting their ids),
// injection events and the events extra (setting their ids) inside tx,
// with a NOTIFY if notify is set and there are messages, in one round trip.
func insertPGMessages(ctx context.Context, tx pgTx, msgs []*Message, extra []Event, notify bool) error {
	b := &pgx.Batch{}
	read, err := queuePGMessages(b, msgs, extra, notify)
	if err != nil || b.Len() == 0 {
		return err
	}
	br := tx.SendBatch(ctx, b)
	return errors.Join(read(br), br.Close())
}

// queuePGMessages queues in b the inserts insertPGMessages makes; read
// reads their results from the batch's results (after those of anything
// queued before) and sets the ids.
func queuePGMessages(b *pgx.Batch, msgs []*Message, extra []Event, notify bool) (read func(pgx.BatchResults) error, err error) {
	var (
		rcpts []*Recipient
		evs   = slices.Clone(extra)
	)
	var leases []*Lease // of each recipient: its message's
	for _, m := range msgs {
		rcpts = append(rcpts, m.Recipients...)
		for range m.Recipients {
			leases = append(leases, m.Lease)
		}
		evs = append(evs, injectionEvents(m)...)
	}
	chunks := 0
	if len(msgs) > 0 {
		var err error
		if chunks, err = queueBulkMessages(b, msgs); err != nil {
			return nil, err
		}
	}

	if len(rcpts) > 0 {
		var rc struct {
			msgID, addr, domain, state, reply, notify, orcpt []string
			attempts                                         []int32
			next, updated                                    []time.Time
			leaseOwner                                       []*string
			leaseUntil                                       []*time.Time
		}
		for i, r := range rcpts {
			if l := leases[i]; l != nil {
				rc.leaseOwner = append(rc.leaseOwner, &l.Owner)
				rc.leaseUntil = append(rc.leaseUntil, &l.Until)
			} else {
				rc.leaseOwner = append(rc.leaseOwner, nil)
				rc.leaseUntil = append(rc.leaseUntil, nil)
			}
			rc.msgID = append(rc.msgID, r.MessageID)
			rc.addr = append(rc.addr, r.Address)
			rc.domain = append(rc.domain, r.Domain)
			rc.state = append(rc.state, r.State)
			rc.attempts = append(rc.attempts, int32(r.Attempts))
			rc.next = append(rc.next, r.NextAttempt)
			rc.reply = append(rc.reply, r.LastReply)
			rc.notify = append(rc.notify, r.DSNNotify)
			rc.orcpt = append(rc.orcpt, r.DSNOrcpt)
			rc.updated = append(rc.updated, r.UpdatedAt)
		}
		b.Queue(pgBulkRecipients, rc.msgID, rc.addr, rc.domain, rc.state, rc.attempts, rc.next,
			rc.reply, rc.notify, rc.orcpt, rc.updated, rc.leaseOwner, rc.leaseUntil)
	}
	if err := queueBulkEvents(b, evs); err != nil {
		return nil, err
	}
	// Messages stored leased went to their relay already: other nodes'
	// claims would find nothing.
	notify = notify && slices.ContainsFunc(msgs, func(m *Message) bool { return m.Lease == nil })
	if notify {
		b.Queue(pgNotify, notifyChannel)
	}
	return func(br pgx.BatchResults) error {
		var (
			rids, eids []int64
			err        error
		)
		if len(msgs) > 0 {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("insert messages: %w", err)
			}
		}
		if chunks > 0 {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("insert message bodies: %w", err)
			}
		}
		if len(rcpts) > 0 {
			if rids, err = readIDs(br, len(rcpts), "recipients"); err != nil {
				return err
			}
		}
		if len(evs) > 0 {
			if eids, err = readIDs(br, len(evs), "events"); err != nil {
				return err
			}
		}
		if notify {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("notify: %w", err)
			}
		}
		for i, r := range rcpts {
			r.ID = rids[i]
		}
		for i := range extra {
			extra[i].ID = eids[i]
		}
		return nil
	}, nil
}

// queueBulkEvents adds one insert of every event in evs to b; it returns
// their ids (readIDs).
func queueBulkEvents(b *pgx.Batch, evs []Event) error {
	if len(evs) == 0 {
		return nil
	}
	var ec struct {
		typ, msgID, keyID, rcpt, campaign, reply []string
		meta, tags, detail                       []*string
		sub                                      []int64
		at                                       []time.Time
	}
	for i := range evs {
		e := &evs[i]
		detail, err := e.encodedDetail()
		if err != nil {
			return err
		}
		var meta, tags *string
		if len(e.Metadata) > 0 {
			s := string(e.Metadata)
			meta = &s
		}
		if e.Tags != nil {
			t, err := json.Marshal(e.Tags)
			if err != nil {
				return fmt.Errorf("encode event tags: %w", err)
			}
			s := string(t)
			tags = &s
		}
		ec.typ = append(ec.typ, e.Type)
		ec.at = append(ec.at, utc(e.Time))
		ec.msgID = append(ec.msgID, e.MessageID)
		ec.keyID = append(ec.keyID, e.KeyID)
		ec.sub = append(ec.sub, e.Subaccount)
		ec.rcpt = append(ec.rcpt, e.Recipient)
		ec.campaign = append(ec.campaign, e.CampaignID)
		ec.meta = append(ec.meta, meta)
		ec.tags = append(ec.tags, tags)
		ec.reply = append(ec.reply, e.Reply)
		ec.detail = append(ec.detail, optString(detail))
	}
	b.Queue(pgBulkEvents, ec.typ, ec.at, ec.msgID, ec.keyID, ec.sub, ec.rcpt, ec.campaign,
		ec.meta, ec.tags, ec.reply, ec.detail)
	return nil
}

// optString turns the result of encodeInfo or encodeDetail (nil or a
// string) into a nullable string.
func optString(v any) *string {
	if s, ok := v.(string); ok {
		return &s
	}
	return nil
}

// lostLease is an outcome of op whose recipient was no longer leased to
// op's owner.
type lostLease struct {
	op *finishOp
	id int64
}

// pgBulkFinish records every outcome of a Finish batch in one statement and
// returns the ids it changed.
const pgBulkFinish = `UPDATE recipients r SET state = u.state,
	next_attempt = CASE WHEN u.set_next THEN u.next ELSE r.next_attempt END,
	last_reply = u.reply, attempts = r.attempts + 1, lease_owner = NULL, lease_until = NULL,
	updated_at = u.now
	FROM unnest($1::bigint[], $2::text[], $3::boolean[], $4::timestamptz[], $5::text[], $6::timestamptz[], $7::text[])
		AS u(id, state, set_next, next, reply, now, owner)
	WHERE r.id = u.id AND r.lease_owner = u.owner
	RETURNING r.id`

// pgOutcomes are the outcomes of a Finish batch, as the arrays of
// pgBulkFinish; dup reports whether one recipient is named twice.
type pgOutcomes struct {
	ids                     []int64
	states, replies, owners []string
	setNext                 []bool
	next, now               []time.Time
	dup                     bool
}

func newPGOutcomes(ops []*finishOp) *pgOutcomes {
	o := &pgOutcomes{}
	seen := map[int64]bool{}
	for _, op := range ops {
		for _, out := range op.f.Outcomes {
			n, set := op.outcomeNext(out)
			o.ids = append(o.ids, out.RecipientID)
			o.states = append(o.states, out.State)
			o.setNext = append(o.setNext, set)
			o.next = append(o.next, n)
			o.replies = append(o.replies, out.Reply)
			o.now = append(o.now, op.now)
			o.owners = append(o.owners, op.owner)
			o.dup = o.dup || seen[out.RecipientID]
			seen[out.RecipientID] = true
		}
	}
	return o
}

// queue adds the one statement of the outcomes (not dup) to b.
func (o *pgOutcomes) queue(b *pgx.Batch) {
	b.Queue(pgBulkFinish, o.ids, o.states, o.setNext, o.next, o.replies, o.now, o.owners)
}

// read reads the ids the statement of queue changed.
func (o *pgOutcomes) read(br pgx.BatchResults) (map[int64]bool, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, err
	}
	applied := make(map[int64]bool, len(got))
	for _, id := range got {
		applied[id] = true
	}
	return applied, nil
}

// writeDup applies the outcomes (dup) one statement per outcome, in order,
// as a single UPDATE would apply only one of those naming one recipient.
func (o *pgOutcomes) writeDup(ctx context.Context, tx pgTx) (map[int64]bool, error) {
	applied := map[int64]bool{}
	b := &pgx.Batch{}
	for i := range o.ids {
		b.Queue(pgFinishUpdate, o.states[i], o.setNext[i], o.next[i], o.replies[i], o.now[i], o.ids[i], o.owners[i])
	}
	br := tx.SendBatch(ctx, b)
	var err error
	for i := 0; i < len(o.ids) && err == nil; i++ {
		var tag pgconn.CommandTag
		if tag, err = br.Exec(); err == nil && tag.RowsAffected() == 1 {
			applied[o.ids[i]] = true
		}
	}
	if err := errors.Join(err, br.Close()); err != nil {
		return nil, err
	}
	return applied, nil
}

// countApplied counts each op's applied outcomes and returns those whose
// lease was lost.
func countApplied(ops []*finishOp, applied map[int64]bool) []lostLease {
	var out []lostLease
	for _, op := range ops {
		for _, o := range op.f.Outcomes {
			if applied[o.RecipientID] {
				op.applied++
				delete(applied, o.RecipientID) // a duplicate counts once
				continue
			}
			out = append(out, lostLease{op, o.RecipientID})
		}
	}
	return out
}

// pgBodyChunk is the size of the chunks a body is stored in
// (message_bodies, migration 0012): a chunk and its row fit in one page.
const pgBodyChunk = 8000

// pgBodyExpr reads the body of message m.id from its chunks; a dropped body
// reads as empty.
const pgBodyExpr = `coalesce((SELECT string_agg(b.chunk, ''::bytea ORDER BY b.seq)
	FROM message_bodies b WHERE b.message_id = m.id), ''::bytea)`

// queueBulkMessages adds the inserts of msgs and of their bodies' chunks to
// b; chunks is how many there are (none: no insert of chunks is queued).
func queueBulkMessages(b *pgx.Batch, msgs []*Message) (chunks int, err error) {
	var mc struct {
		id, keyID, from, bodyType, dsnRet, dsnEnvID, campaign []string
		msys, info                                            []*string
		sub, size                                             []int64
		utf8                                                  []bool
		created                                               []time.Time
	}
	var bc struct {
		id    []string
		seq   []int32
		chunk [][]byte
	}
	for _, m := range msgs {
		var msys *string
		if len(m.MsysAPI) > 0 {
			s := string(m.MsysAPI)
			msys = &s
		}
		info, err := messageInfo(m)
		if err != nil {
			return 0, err
		}
		mc.id = append(mc.id, m.ID)
		mc.keyID = append(mc.keyID, m.KeyID)
		mc.sub = append(mc.sub, m.Subaccount)
		mc.from = append(mc.from, m.MailFrom)
		mc.size = append(mc.size, int64(len(m.Body)))
		mc.utf8 = append(mc.utf8, m.SMTPUTF8)
		mc.bodyType = append(mc.bodyType, m.BodyType)
		mc.dsnRet = append(mc.dsnRet, m.DSNRet)
		mc.dsnEnvID = append(mc.dsnEnvID, m.DSNEnvID)
		mc.campaign = append(mc.campaign, m.CampaignID)
		mc.msys = append(mc.msys, msys)
		mc.created = append(mc.created, m.CreatedAt)
		mc.info = append(mc.info, optString(info))
		for i := 0; i*pgBodyChunk < len(m.Body); i++ {
			bc.id = append(bc.id, m.ID)
			bc.seq = append(bc.seq, int32(i))
			bc.chunk = append(bc.chunk, m.Body[i*pgBodyChunk:min((i+1)*pgBodyChunk, len(m.Body))])
		}
	}
	b.Queue(pgBulkMessages, mc.id, mc.keyID, mc.sub, mc.from, mc.size, mc.utf8, mc.bodyType,
		mc.dsnRet, mc.dsnEnvID, mc.campaign, mc.msys, mc.created, mc.info)
	if len(bc.id) > 0 {
		b.Queue(pgBulkBodies, bc.id, bc.seq, bc.chunk)
	}
	return len(bc.id), nil
}
