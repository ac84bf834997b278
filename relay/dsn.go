package relay

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/emersion/go-message"

	"github.com/smtpgw/smtpgw/store"
)

// DSN actions (https://tools.ietf.org/html/rfc3464#section-2.3.3).
const (
	actionFailed  = "failed"
	actionDelayed = "delayed"
	actionRelayed = "relayed"
)

// dsnRecipient is one recipient reported in a DSN.
type dsnRecipient struct {
	address        string
	orcpt          string // ORCPT as stored ("rfc822;addr" or "addr"), "" if none
	action         string
	status         string // enhanced status code, e.g. "5.1.1"
	reply          string // diagnostic: the SMTP reply or local reason
	remoteMTA      string // "" for local decisions
	lastAttempt    time.Time
	willRetryUntil time.Time // for delayed
}

// dsnFor decides whether outcome out of recipient c is reported to the
// sender, following its NOTIFY (https://tools.ietf.org/html/rfc3461#section-4.1):
//   - bounced or expired: a "failed" DSN unless NOTIFY excludes FAILURE
//     (NOTIFY=NEVER among others);
//   - deferred: a "delayed" DSN on the first deferral only, and only when
//     NOTIFY names DELAY;
//   - delivered: a "relayed" DSN when NOTIFY names SUCCESS and the next hop
//     did not offer DSN (when it did, NOTIFY went along and it reports;
//     https://tools.ietf.org/html/rfc3461#section-6.2.2).
func dsnFor(c *store.Claimed, out store.Outcome, rs result, now, expireAt time.Time) (dsnRecipient, bool) {
	d := dsnRecipient{address: c.Address, orcpt: c.DSNOrcpt, reply: out.Reply, remoteMTA: rs.remoteMTA, lastAttempt: now}
	switch out.State {
	case store.StateBounced, store.StateExpired:
		if !notifies(c.DSNNotify, "FAILURE") {
			return d, false
		}
		d.action = actionFailed
		d.status = statusOf(out.Reply, '5', "5.0.0")
		if out.State == store.StateExpired {
			d.status = "5.4.7"
		}
	case store.StateDeferred:
		if c.Attempts > 0 || !notifies(c.DSNNotify, "DELAY") {
			return d, false
		}
		d.action = actionDelayed
		d.status = statusOf(out.Reply, '4', "4.0.0")
		d.willRetryUntil = expireAt
	case store.StateDelivered:
		if rs.dsnNotify || !notifies(c.DSNNotify, "SUCCESS") {
			return d, false
		}
		d.action = actionRelayed
		d.status = statusOf(out.Reply, '2', "2.0.0")
	default:
		return d, false
	}
	return d, true
}

var enhancedRE = regexp.MustCompile(`^\d{3} ([245]\.\d{1,3}\.\d{1,3})\b`)

// statusOf returns the enhanced status code of reply if it has one of the
// wanted class, else def.
func statusOf(reply string, class byte, def string) string {
	if m := enhancedRE.FindStringSubmatch(reply); m != nil && m[1][0] == class {
		return m[1]
	}
	return def
}

// buildDSN builds the delivery status notification (RFC 3464) for the
// reported recipients of one message: a multipart/report with a
// human-readable part, a message/delivery-status part, and the original
// message's header (RET=HDRS or none) or the whole message (RET=FULL, for
// failures). It is sent from the null sender to the original envelope sender.
func buildDSN(hostname string, orig *store.Claimed, rcpts []dsnRecipient, body []byte, now time.Time) (*store.Message, error) {
	id := store.NewID()
	failed, delayed := false, false
	for _, d := range rcpts {
		failed = failed || d.action == actionFailed
		delayed = delayed || d.action == actionDelayed
	}
	subject := "Successful Mail Delivery Report"
	switch {
	case failed:
		subject = "Undelivered Mail Returned to Sender"
	case delayed:
		subject = "Delayed Mail (still being retried)"
	}
	utf8 := !isASCII(orig.MailFrom)
	for _, d := range rcpts {
		utf8 = utf8 || !isASCII(d.address)
	}

	var h message.Header
	h.Set("From", "Mail Delivery System <MAILER-DAEMON@"+hostname+">")
	h.Set("To", "<"+orig.MailFrom+">")
	h.Set("Subject", subject)
	h.Set("Date", now.Format(time.RFC1123Z))
	h.Set("Message-ID", "<"+id+"@"+hostname+">")
	// https://tools.ietf.org/html/rfc3834#section-5
	h.Set("Auto-Submitted", "auto-replied")
	h.SetContentType("multipart/report", map[string]string{"report-type": "delivery-status"})

	var buf bytes.Buffer
	w, err := message.CreateWriter(&buf, h)
	if err != nil {
		return nil, fmt.Errorf("build DSN: %w", err)
	}
	if err := dsnPart(w, "text/plain", map[string]string{"charset": "utf-8"}, "quoted-printable",
		humanText(hostname, rcpts)); err != nil {
		return nil, err
	}
	statusType := "message/delivery-status"
	if utf8 {
		// https://tools.ietf.org/html/rfc6533#section-6.2
		statusType = "message/global-delivery-status"
	}
	if err := dsnPart(w, statusType, nil, cte(utf8), statusText(hostname, orig, rcpts, utf8)); err != nil {
		return nil, err
	}
	if len(body) > 0 {
		if failed && strings.EqualFold(orig.DSNRet, "FULL") {
			err = dsnPart(w, "message/rfc822", nil, cte(!isASCII(string(body))), body)
		} else {
			hdr := headerSection(body)
			err = dsnPart(w, "text/rfc822-headers", nil, cte(!isASCII(string(hdr))), hdr)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("build DSN: %w", err)
	}
	out := buf.Bytes()
	m := &store.Message{
		ID:         id,
		Subaccount: orig.Subaccount,
		MailFrom:   "",
		Body:       out,
		SMTPUTF8:   utf8,
		CreatedAt:  now,
		Recipients: []*store.Recipient{{Address: orig.MailFrom, Domain: domainOf(orig.MailFrom)}},
	}
	if !isASCII(string(out)) {
		m.BodyType = "8BITMIME"
	}
	return m, nil
}

// cte is the transfer encoding of a part that may hold 8-bit text.
func cte(eightBit bool) string {
	if eightBit {
		return "8bit"
	}
	return "7bit"
}

// dsnPart writes one part of the report.
func dsnPart(w *message.Writer, typ string, params map[string]string, enc string, content []byte) error {
	var ph message.Header
	ph.SetContentType(typ, params)
	ph.Set("Content-Transfer-Encoding", enc)
	pw, err := w.CreatePart(ph)
	if err != nil {
		return fmt.Errorf("build DSN: %s part: %w", typ, err)
	}
	if _, err := pw.Write(content); err != nil {
		return fmt.Errorf("build DSN: %s part: %w", typ, err)
	}
	if err := pw.Close(); err != nil {
		return fmt.Errorf("build DSN: %s part: %w", typ, err)
	}
	return nil
}

// humanText is the first, human-readable part.
func humanText(hostname string, rcpts []dsnRecipient) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "This is the mail system at host %s.\r\n\r\n", hostname)
	var failed, delayed, relayed []dsnRecipient
	for _, d := range rcpts {
		switch d.action {
		case actionFailed:
			failed = append(failed, d)
		case actionDelayed:
			delayed = append(delayed, d)
		default:
			relayed = append(relayed, d)
		}
	}
	list := func(intro string, ds []dsnRecipient) {
		if len(ds) == 0 {
			return
		}
		b.WriteString(intro + "\r\n\r\n")
		for _, d := range ds {
			fmt.Fprintf(&b, "<%s>: %s\r\n", d.address, d.reply)
		}
		b.WriteString("\r\n")
	}
	list("Your message could not be delivered to the following recipients. This is a permanent error.", failed)
	list("Your message has not been delivered yet to the following recipients. Delivery will be retried; you do not need to resend it.", delayed)
	list("Your message was relayed to the following recipients' mail systems, which do not send delivery notifications.", relayed)
	b.WriteString("The delivery report and the original message's header follow.\r\n")
	return []byte(b.String())
}

// statusText is the message/delivery-status part
// (https://tools.ietf.org/html/rfc3464#section-2.1).
func statusText(hostname string, orig *store.Claimed, rcpts []dsnRecipient, utf8 bool) []byte {
	var b strings.Builder
	field := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, oneLine(v)) }
	field("Reporting-MTA", "dns; "+hostname)
	if orig.DSNEnvID != "" {
		field("Original-Envelope-Id", orig.DSNEnvID)
	}
	field("Arrival-Date", orig.CreatedAt.Format(time.RFC1123Z))
	for _, d := range rcpts {
		b.WriteString("\r\n")
		field("Final-Recipient", addrType(d.address, utf8)+"; "+d.address)
		if d.orcpt != "" {
			typ, addr := parseOrcpt(d.orcpt)
			field("Original-Recipient", strings.ToLower(typ)+"; "+addr)
		}
		field("Action", d.action)
		field("Status", d.status)
		if d.remoteMTA != "" {
			field("Remote-MTA", "dns; "+d.remoteMTA)
		}
		if d.reply != "" {
			field("Diagnostic-Code", "smtp; "+d.reply)
		}
		field("Last-Attempt-Date", d.lastAttempt.Format(time.RFC1123Z))
		if !d.willRetryUntil.IsZero() {
			field("Will-Retry-Until", d.willRetryUntil.Format(time.RFC1123Z))
		}
	}
	return []byte(b.String())
}

// addrType is the address type of a DSN recipient field.
func addrType(addr string, utf8 bool) string {
	if utf8 && !isASCII(addr) {
		return "utf-8"
	}
	return "rfc822"
}

// headerSection returns the header of a message, up to and including the
// blank line's CRLF that ends it (the whole message if it has no body).
func headerSection(body []byte) []byte {
	if i := bytes.Index(body, []byte("\r\n\r\n")); i >= 0 {
		return body[:i+2]
	}
	if i := bytes.Index(body, []byte("\n\n")); i >= 0 {
		return body[:i+1]
	}
	return body
}

// isASCII reports whether s is 7-bit.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
