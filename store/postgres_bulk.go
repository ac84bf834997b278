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
// batch: the ids of the new recipients and events are taken from their
// sequences first (one round trip), then one INSERT ... SELECT FROM
// unnest(...) per table, pipelined with the NOTIFY. Taking the ids first
// keeps them exactly as before (each row's own, in order), without relying
// on the order of RETURNING.

const (
	pgNextIDs = `SELECT array(SELECT nextval('recipients_id_seq') FROM generate_series(1, $1)),
		array(SELECT nextval('events_id_seq') FROM generate_series(1, $2))`
	pgBulkMessages = `INSERT INTO messages (id, key_id, subaccount, mail_from, body, size, smtputf8, body_type,
		dsn_ret, dsn_envid, campaign_id, msys_api, created_at, info)
		SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bytea[], $6::bigint[],
			$7::boolean[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::timestamptz[], $14::text[])`
	pgBulkRecipients = `INSERT INTO recipients (id, message_id, address, domain, state, attempts, next_attempt,
		last_reply, dsn_notify, dsn_orcpt, updated_at, lease_owner, lease_until)
		SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[],
			$7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::text[], $13::timestamptz[])`
	pgBulkEvents = `INSERT INTO events (id, type, time, message_id, key_id, subaccount, recipient, campaign_id,
		metadata, tags, reply, detail)
		SELECT u.id, u.type, u.time, u.message_id, u.key_id, u.subaccount, u.recipient, u.campaign_id,
			u.metadata::jsonb, CASE WHEN u.tags IS NULL THEN NULL
				ELSE ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)) END, u.reply, u.detail
		FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::bigint[],
			$7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
			AS u(id, type, time, message_id, key_id, subaccount, recipient, campaign_id, metadata, tags, reply, detail)`
)

// insertPGMessages writes messages, recipients (setting their ids),
// injection events and the events extra (setting their ids) inside tx,
// with a NOTIFY if notify is set and there are messages: one round trip
// for the ids, one pipelined batch for the rest.
func insertPGMessages(ctx context.Context, tx pgx.Tx, msgs []*Message, extra []Event, notify bool) error {
	if len(msgs) == 0 && len(extra) == 0 {
		return nil
	}
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
	var rids, eids []int64
	if err := tx.QueryRow(ctx, pgNextIDs, len(rcpts), len(evs)).Scan(&rids, &eids); err != nil {
		return fmt.Errorf("insert messages: take ids: %w", err)
	}
	if len(rids) != len(rcpts) || len(eids) != len(evs) {
		return fmt.Errorf("insert messages: got %d/%d ids for %d recipients and %d events", len(rids), len(eids), len(rcpts), len(evs))
	}

	b := &pgx.Batch{}
	if len(msgs) > 0 {
		if err := queueBulkMessages(b, msgs); err != nil {
			return err
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
		b.Queue(pgBulkRecipients, rids, rc.msgID, rc.addr, rc.domain, rc.state, rc.attempts, rc.next,
			rc.reply, rc.notify, rc.orcpt, rc.updated, rc.leaseOwner, rc.leaseUntil)
	}
	if err := queueBulkEvents(b, evs, eids); err != nil {
		return err
	}
	if notify && len(msgs) > 0 {
		b.Queue(pgNotify, notifyChannel)
	}
	br := tx.SendBatch(ctx, b)
	err := func() error {
		if len(msgs) > 0 {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("insert messages: %w", err)
			}
		}
		if len(rcpts) > 0 {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("insert recipients: %w", err)
			}
		}
		if len(evs) > 0 {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("insert events: %w", err)
			}
		}
		return nil
	}()
	if err := errors.Join(err, br.Close()); err != nil {
		return err
	}
	for i, r := range rcpts {
		r.ID = rids[i]
	}
	for i := range extra {
		extra[i].ID = eids[i]
	}
	return nil
}

// queueBulkEvents adds one insert of every event in evs, with ids, to b.
func queueBulkEvents(b *pgx.Batch, evs []Event, ids []int64) error {
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
		detail, err := encodeDetail(&e.Detail)
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
	b.Queue(pgBulkEvents, ids, ec.typ, ec.at, ec.msgID, ec.keyID, ec.sub, ec.rcpt, ec.campaign,
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

// finishOutcomesPG applies the outcomes of ops (counting each op's applied
// ones) in one statement and returns those whose lease was lost. A batch
// naming a recipient twice is written one statement per outcome, in order,
// as a single UPDATE would apply only one of them.
func finishOutcomesPG(ctx context.Context, tx pgx.Tx, ops []*finishOp) ([]lostLease, error) {
	var (
		ids                     []int64
		states, replies, owners []string
		setNext                 []bool
		next, now               []time.Time
	)
	seen := map[int64]bool{}
	dup := false
	for _, op := range ops {
		for _, o := range op.f.Outcomes {
			n, set := op.outcomeNext(o)
			ids = append(ids, o.RecipientID)
			states = append(states, o.State)
			setNext = append(setNext, set)
			next = append(next, n)
			replies = append(replies, o.Reply)
			now = append(now, op.now)
			owners = append(owners, op.owner)
			dup = dup || seen[o.RecipientID]
			seen[o.RecipientID] = true
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	applied := map[int64]bool{}
	if !dup {
		rows, err := tx.Query(ctx, pgBulkFinish, ids, states, setNext, next, replies, now, owners)
		if err != nil {
			return nil, err
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return nil, err
		}
		for _, id := range got {
			applied[id] = true
		}
	} else {
		b := &pgx.Batch{}
		for i := range ids {
			b.Queue(pgFinishUpdate, states[i], setNext[i], next[i], replies[i], now[i], ids[i], owners[i])
		}
		br := tx.SendBatch(ctx, b)
		var err error
		for i := 0; i < len(ids) && err == nil; i++ {
			var tag pgconn.CommandTag
			if tag, err = br.Exec(); err == nil && tag.RowsAffected() == 1 {
				applied[ids[i]] = true
			}
		}
		if err := errors.Join(err, br.Close()); err != nil {
			return nil, err
		}
	}
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
	return out, nil
}

// queueBulkMessages adds the insert of msgs to b.
func queueBulkMessages(b *pgx.Batch, msgs []*Message) error {
	var mc struct {
		id, keyID, from, bodyType, dsnRet, dsnEnvID, campaign []string
		msys, info                                            []*string
		sub, size                                             []int64
		utf8                                                  []bool
		body                                                  [][]byte
		created                                               []time.Time
	}
	for _, m := range msgs {
		body := m.Body
		if body == nil {
			body = []byte{}
		}
		var msys *string
		if len(m.MsysAPI) > 0 {
			s := string(m.MsysAPI)
			msys = &s
		}
		info, err := encodeInfo(&m.Info)
		if err != nil {
			return err
		}
		mc.id = append(mc.id, m.ID)
		mc.keyID = append(mc.keyID, m.KeyID)
		mc.sub = append(mc.sub, m.Subaccount)
		mc.from = append(mc.from, m.MailFrom)
		mc.body = append(mc.body, body)
		mc.size = append(mc.size, int64(len(body)))
		mc.utf8 = append(mc.utf8, m.SMTPUTF8)
		mc.bodyType = append(mc.bodyType, m.BodyType)
		mc.dsnRet = append(mc.dsnRet, m.DSNRet)
		mc.dsnEnvID = append(mc.dsnEnvID, m.DSNEnvID)
		mc.campaign = append(mc.campaign, m.CampaignID)
		mc.msys = append(mc.msys, msys)
		mc.created = append(mc.created, m.CreatedAt)
		mc.info = append(mc.info, optString(info))
	}
	b.Queue(pgBulkMessages, mc.id, mc.keyID, mc.sub, mc.from, mc.body, mc.size, mc.utf8, mc.bodyType,
		mc.dsnRet, mc.dsnEnvID, mc.campaign, mc.msys, mc.created, mc.info)
	return nil
}
