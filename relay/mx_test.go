package relay

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/internal/tlstest"
	"github.com/smtpgw/smtpgw/store"
)

// newDNS serves the given resource records (zone-file lines) on a UDP port
// of 127.0.0.1 and returns its address. Names with no record answer
// NXDOMAIN; known names without a record of the asked type answer NODATA.
func newDNS(t testing.TB, lines ...string) string {
	t.Helper()
	records := make(map[string][]dns.RR)
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			t.Fatalf("dns record %q: %v", l, err)
		}
		name := strings.ToLower(rr.Header().Name)
		records[name] = append(records[name], rr)
	}
	var mu sync.Mutex
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		if len(req.Question) == 1 {
			q := req.Question[0]
			mu.Lock()
			rrs, ok := records[strings.ToLower(q.Name)]
			mu.Unlock()
			if !ok {
				m.Rcode = dns.RcodeNameError
			}
			for _, rr := range rrs {
				if rr.Header().Rrtype == q.Qtype {
					m.Answer = append(m.Answer, rr)
				}
			}
		}
		_ = w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("dns listen: %v", err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: mux, NotifyStartedFunc: func() { close(started) }}
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// mxConfig is a relay config in MX mode using the test DNS server and port.
func mxConfig(t testing.TB, dnsAddr string, port int) Config {
	cfg := smarthostConfig(t, &target{})
	cfg.Mode = ModeMX
	cfg.Smarthost = ""
	cfg.DNSResolver = dnsAddr
	cfg.MXPort = port
	return cfg
}

func TestMXMode(t *testing.T) {
	t.Parallel()
	pair := tlstest.New(t)
	tg := newTarget(t, targetOpts{tlsConfig: pair.Server()})
	dnsAddr := newDNS(t,
		// Preferred MX refuses connections; the second answers.
		"mx.test. 60 IN MX 20 mail.mx.test.",
		"mx.test. 60 IN MX 10 dead.mx.test.",
		"dead.mx.test. 60 IN A 127.0.0.2",
		"mail.mx.test. 60 IN A 127.0.0.1",
		// No MX: the domain's own address (RFC 5321 §5.1).
		"afallback.test. 60 IN A 127.0.0.1",
		// Null MX (RFC 7505).
		"nullmx.test. 60 IN MX 0 .",
		// Internationalised domain, looked up as its A-label.
		"xn--bcher-kva.test. 60 IN MX 10 mail.mx.test.",
		// Exists, but has neither MX nor address.
		"nomail.test. 60 IN TXT \"v=spf1 -all\"",
	)
	st := storetest.Open(t, "sqlite")
	startRelay(t, mxConfig(t, dnsAddr, tg.port), st)

	m := enqueue(t, st, "", []string{"a@mx.test", "b@afallback.test", "c@nullmx.test", "d@nxdomain.test", "e@nomail.test",
		"f@[127.0.0.1]", "g@bücher.test"},
		testBody("s@src.test", "mx"), func(m *store.Message) { m.SMTPUTF8 = true })
	fm := waitFinal(t, st, m.ID)
	want := map[string]string{
		"a@mx.test":        store.StateDelivered,
		"b@afallback.test": store.StateDelivered,
		"c@nullmx.test":    store.StateBounced,
		"d@nxdomain.test":  store.StateBounced,
		"e@nomail.test":    store.StateBounced,
		"f@[127.0.0.1]":    store.StateDelivered,
		"g@bücher.test":    store.StateDelivered,
	}
	for addr, w := range want {
		if s, reply := rcptState(t, fm, addr); s != w {
			t.Errorf("%s: %s (%s), want %s", addr, s, reply, w)
		}
	}
	if _, reply := rcptState(t, fm, "c@nullmx.test"); !strings.Contains(reply, "5.1.10") {
		t.Errorf("null MX reply %q, want 5.1.10", reply)
	}
	if _, reply := rcptState(t, fm, "d@nxdomain.test"); !strings.Contains(reply, "5.1.2") {
		t.Errorf("NXDOMAIN reply %q, want 5.1.2", reply)
	}
	got := tg.messages()
	if len(got) != 4 {
		t.Fatalf("target got %d messages, want 4 (one per deliverable domain)", len(got))
	}
	for _, g := range got {
		if !g.tls {
			t.Errorf("delivery to %v was not over STARTTLS, which the MX offered", g.to)
		}
	}
}

func TestMXTLSHandshakeFailureFallsBackToPlain(t *testing.T) {
	t.Parallel()
	pair := tlstest.New(t)
	srvTLS := pair.Server()
	srvTLS.MaxVersion = tls.VersionTLS11 // the relay requires TLS 1.2: the handshake fails
	tg := newTarget(t, targetOpts{tlsConfig: srvTLS})
	dnsAddr := newDNS(t, "old.test. 60 IN MX 10 mail.old.test.", "mail.old.test. 60 IN A 127.0.0.1")
	st := storetest.Open(t, "sqlite")
	startRelay(t, mxConfig(t, dnsAddr, tg.port), st)
	m := enqueue(t, st, "s@src.test", []string{"a@old.test"}, testBody("s@src.test", "oldtls"))
	fm := waitFinal(t, st, m.ID)
	if s, reply := rcptState(t, fm, "a@old.test"); s != store.StateDelivered {
		t.Fatalf("state %s (%s), want delivered in plain text", s, reply)
	}
	got := tg.messages()
	if len(got) != 1 || got[0].tls {
		t.Fatalf("want one plain-text delivery, got %+v", got)
	}
}

func TestMXTemporaryDNSFailureDefers(t *testing.T) {
	t.Parallel()
	// A resolver address where nothing answers: lookups time out (SERVFAIL-like).
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	st := storetest.Open(t, "sqlite")
	cfg := mxConfig(t, pc.LocalAddr().String(), 2525)
	cfg.ConnectTimeout = 300 * time.Millisecond // bounds the lookup
	r, err := New(cfg, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.lookupRoutes(t.Context(), "slow.test")
	var pe *permanentError
	if err == nil || errors.As(err, &pe) {
		t.Fatalf("lookup with a silent resolver: %v, want a temporary error", err)
	}
	if !strings.HasPrefix(replyOf(err), "451 4.4.3") {
		t.Errorf("reply %q, want 451 4.4.3", replyOf(err))
	}
}
