// Package dnstest serves DNS records on a UDP port of 127.0.0.1 for tests
// (github.com/miekg/dns), so that code with a configurable resolver can be
// tested without the network. Names with no record answer NXDOMAIN; known
// names without a record of the asked type answer NODATA.
package dnstest

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Server is a running DNS server; records may be added while it runs.
type Server struct {
	t       testing.TB
	addr    string
	mu      sync.Mutex
	records map[string][]dns.RR
}

// New starts a server with the given resource records (zone-file lines,
// e.g. `example.com. 300 IN TXT "v=spf1 -all"`); it stops when the test
// ends.
func New(t testing.TB, lines ...string) *Server {
	t.Helper()
	s := &Server{t: t, records: make(map[string][]dns.RR)}
	s.Add(lines...)
	mux := dns.NewServeMux()
	mux.HandleFunc(".", s.answer)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("dnstest: listen: %v", err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: mux, NotifyStartedFunc: func() { close(started) }}
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	s.addr = pc.LocalAddr().String()
	return s
}

// Addr is the server's "127.0.0.1:port".
func (s *Server) Addr() string { return s.addr }

// Add adds records (zone-file lines).
func (s *Server) Add(lines ...string) {
	s.t.Helper()
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			s.t.Fatalf("dnstest: record %q: %v", l, err)
		}
		name := strings.ToLower(rr.Header().Name)
		s.mu.Lock()
		s.records[name] = append(s.records[name], rr)
		s.mu.Unlock()
	}
}

// TXT returns a zone-file line for a TXT record at name with value split
// into strings of at most 255 bytes (RFC 1035 §3.3.14), as long DKIM keys
// are published.
func TXT(name, value string) string {
	var parts []string
	for len(value) > 255 {
		parts = append(parts, `"`+value[:255]+`"`)
		value = value[255:]
	}
	parts = append(parts, `"`+value+`"`)
	return dns.Fqdn(name) + " 300 IN TXT " + strings.Join(parts, " ")
}

func (s *Server) answer(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) == 1 {
		q := req.Question[0]
		s.mu.Lock()
		rrs, ok := s.records[strings.ToLower(q.Name)]
		s.mu.Unlock()
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
}
