package relay

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/internal/pgtest"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/internal/tlstest"
	"github.com/smtpgw/smtpgw/store"
)

func TestSmarthostTLSAndAuth(t *testing.T) {
	t.Parallel()
	pair := tlstest.New(t)
	cases := []struct {
		name      string
		implicit  bool
		mode      string
		pass      string
		trustCA   bool
		wantState string
		wantReply string   // substring of the last reply when deferred
		mechs     []string // offered AUTH mechanisms; nil: PLAIN
	}{
		{name: "login-only", mode: TLSStartTLS, pass: "secret", trustCA: true, wantState: store.StateDelivered, mechs: []string{"LOGIN"}},
		{name: "plain-and-login", mode: TLSStartTLS, pass: "secret", trustCA: true, wantState: store.StateDelivered, mechs: []string{"LOGIN", "PLAIN"}},
		{name: "login-wrong-password", mode: TLSStartTLS, pass: "nope", trustCA: true, wantState: store.StateDeferred, wantReply: "535", mechs: []string{"LOGIN"}},
		{name: "neither", mode: TLSStartTLS, pass: "secret", trustCA: true, wantState: store.StateDeferred, wantReply: "neither PLAIN nor LOGIN", mechs: []string{"CRAM-MD5"}},
		{name: "starttls", mode: TLSStartTLS, pass: "secret", trustCA: true, wantState: store.StateDelivered},
		{name: "implicit", implicit: true, mode: TLSImplicit, pass: "secret", trustCA: true, wantState: store.StateDelivered},
		{name: "wrong-password", mode: TLSStartTLS, pass: "nope", trustCA: true, wantState: store.StateDeferred, wantReply: "535"},
		{name: "untrusted-cert", mode: TLSStartTLS, pass: "secret", wantState: store.StateDeferred, wantReply: "certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tg := newTarget(t, targetOpts{tlsConfig: pair.Server(), implicitTLS: tc.implicit, requireTLS: true,
				authUser: "relayuser", authPass: "secret", authMechs: tc.mechs})
			st := storetest.Open(t, "sqlite")
			cfg := smarthostConfig(t, tg)
			cfg.SmarthostTLS = tc.mode
			cfg.SmarthostUsername = "relayuser"
			cfg.SmarthostPassword = tc.pass
			if tc.trustCA {
				cfg.SmarthostRootCAs = pair.Pool
			}
			cfg.RetryInitial = time.Hour // one attempt only
			cfg.RetryMax = time.Hour
			startRelay(t, cfg, st)
			m := enqueue(t, st, "s@src.test", []string{"bob@dest.test"}, testBody("s@src.test", tc.name))
			var fm *store.Message
			if tc.wantState == store.StateDelivered {
				fm = waitFinal(t, st, m.ID)
			} else {
				fm = waitAttempted(t, st, m.ID)
			}
			s, reply := rcptState(t, fm, "bob@dest.test")
			if s != tc.wantState || !strings.Contains(reply, tc.wantReply) {
				t.Fatalf("state %s (%s), want %s containing %q", s, reply, tc.wantState, tc.wantReply)
			}
			if tc.wantState == store.StateDelivered {
				got := tg.messages()
				if len(got) != 1 || !got[0].tls {
					t.Fatalf("want one delivery over TLS, got %+v", got)
				}
			}
		})
	}
}

func TestSmarthostWithoutStartTLSDefers(t *testing.T) {
	t.Parallel()
	tg := newTarget(t, targetOpts{}) // offers no STARTTLS
	st := storetest.Open(t, "sqlite")
	cfg := smarthostConfig(t, tg)
	cfg.SmarthostTLS = TLSStartTLS
	cfg.RetryInitial, cfg.RetryMax = time.Hour, time.Hour
	startRelay(t, cfg, st)
	m := enqueue(t, st, "s@src.test", []string{"bob@dest.test"}, testBody("s@src.test", "notls"))
	fm := waitAttempted(t, st, m.ID)
	if s, reply := rcptState(t, fm, "bob@dest.test"); s != store.StateDeferred || !strings.Contains(reply, "STARTTLS") {
		t.Fatalf("state %s (%s), want deferred for missing STARTTLS", s, reply)
	}
	if n := len(tg.messages()); n != 0 {
		t.Errorf("target got %d messages in plain text", n)
	}
}

// waitAttempted polls until every recipient of id has been attempted once.
func waitAttempted(t testing.TB, st store.Store, id string) *store.Message {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := st.GetMessage(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		done := true
		for _, r := range m.Recipients {
			done = done && r.Attempts > 0
		}
		if done {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s not attempted: %s", id, fmtStates(m))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSmarthostConcurrencyAndReuse(t *testing.T) {
	t.Parallel()
	var cur, peak atomic.Int32
	tg := newTarget(t, targetOpts{data: func(int) error {
		n := cur.Add(1)
		defer cur.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(2 * time.Millisecond) // widen the window in which overlap would show
		return nil
	}})
	st := storetest.Open(t, "sqlite")
	cfg := smarthostConfig(t, tg)
	cfg.Workers = 8
	cfg.SmarthostConcurrency = 1
	cfg.PerDomainConcurrency = 8 // MX mode only: no effect here
	startRelay(t, cfg, st)
	const n = 30
	var ids []string
	for i := range n {
		ids = append(ids, enqueue(t, st, "s@src.test", []string{fmt.Sprintf("r%d@dest.test", i)},
			testBody("s@src.test", fmt.Sprintf("c%d", i))).ID)
	}
	for _, id := range ids {
		waitFinal(t, st, id)
	}
	if p := peak.Load(); p != 1 {
		t.Errorf("peak parallel transactions %d, want 1 with SmarthostConcurrency=1", p)
	}
	if conns := tg.connCount(); conns >= n {
		t.Errorf("%d connections for %d messages: connections are not reused", conns, n)
	}
	if got := len(tg.messages()); got != n {
		t.Errorf("target got %d, want %d", got, n)
	}
}

func TestDelayedAndRelayedDSN(t *testing.T) {
	t.Parallel()
	tg := newTarget(t, targetOpts{noDSN: true, rcpt: func(to string, n int) error {
		if to == "slow@dest.test" && n == 0 {
			return smtpErr(451, smtp.EnhancedCode{4, 2, 1}, "busy")
		}
		return nil
	}})
	st := storetest.Open(t, "sqlite")
	startRelay(t, smarthostConfig(t, tg), st)
	m := enqueue(t, st, "s@src.test", []string{"slow@dest.test"}, testBody("s@src.test", "notify"),
		func(m *store.Message) { m.Recipients[0].DSNNotify = "SUCCESS,DELAY" })
	fm := waitFinal(t, st, m.ID)
	if s, _ := rcptState(t, fm, "slow@dest.test"); s != store.StateDelivered {
		t.Fatalf("state %s, want delivered", s)
	}
	got := tg.waitFor(t, "original and two DSNs", func(g []received) bool { return len(g) >= 3 })
	actions := map[string]bool{}
	for _, g := range got {
		if g.from != "" {
			continue
		}
		_, status, _ := dsnReport(t, g.data)
		for _, a := range []string{"delayed", "relayed"} {
			if strings.Contains(status, "Action: "+a) {
				actions[a] = true
			}
		}
		if strings.Contains(status, "Action: delayed") && !strings.Contains(status, "Will-Retry-Until:") {
			t.Errorf("delayed DSN lacks Will-Retry-Until:\n%s", status)
		}
	}
	if !actions["delayed"] || !actions["relayed"] {
		t.Errorf("DSN actions %v, want delayed and relayed", actions)
	}
}

func TestNotifyPassedToDSNCapableServer(t *testing.T) {
	t.Parallel()
	tg := newTarget(t, targetOpts{})
	st := storetest.Open(t, "sqlite")
	startRelay(t, smarthostConfig(t, tg), st)
	m := enqueue(t, st, "s@src.test", []string{"bob@dest.test"}, testBody("s@src.test", "pass"),
		func(m *store.Message) {
			m.Recipients[0].DSNNotify = "SUCCESS,FAILURE"
			m.Recipients[0].DSNOrcpt = "rfc822;Bob@Dest.test"
		})
	waitFinal(t, st, m.ID)
	got := tg.messages()
	if len(got) != 1 {
		t.Fatalf("target got %d messages, want 1 (no relayed DSN: the server offers DSN)", len(got))
	}
	o := got[0].rcptOpts[0]
	if len(o.Notify) != 2 || o.Notify[0] != smtp.DSNNotifySuccess || o.Notify[1] != smtp.DSNNotifyFailure {
		t.Errorf("NOTIFY %v, want SUCCESS,FAILURE", o.Notify)
	}
	if o.OriginalRecipient != "Bob@Dest.test" || o.OriginalRecipientType != smtp.DSNAddressTypeRFC822 {
		t.Errorf("ORCPT %q;%q", o.OriginalRecipientType, o.OriginalRecipient)
	}
}

func TestTwoRelaysShareOnePostgres(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	st := storetest.OpenURL(t, url, "")
	tg := newTarget(t, targetOpts{})
	const n = 300
	var wg sync.WaitGroup
	errs := make(chan error, n)
	ids := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := &store.Message{ID: store.NewID(), MailFrom: "s@src.test",
				Body:       []byte(testBody("s@src.test", fmt.Sprintf("m%03d", i))),
				Recipients: []*store.Recipient{{Address: fmt.Sprintf("r%d@d%d.test", i, i%7), Domain: fmt.Sprintf("d%d.test", i%7)}}}
			ids[i] = m.ID
			errs <- st.Enqueue(context.Background(), m)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("enqueue: %v", err)
		}
	}
	// The second relay gets its own store handle: another node.
	st2 := storetest.OpenURL(t, url, "")
	for i, s := range []store.Store{st, st2} {
		cfg := smarthostConfig(t, tg)
		cfg.Owner = fmt.Sprintf("node-%d", i)
		cfg.Workers = 8
		startRelay(t, cfg, s)
	}
	tg.waitFor(t, fmt.Sprintf("%d messages", n), func(g []received) bool { return len(g) >= n })
	for _, id := range ids {
		waitFinal(t, st, id)
	}
	got := tg.messages()
	bySubject := countBy(got, func(r received) string { return headerValue(r.data, "Subject") })
	if len(got) != n || len(bySubject) != n {
		t.Errorf("target got %d messages with %d distinct subjects, want %d and %d", len(got), len(bySubject), n, n)
	}
	for s, c := range bySubject {
		if c != 1 {
			t.Errorf("message %s delivered %d times", s, c)
		}
	}
}

func TestReusedConnectionClosedByServer(t *testing.T) {
	t.Parallel()
	// The server takes one message per connection, then answers 421 as if
	// it had timed the idle connection out.
	var closed atomic.Int32
	tg := newTarget(t, targetOpts{mail: func(n int) error {
		if n > 0 {
			closed.Add(1)
			return smtpErr(421, smtp.EnhancedCode{4, 4, 2}, "idle too long, closing")
		}
		return nil
	}})
	st := storetest.Open(t, "sqlite")
	cfg := smarthostConfig(t, tg)
	cfg.SmarthostConcurrency = 1
	startRelay(t, cfg, st)
	a := enqueue(t, st, "s@src.test", []string{"a@dest.test"}, testBody("s@src.test", "first"))
	waitFinal(t, st, a.ID)
	b := enqueue(t, st, "s@src.test", []string{"b@dest.test"}, testBody("s@src.test", "second"))
	fb := waitFinal(t, st, b.ID)
	if s, reply := rcptState(t, fb, "b@dest.test"); s != store.StateDelivered {
		t.Fatalf("second message: %s (%s), want delivered", s, reply)
	}
	if ev := eventTypes(t, st, b.ID, "b@dest.test"); strings.Join(ev, ",") != "injection,delivery" {
		t.Errorf("events %v: the 421 on a reused connection should be retried at once on a new one", ev)
	}
	if conns := tg.connCount(); conns != 2 || closed.Load() != 1 {
		t.Errorf("%d connections and %d 421 replies, want 2 and 1 (reuse, 421, a fresh connection)", conns, closed.Load())
	}
}
