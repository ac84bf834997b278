package smtpd

import (
	"bufio"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

// replyLineRe is the shape of every line the server may write.
var replyLineRe = regexp.MustCompile(`^[2-5][0-9][0-9][ -]`)

// FuzzSession drives whole sessions over a socket (chasquid
// FuzzConnection, mox FuzzServer). AUTH without TLS is allowed so that
// inputs can reach DATA; "{AUTH}" in an input stands for a valid AUTH PLAIN
// response. Invariants: every reply line is well formed, no command makes
// the server panic (go-smtp would answer 421 4.0.0) or echo an internal
// error, and the server still greets new connections afterwards.
func FuzzSession(f *testing.F) {
	for _, s := range []string{
		"EHLO a\r\nAUTH PLAIN {AUTH}\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nFrom: a@example.com\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
		"EHLO a\r\nAUTH PLAIN {AUTH}\r\nMAIL FROM:<a@example.com> BODY=8BITMIME SIZE=10\r\nRCPT TO:<b@example.net> NOTIFY=SUCCESS ORCPT=rfc822;b@example.net\r\nBDAT 5\r\nab\r\ncBDAT 0 LAST\r\n",
		"EHLO a\r\nAUTH PLAIN {AUTH}\r\nMAIL FROM:<> SMTPUTF8\r\nRCPT TO:<ü@ü.example>\r\nDATA\r\nX-MSYS-API: {\"cc\":[\"c@example.org\"],\"metadata\":{\"a\":[1]}}\r\n\r\n.\r\n",
		"EHLO a\r\nAUTH PLAIN {AUTH}\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nno header line\n.\nRSET\r\n.\r\nRSET\r\n",
		"EHLO a\r\nAUTH LOGIN\r\nU01UUF9JbmplY3Rpb24=\r\n*\r\nAUTH PLAIN =\r\nMAIL FROM:<a@b>\r\n",
		"HELO\r\nEHLO\r\nMAIL FROM:<a@example.com>\r\nBDAT x\r\nSTARTTLS\r\nNOOP\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\x00\xff\r\n",
	} {
		f.Add(s)
	}
	e := setupBudget(f, "sqlite", func(c *Config) {
		c.AllowInsecureAuth = true
		c.SubmissionsAddr = ""
		c.IdleTimeout = 5 * time.Second
	}, -1)
	authResp := b64("\x00SMTP_Injection\x00" + e.key)
	addr := e.srv.SubmissionAddr().String()
	f.Fuzz(func(t *testing.T, in string) {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = nc.Close() }()
		if err := nc.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		go func() {
			// Write everything, then end our side: the server reads EOF and
			// closes, whatever state the input left the session in.
			_, _ = io.WriteString(nc, strings.ReplaceAll(in, "{AUTH}", authResp))
			_ = nc.(*net.TCPConn).CloseWrite()
		}()
		sc := bufio.NewScanner(nc)
		sc.Buffer(make([]byte, 4096), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if !replyLineRe.MatchString(line) {
				t.Fatalf("malformed reply line %q", line)
			}
			if strings.HasPrefix(line, "421 4.0.0") || strings.Contains(line, "transaction failed") {
				t.Fatalf("internal error reply %q", line)
			}
		}
	})
	r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
	r.cmd(221, "QUIT")
}
