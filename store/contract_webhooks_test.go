package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/smtpgw/smtpgw/internal/pgtest"
)

func TestWebhooksCRUD(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		sub := int64(3)
		w := &Webhook{ID: "w1", Subaccount: &sub, Name: "hook", Target: "https://example.com/h", Events: []string{"bounce"},
			Active: true, AuthType: "basic", Auth: json.RawMessage(`{"username":"u"}`), Secret: "s3"}
		if err := e.s.CreateWebhook(ctx, w); err != nil {
			t.Fatal(err)
		}
		if err := e.s.CreateWebhook(ctx, &Webhook{ID: "w1", Name: "dup", Target: "x"}); !errors.Is(err, ErrExists) {
			t.Errorf("duplicate id: %v, want ErrExists", err)
		}
		if err := e.s.CreateWebhook(ctx, &Webhook{ID: "w2", Name: "all", Target: "https://example.com/2"}); err != nil {
			t.Fatal(err)
		}
		got, err := e.s.GetWebhook(ctx, "w1")
		if err != nil || got.Name != "hook" || *got.Subaccount != 3 || got.Events[0] != "bounce" || !got.Active ||
			got.AuthType != "basic" || !jsonEqual(got.Auth, `{"username":"u"}`) || !jsonEqual(got.Headers, `{}`) || got.Secret != "s3" {
			t.Fatalf("get = %+v, %v", got, err)
		}
		got.Name, got.Subaccount, got.Active = "renamed", nil, false
		if err := e.s.UpdateWebhook(ctx, got); err != nil {
			t.Fatal(err)
		}
		ws, err := e.s.ListWebhooks(ctx)
		if err != nil || len(ws) != 2 || ws[0].Name != "renamed" || ws[0].Subaccount != nil || ws[0].Active || ws[1].AuthType != "none" {
			t.Fatalf("list = %+v, %v", ws, err)
		}
		if err := e.s.DeleteWebhook(ctx, "w1"); err != nil {
			t.Fatal(err)
		}
		for _, err := range []error{e.s.DeleteWebhook(ctx, "w1"), e.s.UpdateWebhook(ctx, &Webhook{ID: "nope"})} {
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("on a missing webhook: %v, want ErrNotFound", err)
			}
		}
		if _, err := e.s.GetWebhook(ctx, "w1"); !errors.Is(err, ErrNotFound) {
			t.Errorf("get deleted: %v", err)
		}
	})
}

// renderAll makes one batch of every event it is given and records them.
type recorder struct {
	mu   sync.Mutex
	seen map[int64]int
	n    int
	// before counts dispatches of the event written before the webhook.
	before int
}

func (r *recorder) render(evs []Event) (*WebhookBatch, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]int64, len(evs))
	for i, e := range evs {
		ids[i] = e.ID
		if e.MessageID == "before" {
			// Written before the webhook existed. PostgreSQL's cursor
			// starts at the oldest transaction still open anywhere in the
			// cluster, so an event committed just before the webhook was
			// created may come once more: never lost, possibly early.
			r.before++
			continue
		}
		r.seen[e.ID]++
	}
	r.n++
	body, _ := json.Marshal(ids)
	return &WebhookBatch{ID: fmt.Sprintf("b%d-%d", r.n, ids[0]), Body: body, Events: len(evs)}, nil
}

func TestWebhookOutbox(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		if err := e.s.AddEvents(ctx, []Event{{Type: EventDelivery, MessageID: "before"}}); err != nil {
			t.Fatal(err)
		}
		if err := e.s.CreateWebhook(ctx, &Webhook{ID: "w", Name: "w", Target: "https://example.com", Active: true}); err != nil {
			t.Fatal(err)
		}
		// Writers add events while two dispatchers (two nodes) drain the
		// webhook: every event after its creation lands in exactly one batch.
		const writers, each = 4, 50
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					if err := e.s.AddEvents(ctx, []Event{{Type: EventDelivery, MessageID: fmt.Sprintf("m%d-%d", w, i)}}); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		rec := &recorder{seen: map[int64]int{}}
		done := make(chan struct{})
		var dwg sync.WaitGroup
		for range 2 {
			dwg.Add(1)
			go func() {
				defer dwg.Done()
				for {
					select {
					case <-done:
						return
					default:
					}
					if _, err := e.s.DispatchWebhook(ctx, "w", 7, rec.render); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		// On PostgreSQL an event is dispatched once every transaction
		// older than its own has ended, anywhere in the cluster (see
		// pgHorizon): other packages' tests share the server, and one of
		// theirs may keep a transaction open for a while.
		deadline := time.Now().Add(60 * time.Second)
		for {
			rec.mu.Lock()
			n := len(rec.seen)
			rec.mu.Unlock()
			if n >= writers*each || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		close(done)
		dwg.Wait()
		if len(rec.seen) != writers*each {
			t.Fatalf("%d events dispatched, want %d%s", len(rec.seen), writers*each, horizonHolders(t, e))
		}
		for id, n := range rec.seen {
			if n != 1 {
				t.Errorf("event %d in %d batches", id, n)
			}
		}
		if rec.before > 1 {
			t.Errorf("the event written before the webhook was dispatched %d times, want at most once", rec.before)
		}
		if n, err := e.s.DispatchWebhook(ctx, "w", 10, rec.render); n != 0 || err != nil {
			t.Errorf("drained webhook dispatched %d, %v", n, err)
		}
		if _, err := e.s.DispatchWebhook(ctx, "nope", 10, rec.render); !errors.Is(err, ErrNotFound) {
			t.Errorf("dispatch of a missing webhook: %v", err)
		}

		// Claims: two owners never share a batch; a finish by a former
		// owner is ignored; attempts are listed newest first.
		a, err := e.s.ClaimWebhookBatches(ctx, "n1", 3, time.Minute)
		if err != nil || len(a) != 3 {
			t.Fatalf("claim n1: %d, %v", len(a), err)
		}
		b, err := e.s.ClaimWebhookBatches(ctx, "n2", 1000, time.Minute)
		if err != nil || len(b) != rec.n-3 {
			t.Fatalf("claim n2: %d of %d, %v", len(b), rec.n-3, err)
		}
		for _, x := range b {
			for _, y := range a {
				if x.ID == y.ID {
					t.Errorf("batch %s claimed twice", x.ID)
				}
			}
		}
		now := time.Now()
		res := BatchResult{State: BatchPending, NextAttempt: now.Add(-time.Second),
			Attempt: WebhookAttempt{WebhookID: "w", Time: now, Attempt: 1, ResponseCode: 503, Failure: "HTTP 503", Node: "n1"}}
		if ok, err := e.s.FinishWebhookBatch(ctx, "n2", a[0].ID, res); ok || err != nil {
			t.Errorf("finish by a non-owner: %v, %v", ok, err)
		}
		if ok, err := e.s.FinishWebhookBatch(ctx, "n1", a[0].ID, res); !ok || err != nil {
			t.Fatalf("finish: %v, %v", ok, err)
		}
		again, err := e.s.ClaimWebhookBatches(ctx, "n3", 10, time.Minute)
		if err != nil || len(again) != 1 || again[0].ID != a[0].ID || again[0].Attempts != 1 {
			t.Fatalf("reclaim after a failed attempt: %+v, %v", again, err)
		}
		res.State, res.Attempt.Attempt, res.Attempt.ResponseCode, res.Attempt.Failure = BatchDelivered, 2, 200, ""
		res.Attempt.Time = now.Add(time.Millisecond)
		if ok, err := e.s.FinishWebhookBatch(ctx, "n3", a[0].ID, res); !ok || err != nil {
			t.Fatalf("finish delivered: %v, %v", ok, err)
		}
		at, err := e.s.WebhookAttempts(ctx, "w", 10)
		if err != nil || len(at) != 2 || at[0].ResponseCode != 200 || at[1].ResponseCode != 503 || at[1].Failure != "HTTP 503" || at[0].BatchID != a[0].ID {
			t.Errorf("attempts = %+v, %v", at, err)
		}
		if n, err := e.s.PruneWebhookBatches(ctx, time.Now().Add(time.Minute)); n != 1 || err != nil {
			t.Errorf("prune: %d, %v; want the delivered batch", n, err)
		}
		if err := e.s.DeleteWebhook(ctx, "w"); err != nil {
			t.Fatal(err)
		}
		if left, err := e.s.ClaimWebhookBatches(ctx, "n4", 1000, time.Minute); err != nil || len(left) != 0 {
			t.Errorf("batches of a deleted webhook: %d, %v", len(left), err)
		}
	})
}

// horizonHolders describes, on PostgreSQL, the transactions that hold the
// cluster's oldest running transaction id back (what webhook dispatch
// waits for), for a failure message.
func horizonHolders(t *testing.T, e *env) string {
	if e.url == "" {
		return ""
	}
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, pgtest.BaseURL())
	if err != nil {
		return fmt.Sprintf(" (could not list open transactions: %v)", err)
	}
	defer func() { _ = conn.Close(ctx) }()
	rows, err := conn.Query(ctx, `SELECT format('pid %s, xid %s, %s since %s: %s', pid, backend_xid, state,
		xact_start, left(regexp_replace(query, '\s+', ' ', 'g'), 100))
		FROM pg_stat_activity WHERE backend_xid IS NOT NULL ORDER BY age(backend_xid) DESC LIMIT 5`)
	if err != nil {
		return fmt.Sprintf(" (could not list open transactions: %v)", err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Sprintf(" (could not list open transactions: %v)", err)
	}
	return "; oldest open transactions: " + strings.Join(lines, "; ")
}

// TestWebhookHold: on PostgreSQL a transaction left open holds webhook
// dispatch back, and WebhookHold names it; SQLite has nothing to report.
func TestWebhookHold(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		if e.url == "" {
			if h, err := e.s.WebhookHold(ctx); h != nil || err != nil {
				t.Fatalf("SQLite: WebhookHold = %+v, %v; want nothing", h, err)
			}
			return
		}
		open := pgtest.BeginOpenTx(t, "smtpgw_hold_test")
		// It holds events back once a newer transaction has committed;
		// other tests' transactions may be older for a moment: they end
		// soon, and then this one is the oldest.
		deadline := time.Now().Add(20 * time.Second)
		for {
			if err := e.s.AddEvents(ctx, []Event{{Type: EventDelivery, MessageID: "held"}}); err != nil {
				t.Fatal(err)
			}
			h, err := e.s.WebhookHold(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if h != nil && h.XID == open.XID {
				if h.PID != open.PID || h.Application != "smtpgw_hold_test" || h.State != "idle in transaction" ||
					!h.Since.Equal(open.Start) || h.Database == "" || h.User == "" {
					t.Errorf("WebhookHold = %+v, want pid %d, application smtpgw_hold_test, idle in transaction since %v",
						h, open.PID, open.Start)
				}
				break
			}
			if h != nil && h.XID > open.XID {
				t.Fatalf("WebhookHold = %+v: a transaction newer than the open one (xid %d)", h, open.XID)
			}
			if time.Now().After(deadline) {
				t.Fatalf("WebhookHold = %+v, want the open transaction (xid %d)", h, open.XID)
			}
			time.Sleep(20 * time.Millisecond)
		}
		open.Commit(t)
		if h, err := e.s.WebhookHold(ctx); err != nil || (h != nil && h.XID == open.XID) {
			t.Errorf("after COMMIT: WebhookHold = %+v, %v; want another transaction or none", h, err)
		}
	})
}
