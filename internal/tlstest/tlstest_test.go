package tlstest

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
)

// TestHandshake checks that a client trusting the CA completes a real TLS
// handshake with a server presenting the leaf, and that a client trusting
// nothing is refused.
func TestHandshake(t *testing.T) {
	t.Parallel()
	p := New(t)
	l, err := tls.Listen("tcp", "127.0.0.1:0", p.Server())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.WriteString(c, "hello")
			}()
		}
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), p.Client())
	if err != nil {
		t.Fatalf("trusted client: %v", err)
	}
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "hello" {
		t.Fatalf("read = %q, %v", b, err)
	}
	_ = c.Close()

	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	u := tls.Client(raw, &tls.Config{ServerName: "localhost"})
	if err := u.Handshake(); err == nil {
		t.Fatal("client without the test CA completed the handshake")
	}
	_ = u.Close()
}
