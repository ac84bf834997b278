package relay

import (
	"bytes"
	"net/textproto"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/store"
)

// TestPipelineCommands: the pipelined MAIL and RCPT carry the parameters
// go-smtp's client would send, only those the server offers, xtext-encoded.
func TestPipelineCommands(t *testing.T) {
	t.Parallel()
	all := &conn{ext: map[string]bool{"8BITMIME": true, "SIZE": true, "DSN": true, "SMTPUTF8": true, "PIPELINING": true}}
	bare := &conn{ext: map[string]bool{"PIPELINING": true}}
	opts := &smtp.MailOptions{Size: 1234, UTF8: true, Return: smtp.DSNReturnHeaders, EnvelopeID: "env+42 x=y"}
	if got, want := mailCommand(all, "s@src.test", opts), "MAIL FROM:<s@src.test> BODY=8BITMIME SIZE=1234 SMTPUTF8 RET=HDRS ENVID=env+2B42+20x+3Dy"; got != want {
		t.Errorf("MAIL\n got %q\nwant %q", got, want)
	}
	if got, want := mailCommand(bare, "", &smtp.MailOptions{Size: 1234}), "MAIL FROM:<>"; got != want {
		t.Errorf("MAIL to a bare server\n got %q\nwant %q", got, want)
	}
	rc := &store.Claimed{Recipient: store.Recipient{Address: "b@dest.test", DSNNotify: "SUCCESS,FAILURE", DSNOrcpt: "rfc822;B+x@dest.test"}}
	if got, want := rcptCommand(all, rc), "RCPT TO:<b@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=RFC822;B+2Bx@dest.test"; got != want {
		t.Errorf("RCPT\n got %q\nwant %q", got, want)
	}
	if got, want := rcptCommand(bare, rc), "RCPT TO:<b@dest.test>"; got != want {
		t.Errorf("RCPT to a server without DSN\n got %q\nwant %q", got, want)
	}
	utf8 := &store.Claimed{Recipient: store.Recipient{Address: "b@dest.test", DSNOrcpt: "utf-8;bé@dest.test"}}
	if canPipeline(all, "s@src.test", []*store.Claimed{rc, utf8}) {
		t.Error("a UTF-8 ORCPT must go through go-smtp's encoder")
	}
	if !canPipeline(all, "s@src.test", []*store.Claimed{rc}) {
		t.Error("a plain group must go pipelined")
	}
	if canPipeline(&conn{ext: map[string]bool{"DSN": true}}, "s@src.test", []*store.Claimed{rc}) {
		t.Error("pipelined to a server that does not offer PIPELINING")
	}
}

// TestToSMTPError: a refusal read from a pipelined group is the
// *smtp.SMTPError go-smtp's client would return.
func TestToSMTPError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		msg  string
		want smtp.SMTPError
	}{
		{"5.1.1 no such user", smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}},
		{"4.5.3 too many\n4.5.3 recipients", smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "too many\nrecipients"}},
		{"try later", smtp.SMTPError{Code: 451, Message: "try later"}},
		{"x.y.z bad code", smtp.SMTPError{Code: 451, Message: "x.y.z bad code"}},
	} {
		got := toSMTPError(&textproto.Error{Code: tc.want.Code, Msg: tc.msg})
		if *got != tc.want {
			t.Errorf("%q: got %+v, want %+v", tc.msg, *got, tc.want)
		}
	}
}

// TestPipelinedRefusalsKeepTheConnection: refusals inside pipelined groups
// (a MAIL, every RCPT, one RCPT of two) leave the connection in step: the
// next transactions on it succeed, and each recipient gets its own answer;
// with the message sent as BDAT (CHUNKING offered) and with DATA.
func TestPipelinedRefusalsKeepTheConnection(t *testing.T) {
	t.Parallel()
	for _, chunking := range []bool{true, false} {
		t.Run(map[bool]string{true: "bdat", false: "data"}[chunking], func(t *testing.T) {
			t.Parallel()
			tg := newTarget(t, targetOpts{
				noChunking: !chunking,
				mail: func(n int) error {
					if n == 0 {
						return smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "not now")
					}
					return nil
				},
				rcpt: func(to string, n int) error {
					if strings.HasPrefix(to, "bad") {
						return smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
					}
					return nil
				},
			})
			st := relayInOrder(t, tg)

			a := enqueue(t, st, "s@src.test", []string{"a@dest.test"}, testBody("s@src.test", "first"))
			fa := waitFinal(t, st, a.ID) // MAIL refused once, then retried
			b := enqueue(t, st, "s@src.test", []string{"bad1@dest.test", "bad2@dest.test"}, testBody("s@src.test", "all-bad"))
			fb := waitFinal(t, st, b.ID)
			c := enqueue(t, st, "s@src.test", []string{"bad3@dest.test", "c@dest.test"}, testBody("s@src.test", "mixed"))
			fc := waitFinal(t, st, c.ID)

			if s, reply := rcptState(t, fa, "a@dest.test"); s != store.StateDelivered {
				t.Errorf("a: %s (%s), want delivered after the refused MAIL", s, reply)
			}
			for _, addr := range []string{"bad1@dest.test", "bad2@dest.test"} {
				if s, reply := rcptState(t, fb, addr); s != store.StateBounced || !strings.HasPrefix(reply, "550 5.1.1") {
					t.Errorf("%s: %s (%s), want bounced with the 550", addr, s, reply)
				}
			}
			if s, reply := rcptState(t, fc, "bad3@dest.test"); s != store.StateBounced {
				t.Errorf("bad3: %s (%s), want bounced", s, reply)
			}
			if s, reply := rcptState(t, fc, "c@dest.test"); s != store.StateDelivered {
				t.Errorf("c: %s (%s), want delivered", s, reply)
			}
			var tos []string // of the messages relayed, DSNs (from <>) aside
			for _, m := range tg.messages() {
				if m.from != "" {
					tos = append(tos, strings.Join(m.to, ","))
				}
			}
			if strings.Join(tos, " ") != "a@dest.test c@dest.test" {
				t.Errorf("the server took messages to %q, want first (to a) and mixed (to c only)", tos)
			}
			if conns := tg.connCount(); conns != 1 {
				t.Errorf("%d connections, want 1: a refusal inside a pipelined group must not spoil the connection", conns)
			}
		})
	}
}

// TestRelayChunking: to a server that offers CHUNKING the message goes as
// one BDAT LAST chunk, byte for byte (leading dots are not stuffed); to one
// that does not, or with relay.disable_chunking, as DATA, dot-stuffed, and
// received the same. A refused transfer is that message's answer and
// leaves the connection in step for the next one.
func TestRelayChunking(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"bdat", "data", "disabled"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			chunking := mode == "bdat"
			tg := newTarget(t, targetOpts{
				noChunking: mode == "data",
				data: func(n int) error {
					if n == 0 {
						return smtpErr(554, smtp.EnhancedCode{5, 6, 0}, "content refused")
					}
					return nil
				},
			})
			st := relayInOrder(t, tg, func(c *Config) { c.DisableChunking = mode == "disabled" })

			refused := enqueue(t, st, "s@src.test", []string{"a@dest.test"}, testBody("s@src.test", "refused"))
			fr := waitFinal(t, st, refused.ID)
			if s, reply := rcptState(t, fr, "a@dest.test"); s != store.StateBounced || !strings.HasPrefix(reply, "554 5.6.0") {
				t.Errorf("refused: %s (%s), want bounced with the 554", s, reply)
			}
			body := testBody("s@src.test", "dots") + ".\r\n..two\r\n.three.\r\nlast line\r\n"
			m := enqueue(t, st, "s@src.test", []string{"b@dest.test"}, body)
			if s, reply := rcptState(t, waitFinal(t, st, m.ID), "b@dest.test"); s != store.StateDelivered {
				t.Fatalf("dots: %s (%s), want delivered", s, reply)
			}
			var got []byte
			for _, r := range tg.messages() {
				if r.from == "s@src.test" {
					got = r.data
				}
			}
			if string(got) != body {
				t.Errorf("the server received\n%q\nwant\n%q", got, body)
			}
			tg.mu.Lock()
			bdats, datas := tg.bdatCmds, tg.dataCmds
			tg.mu.Unlock()
			// DSNs for the refused message go the same way.
			if chunking && (bdats < 2 || datas != 0) || !chunking && (bdats != 0 || datas < 2) {
				t.Errorf("%d BDAT and %d DATA commands; CHUNKING offered: %v", bdats, datas, chunking)
			}
			if conns := tg.connCount(); conns != 1 {
				t.Errorf("%d connections, want 1", conns)
			}
		})
	}
}

// TestCanChunk: a body goes as BDAT only to a server offering CHUNKING,
// up to chunkMax, and with CRLF line ends only.
func TestCanChunk(t *testing.T) {
	chunking := &conn{ext: map[string]bool{"PIPELINING": true, "CHUNKING": true}}
	plain := &conn{ext: map[string]bool{"PIPELINING": true}}
	line := []byte("a line of the message\r\n")
	big := bytes.Repeat(line, chunkMax/len(line)+1)
	for _, tc := range []struct {
		name string
		c    *conn
		body []byte
		want bool
	}{
		{"small", chunking, line, true},
		{"empty", chunking, nil, true},
		{"at the limit", chunking, big[:chunkMax-chunkMax%len(line)], true},
		{"over the limit", chunking, big, false},
		{"bare LF", chunking, []byte("a\nb\r\n"), false},
		{"no CHUNKING", plain, line, false},
	} {
		if got := canChunk(tc.c, tc.body); got != tc.want {
			t.Errorf("%s: canChunk %v, want %v", tc.name, got, tc.want)
		}
	}
}
