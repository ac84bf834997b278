package relay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// addDomain creates a sending domain with a fresh DKIM key.
func addDomain(t testing.TB, st store.Store, name, alg string) *store.Domain {
	t.Helper()
	priv, pub, err := GenerateDKIMKey(alg)
	if err != nil {
		t.Fatalf("generate %s key: %v", alg, err)
	}
	d := &store.Domain{Name: name, Selector: "sel1", Algorithm: alg, PrivateKey: priv, PublicKey: pub}
	if err := st.CreateDomain(context.Background(), d); err != nil {
		t.Fatalf("create domain: %v", err)
	}
	return d
}

// verifyDKIM checks data carries a valid DKIM signature of d.
func verifyDKIM(t testing.TB, data []byte, d *store.Domain) {
	t.Helper()
	name, value := DKIMRecord(d)
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(data), &dkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			if domain == name {
				return []string{value}, nil
			}
			return nil, errors.New("no such record: " + domain)
		},
	})
	if err != nil {
		t.Fatalf("dkim verify: %v", err)
	}
	if len(vs) != 1 {
		t.Fatalf("dkim verify: %d signatures, want 1", len(vs))
	}
	if vs[0].Err != nil {
		t.Fatalf("dkim signature does not verify: %v", vs[0].Err)
	}
	if vs[0].Domain != d.Name {
		t.Errorf("dkim d= %q, want %q", vs[0].Domain, d.Name)
	}
}

func TestDeliveredOnceSigned(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		for _, alg := range []string{"rsa", "ed25519"} {
			t.Run(kind+"/"+alg, func(t *testing.T) {
				t.Parallel()
				st := storetest.Open(t, kind)
				tg := newTarget(t, targetOpts{})
				d := addDomain(t, st, "example.com", alg)
				startRelay(t, smarthostConfig(t, tg), st)

				body := testBody("Alice <alice@Example.com>", "signed")
				m := enqueue(t, st, "bounces@example.com", []string{"bob@dest.test", "carol@dest.test"}, body,
					func(m *store.Message) {
						m.DSNRet = "HDRS"
						m.DSNEnvID = "env-1"
						if alg == "rsa" {
							// As the SMTP server stores it: the relay
							// looks the domain up from it.
							m.Info.FriendlyFrom = "alice@Example.com"
						}
					})
				fm := waitFinal(t, st, m.ID)
				for _, r := range fm.Recipients {
					if r.State != store.StateDelivered {
						t.Fatalf("recipient %s: state %s (%s), want delivered", r.Address, r.State, r.LastReply)
					}
				}
				got := tg.messages()
				if len(got) != 1 {
					t.Fatalf("target got %d messages, want 1 (one transaction for both recipients)", len(got))
				}
				g := got[0]
				if g.from != "bounces@example.com" || strings.Join(g.to, ",") != "bob@dest.test,carol@dest.test" {
					t.Errorf("envelope: from %q to %v", g.from, g.to)
				}
				if !bytes.HasSuffix(g.data, []byte(body)) {
					t.Errorf("body changed in transit:\n%s", g.data)
				}
				if !bytes.HasPrefix(g.data, []byte("DKIM-Signature:")) {
					t.Errorf("no DKIM-Signature prepended:\n%s", g.data)
				}
				verifyDKIM(t, g.data, d)
				if g.mailOpts.Return != smtp.DSNReturnHeaders || g.mailOpts.EnvelopeID != "env-1" {
					t.Errorf("MAIL options: RET=%q ENVID=%q, want HDRS env-1", g.mailOpts.Return, g.mailOpts.EnvelopeID)
				}
				if g.mailOpts.Size != int64(len(g.data)) {
					t.Errorf("MAIL SIZE=%d, want %d", g.mailOpts.Size, len(g.data))
				}
				if ev := eventTypes(t, st, m.ID, "bob@dest.test"); strings.Join(ev, ",") != "injection,delivery" {
					t.Errorf("events for bob: %v, want injection,delivery", ev)
				}
				evs, err := st.ListEvents(context.Background(), store.EventFilter{MessageID: m.ID, Types: []string{store.EventDelivery}})
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range evs {
					if e.KeyID != "k1" || e.Subaccount != 7 || e.CampaignID != "camp" || !strings.HasPrefix(e.Reply, "250") {
						t.Errorf("delivery event: %+v", e)
					}
				}
			})
		}
	}
}

func TestUnsignedWhenNotSendingDomain(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	tg := newTarget(t, targetOpts{})
	addDomain(t, st, "example.com", "ed25519")
	startRelay(t, smarthostConfig(t, tg), st)
	body := testBody("x@other.test", "unsigned")
	m := enqueue(t, st, "x@other.test", []string{"bob@dest.test"}, body)
	waitFinal(t, st, m.ID)
	// With the From: address the SMTP server stored, the same.
	m2 := enqueue(t, st, "x@other.test", []string{"bob@dest.test"}, body,
		func(m *store.Message) { m.Info.FriendlyFrom = "x@other.test" })
	waitFinal(t, st, m2.ID)
	got := tg.messages()
	if len(got) != 2 || string(got[0].data) != body || string(got[1].data) != body {
		t.Fatalf("want the body unchanged and unsigned twice; got %d messages", len(got))
	}
}

func TestRetryAfter451(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, kind)
			tg := newTarget(t, targetOpts{rcpt: func(to string, n int) error {
				if n == 0 {
					return smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "try later")
				}
				return nil
			}})
			startRelay(t, smarthostConfig(t, tg), st)
			m := enqueue(t, st, "s@src.test", []string{"bob@dest.test"}, testBody("s@src.test", "retry"))
			fm := waitFinal(t, st, m.ID)
			if s, reply := rcptState(t, fm, "bob@dest.test"); s != store.StateDelivered {
				t.Fatalf("state %s (%s), want delivered", s, reply)
			}
			if n := len(tg.messages()); n != 1 {
				t.Errorf("target got %d messages, want 1", n)
			}
			if fm.Recipients[0].Attempts != 2 {
				t.Errorf("attempts %d, want 2", fm.Recipients[0].Attempts)
			}
			if ev := eventTypes(t, st, m.ID, "bob@dest.test"); strings.Join(ev, ",") != "injection,delay,delivery" {
				t.Errorf("events: %v, want injection,delay,delivery", ev)
			}
			evs, err := st.ListEvents(context.Background(), store.EventFilter{MessageID: m.ID, Types: []string{store.EventDelay}})
			if err != nil || len(evs) != 1 || evs[0].Reply != "451 4.3.0 try later" {
				t.Errorf("delay event: %+v, %v", evs, err)
			}
		})
	}
}

// dsnReport parses a DSN and returns its delivery-status part.
func dsnReport(t testing.TB, data []byte) (human, status, original string) {
	t.Helper()
	e, err := message.Read(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("parse DSN: %v", err)
	}
	mt, params, err := e.Header.ContentType()
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("DSN content type %q %v (%v), want multipart/report; report-type=delivery-status", mt, params, err)
	}
	mr := e.MultipartReader()
	var types []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("DSN part: %v", err)
		}
		pt, _, _ := p.Header.ContentType()
		b, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatalf("read DSN part %s: %v", pt, err)
		}
		types = append(types, pt)
		switch pt {
		case "text/plain":
			human = string(b)
		case "message/delivery-status", "message/global-delivery-status":
			status = string(b)
		case "text/rfc822-headers", "message/rfc822":
			original = string(b)
		}
	}
	if len(types) != 3 {
		t.Errorf("DSN parts %v, want 3", types)
	}
	return human, status, original
}

func TestBounceSendsDSN(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, kind)
			tg := newTarget(t, targetOpts{rcpt: func(to string, n int) error {
				if strings.HasPrefix(to, "bad@") {
					return smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
				}
				return nil
			}})
			startRelay(t, smarthostConfig(t, tg), st)
			body := testBody("s@src.test", "bounce")
			m := enqueue(t, st, "s@src.test", []string{"good@dest.test", "bad@dest.test"}, body, func(m *store.Message) {
				m.Recipients[1].DSNOrcpt = "rfc822;Bad@Dest.test"
			})
			fm := waitFinal(t, st, m.ID)
			if s, _ := rcptState(t, fm, "good@dest.test"); s != store.StateDelivered {
				t.Errorf("good: %s, want delivered", s)
			}
			if s, reply := rcptState(t, fm, "bad@dest.test"); s != store.StateBounced || reply != "550 5.1.1 no such user" {
				t.Errorf("bad: %s (%s), want bounced with 550 5.1.1 no such user", s, reply)
			}
			got := tg.waitFor(t, "original and DSN", func(g []received) bool { return len(g) >= 2 })
			var orig, dsn []received
			for _, g := range got {
				if g.from == "" {
					dsn = append(dsn, g)
				} else {
					orig = append(orig, g)
				}
			}
			if len(orig) != 1 || strings.Join(orig[0].to, ",") != "good@dest.test" {
				t.Fatalf("original delivered as %+v, want once to good@dest.test only", orig)
			}
			if len(dsn) != 1 || strings.Join(dsn[0].to, ",") != "s@src.test" {
				t.Fatalf("DSN: %d messages, want one to s@src.test from <>", len(dsn))
			}
			if f := headerValue(dsn[0].data, "From"); !strings.Contains(f, "MAILER-DAEMON@relay.test") {
				t.Errorf("DSN From: %q", f)
			}
			human, status, original := dsnReport(t, dsn[0].data)
			for _, want := range []string{
				"Reporting-MTA: dns; relay.test",
				"Final-Recipient: rfc822; bad@dest.test",
				"Original-Recipient: rfc822; Bad@Dest.test",
				"Action: failed",
				"Status: 5.1.1",
				"Diagnostic-Code: smtp; 550 5.1.1 no such user",
				"Remote-MTA: dns; 127.0.0.1",
				"Arrival-Date: ",
			} {
				if !strings.Contains(status, want) {
					t.Errorf("delivery-status lacks %q:\n%s", want, status)
				}
			}
			if strings.Contains(status, "good@dest.test") {
				t.Errorf("delivery-status reports the delivered recipient:\n%s", status)
			}
			if !strings.Contains(human, "bad@dest.test") {
				t.Errorf("human part does not name the recipient:\n%s", human)
			}
			if !strings.Contains(original, "Subject: bounce") || strings.Contains(original, "this is bounce") {
				t.Errorf("original part should be the header only:\n%s", original)
			}
			if ev := eventTypes(t, st, m.ID, "bad@dest.test"); strings.Join(ev, ",") != "injection,bounce" {
				t.Errorf("events for bad: %v", ev)
			}
			// A hard bounce (5.1.1: class 10) puts the recipient on its
			// account's suppression list for both types; the delivered one
			// is not.
			deadline := time.Now().Add(10 * time.Second)
			for {
				rows, err := st.SuppressionsFor(context.Background(), []int64{m.Subaccount}, []string{"bad@dest.test", "good@dest.test"})
				if err == nil && len(rows) == 2 {
					for _, r := range rows {
						if r.Recipient != "bad@dest.test" || r.Source != store.SourceBounce || !strings.Contains(r.Description, "5.1.1") {
							t.Errorf("suppression entry %+v", r)
						}
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("suppression list after the bounce: %+v, %v; want bad@dest.test for both types", rows, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

func TestBounceRetFullAndNotifyNever(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	tg := newTarget(t, targetOpts{rcpt: func(to string, n int) error {
		if strings.HasPrefix(to, "bad") {
			return smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
		}
		return nil
	}})
	startRelay(t, smarthostConfig(t, tg), st)
	body := testBody("s@src.test", "full")
	m := enqueue(t, st, "s@src.test", []string{"bad1@dest.test", "bad2@dest.test"}, body, func(m *store.Message) {
		m.DSNRet = "FULL"
		m.Recipients[1].DSNNotify = "NEVER"
	})
	waitFinal(t, st, m.ID)
	got := tg.waitFor(t, "DSN", func(g []received) bool { return len(g) >= 1 })
	_, status, original := dsnReport(t, got[0].data)
	if !strings.Contains(status, "bad1@dest.test") || strings.Contains(status, "bad2@dest.test") {
		t.Errorf("DSN should report bad1 only (bad2 had NOTIFY=NEVER):\n%s", status)
	}
	if !strings.Contains(original, "this is full.") {
		t.Errorf("RET=FULL: original part lacks the body:\n%s", original)
	}
}

func TestNullSenderBounceNoDSN(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, kind)
			tg := newTarget(t, targetOpts{rcpt: func(to string, n int) error {
				return smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
			}})
			startRelay(t, smarthostConfig(t, tg), st)
			m := enqueue(t, st, "", []string{"bad@dest.test"}, testBody("MAILER-DAEMON@src.test", "null"))
			fm := waitFinal(t, st, m.ID)
			if s, _ := rcptState(t, fm, "bad@dest.test"); s != store.StateBounced {
				t.Fatalf("state %s, want bounced", s)
			}
			// The DSN would have been enqueued in the same transaction as
			// the bounce: the queue must hold the original only.
			msgs, err := st.ListMessages(context.Background(), store.QueueFilter{})
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != 1 || msgs[0].ID != m.ID {
				t.Errorf("queue holds %d messages, want only the original (no DSN for a null sender)", len(msgs))
			}
		})
	}
}

func TestExpiry(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, kind)
			tg := newTarget(t, targetOpts{rcpt: func(to string, n int) error {
				if strings.HasSuffix(to, "@dest.test") {
					return smtpErr(451, smtp.EnhancedCode{4, 2, 2}, "mailbox full")
				}
				return nil
			}})
			cfg := smarthostConfig(t, tg)
			cfg.MaxQueueLifetime = time.Hour
			cfg.RetryInitial = 2 * time.Hour // the first deferral would land past the lifetime
			cfg.RetryMax = 2 * time.Hour
			startRelay(t, cfg, st)
			// Older than the lifetime: expires without an attempt.
			old := enqueue(t, st, "s@src.test", []string{"old@dest.test"}, testBody("s@src.test", "old"),
				func(m *store.Message) { m.CreatedAt = time.Now().Add(-2 * time.Hour) })
			// Young, but its deferral would land past the lifetime.
			young := enqueue(t, st, "s@src.test", []string{"young@dest.test"}, testBody("s@src.test", "young"))
			fo := waitFinal(t, st, old.ID)
			fy := waitFinal(t, st, young.ID)
			if s, reply := rcptState(t, fo, "old@dest.test"); s != store.StateExpired || !strings.HasPrefix(reply, "554 5.4.7") {
				t.Errorf("old: %s (%s), want expired 554 5.4.7", s, reply)
			}
			if s, reply := rcptState(t, fy, "young@dest.test"); s != store.StateExpired || !strings.Contains(reply, "451 4.2.2 mailbox full") {
				t.Errorf("young: %s (%s), want expired mentioning the last reply", s, reply)
			}
			got := tg.waitFor(t, "two DSNs", func(g []received) bool { return len(g) >= 2 })
			for _, g := range got {
				if g.from != "" || g.to[0] != "s@src.test" {
					t.Errorf("unexpected delivery %q -> %v (the originals must not be delivered)", g.from, g.to)
					continue
				}
				_, status, _ := dsnReport(t, g.data)
				if !strings.Contains(status, "Action: failed") || !strings.Contains(status, "Status: 5.4.7") {
					t.Errorf("expiry DSN status:\n%s", status)
				}
			}
			if ev := eventTypes(t, st, old.ID, "old@dest.test"); strings.Join(ev, ",") != "injection,expiry" {
				t.Errorf("old events: %v", ev)
			}
			if ev := eventTypes(t, st, young.ID, "young@dest.test"); strings.Join(ev, ",") != "injection,expiry" {
				t.Errorf("young events: %v", ev)
			}
		})
	}
}

func TestDropMidData(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, kind)
			tg := newTarget(t, targetOpts{dropData: 1})
			startRelay(t, smarthostConfig(t, tg), st)
			body := testBody("s@src.test", "drop") + strings.Repeat("filler line of text\r\n", 500)
			m := enqueue(t, st, "s@src.test", []string{"bob@dest.test"}, body)
			fm := waitFinal(t, st, m.ID)
			if s, reply := rcptState(t, fm, "bob@dest.test"); s != store.StateDelivered {
				t.Fatalf("state %s (%s), want delivered", s, reply)
			}
			got := tg.messages()
			if len(got) != 1 || !bytes.Equal(got[0].data, []byte(body)) {
				t.Fatalf("target got %d messages, want exactly one intact", len(got))
			}
			if ev := eventTypes(t, st, m.ID, "bob@dest.test"); strings.Join(ev, ",") != "injection,delay,delivery" {
				t.Errorf("events: %v, want injection,delay,delivery", ev)
			}
		})
	}
}

func TestDataRejected(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	tg := newTarget(t, targetOpts{data: func(n int) error {
		if n == 0 {
			return smtpErr(554, smtp.EnhancedCode{5, 7, 1}, "spam")
		}
		return nil
	}})
	startRelay(t, smarthostConfig(t, tg), st)
	m := enqueue(t, st, "s@src.test", []string{"a@dest.test", "b@dest.test"}, testBody("s@src.test", "spam"))
	fm := waitFinal(t, st, m.ID)
	for _, r := range fm.Recipients {
		if r.State != store.StateBounced || r.LastReply != "554 5.7.1 spam" {
			t.Errorf("%s: %s (%s), want bounced by the DATA reply", r.Address, r.State, r.LastReply)
		}
	}
	got := tg.waitFor(t, "DSN", func(g []received) bool { return len(g) >= 1 })
	_, status, _ := dsnReport(t, got[0].data)
	if strings.Count(status, "Action: failed") != 2 {
		t.Errorf("one DSN should report both recipients:\n%s", status)
	}
}

func TestLeaseExpiredRelayPicksUp(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, kind)
			tg := newTarget(t, targetOpts{})
			m := enqueue(t, st, "s@src.test", []string{"bob@dest.test"}, testBody("s@src.test", "lease"))
			// Node A claims and dies without finishing.
			claimed, err := st.ClaimDue(context.Background(), "node-a", store.ClaimOptions{Limit: 10, Lease: 300 * time.Millisecond})
			if err != nil || len(claimed) != 1 {
				t.Fatalf("claim as node A: %d claimed, %v", len(claimed), err)
			}
			cfg := smarthostConfig(t, tg)
			cfg.Owner = "node-b"
			startRelay(t, cfg, st)
			fm := waitFinal(t, st, m.ID)
			if s, _ := rcptState(t, fm, "bob@dest.test"); s != store.StateDelivered {
				t.Fatalf("state %s, want delivered", s)
			}
			if n := len(tg.messages()); n != 1 {
				t.Errorf("target got %d messages, want 1", n)
			}
			// Node A comes back late: its outcome must be ignored.
			n, err := st.Finish(context.Background(), "node-a", store.Finish{Outcomes: []store.Outcome{{
				RecipientID: claimed[0].ID, State: store.StateBounced, Reply: "550 late"}}})
			if err != nil || n != 0 {
				t.Errorf("late finish by node A applied %d outcomes (%v), want 0", n, err)
			}
		})
	}
}

func TestStopWaitsAndIsIdempotent(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	tg := newTarget(t, targetOpts{})
	r, err := New(smarthostConfig(t, tg), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Stop() // before Start: returns at once
	r.Stop()
	if err := r.Start(context.Background()); err == nil {
		t.Error("Start after Stop succeeded")
	}

	r2 := startRelay(t, smarthostConfig(t, tg), st)
	m := enqueue(t, st, "s@src.test", []string{"bob@dest.test"}, testBody("s@src.test", "stop"))
	waitFinal(t, st, m.ID)
	r2.Stop()
	r2.Stop()
	if err := r2.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}
	// A stopped relay claims nothing.
	m2 := enqueue(t, st, "s@src.test", []string{"bob@dest.test"}, testBody("s@src.test", "after"))
	c, err := st.ClaimDue(context.Background(), "probe", store.ClaimOptions{Limit: 10, Lease: time.Minute})
	if err != nil || len(c) != 1 || c[0].MessageID != m2.ID {
		t.Errorf("after Stop the message should still be claimable: %d, %v", len(c), err)
	}
}

func TestCancelledContextStopsClaiming(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	tg := newTarget(t, targetOpts{})
	r, err := New(smarthostConfig(t, tg), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	m := enqueue(t, st, "s@src.test", []string{"bob@dest.test"}, testBody("s@src.test", "ctx"))
	waitFinal(t, st, m.ID)
	cancel()
	r.Stop()
	if n := len(tg.messages()); n != 1 {
		t.Errorf("target got %d, want 1", n)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	for _, c := range []Config{
		{Mode: "carrier-pigeon"},
		{Mode: ModeSmarthost},
		{Mode: ModeSmarthost, Smarthost: "nohostport"},
		{Mode: ModeSmarthost, Smarthost: "h:25", SmarthostTLS: "maybe"},
	} {
		if _, err := New(c, st, nil); err == nil {
			t.Errorf("New(%+v) succeeded", c)
		}
	}
	if _, err := New(Config{}, nil, nil); err == nil {
		t.Error("New with nil store succeeded")
	}
	r, err := New(Config{Hostname: "h"}, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.conf().Workers != DefaultWorkers || r.conf().MXPort != 25 || r.conf().Mode != ModeMX || r.Owner() == "" {
		t.Errorf("defaults not applied: %+v", r.conf())
	}
}
