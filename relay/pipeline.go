package relay

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/store"
)

// Pipelining (RFC 2920).
//
// go-smtp's client sends a command and waits for its reply before the
// next, so a message cost four round trips to the next hop (MAIL, RCPT,
// DATA, the body), each a write and a read system call and a wake-up.
// With a server that offers PIPELINING the relay sends MAIL, every RCPT
// and DATA in one write and reads their replies in order, then the body
// with its ending dot in one more write: two round trips. A server that
// also offers CHUNKING (RFC 3030) gets the message as BDAT ... LAST at the
// end of the group, as it is (no dot-stuffing): one write and one round
// trip per message. go-smtp still
// does the greeting, EHLO, STARTTLS, AUTH, RSET and QUIT on the same
// connection; both write to the connection's flushConn (so the order of
// writes holds), and the replies of a pipelined group are read here to the
// last one, so go-smtp's reader never sees them. (go-smtp cannot be told to
// pipeline; we do not fork it.)

// pipeReplies are the replies to one pipelined group: nil for a 250 (354
// for DATA), else the error, an *smtp.SMTPError for a reply.
type pipeReplies struct {
	mail     error
	rcpts    []error
	data     error  // DATA's reply, or with the message sent as BDAT, BDAT's
	final    string // with BDAT: its 250 reply, on one line
	answered bool   // MAIL's reply was read (the server took the group)
}

// chunkMax is the largest body sent as BDAT in the pipelined group. The
// body goes before any reply is read, so if the server refuses MAIL or
// every RCPT it is sent (and discarded) for nothing; a larger one waits
// for DATA's 354 instead, where one round trip more matters less than its
// transfer.
const chunkMax = 1 << 20

// canChunk reports whether the message body can go to c as one BDAT LAST
// chunk in the pipelined group: c offers CHUNKING (and PIPELINING, for the
// group), the body is at most chunkMax, and its line ends are all CRLF (a
// chunk goes as it is; anything else goes through DATA's dot-stuffing
// writer, which mends it).
func canChunk(c *conn, body []byte) bool {
	return c.has("CHUNKING") && len(body) <= chunkMax && crlfOnly(body)
}

// canPipeline reports whether the group of rcpts can go pipelined on c:
// the server offers PIPELINING, and no parameter needs go-smtp's encoders
// (a UTF-8 ORCPT) or its checks (a line break in an address).
func canPipeline(c *conn, from string, rcpts []*store.Claimed) bool {
	if !c.has("PIPELINING") || strings.ContainsAny(from, "\r\n") {
		return false
	}
	for _, rc := range rcpts {
		if strings.ContainsAny(rc.Address, "\r\n") {
			return false
		}
		if o := rcptOptions(rc); o != nil && o.OriginalRecipient != "" && o.OriginalRecipientType != smtp.DSNAddressTypeRFC822 {
			return false
		}
	}
	return true
}

// mailCommand is the MAIL command go-smtp would send for from and opts.
func mailCommand(c *conn, from string, opts *smtp.MailOptions) string {
	var sb strings.Builder
	sb.WriteString("MAIL FROM:<" + from + ">")
	if c.has("8BITMIME") {
		sb.WriteString(" BODY=8BITMIME")
	}
	if c.has("SIZE") && opts.Size != 0 {
		sb.WriteString(" SIZE=" + strconv.FormatInt(opts.Size, 10))
	}
	if opts.UTF8 {
		sb.WriteString(" SMTPUTF8")
	}
	if c.has("DSN") {
		if opts.Return != "" {
			sb.WriteString(" RET=" + string(opts.Return))
		}
		if opts.EnvelopeID != "" {
			sb.WriteString(" ENVID=" + xtext(opts.EnvelopeID))
		}
	}
	return sb.String()
}

// rcptCommand is the RCPT command go-smtp would send for rc.
func rcptCommand(c *conn, rc *store.Claimed) string {
	var sb strings.Builder
	sb.WriteString("RCPT TO:<" + rc.Address + ">")
	if o := rcptOptions(rc); o != nil && c.has("DSN") {
		if len(o.Notify) > 0 {
			sb.WriteString(" NOTIFY=")
			for i, v := range o.Notify {
				if i > 0 {
					sb.WriteByte(',')
				}
				sb.WriteString(string(v))
			}
		}
		if o.OriginalRecipient != "" {
			sb.WriteString(" ORCPT=" + string(o.OriginalRecipientType) + ";" + xtext(o.OriginalRecipient))
		}
	}
	return sb.String()
}

// xtext encodes s as RFC 3461 xtext: '+', '=' and bytes outside 33-126 as
// "+HH".
func xtext(s string) string {
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b < 33 || b > 126 || b == '+' || b == '=' {
			fmt.Fprintf(&sb, "+%02X", b)
			continue
		}
		sb.WriteByte(b)
	}
	return sb.String()
}

// pipeline sends MAIL, a RCPT per recipient and DATA in one write and
// reads all their replies; with chunk, BDAT LAST and the body instead of
// DATA, so the whole message goes in that write. The error is a transport
// error (the connection is unusable); refusals are in pipeReplies.
func (r *Relay) pipeline(c *conn, from string, opts *smtp.MailOptions, rcpts []*store.Claimed, body []byte, chunk bool) (pipeReplies, error) {
	var sb strings.Builder
	sb.WriteString(mailCommand(c, from, opts) + "\r\n")
	for _, rc := range rcpts {
		sb.WriteString(rcptCommand(c, rc) + "\r\n")
	}
	if chunk {
		sb.WriteString("BDAT " + strconv.Itoa(len(body)) + " LAST\r\n")
	} else {
		sb.WriteString("DATA\r\n")
	}
	if err := c.nc.SetDeadline(time.Now().Add(r.conf().CommandTimeout)); err != nil {
		return pipeReplies{}, err
	}
	defer func() { _ = c.nc.SetDeadline(time.Time{}) }() // as go-smtp's client does after each command
	// Both writes go to the connection's buffer (flushConn), sent at the
	// first read: one write system call up to 64 KiB.
	if _, err := c.nc.Write([]byte(sb.String())); err != nil {
		return pipeReplies{}, err
	}
	if chunk {
		if _, err := c.nc.Write(body); err != nil {
			return pipeReplies{}, err
		}
	}
	var out pipeReplies
	var err error
	if out.mail, err = c.reply(250); err != nil {
		return out, err
	}
	out.answered = true
	out.rcpts = make([]error, len(rcpts))
	for i := range rcpts {
		if out.rcpts[i], err = c.reply(25); err != nil {
			return out, err
		}
	}
	if !chunk {
		out.data, err = c.reply(354)
		return out, err
	}
	_, msg, err := c.readReply(250)
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se):
		out.data, err = se, nil
	case err == nil:
		out.final = oneLine("250 " + msg)
	}
	return out, err
}

// reply reads one reply and returns, in a pipeReplies field's terms,
// refused: nil if its code is expectCode (two digits: any code starting
// with them), else the reply as an *smtp.SMTPError; err is a transport
// error.
func (c *conn) reply(expectCode int) (refused, err error) {
	_, _, err = c.readReply(expectCode)
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se, nil
	}
	return nil, err
}

// sendBody writes the body after DATA's 354, dot-stuffed and with its
// ending dot, in one write (up to the buffer's size), and returns the
// final reply's text, or the refusal as an *smtp.SMTPError, or a
// transport error.
func (r *Relay) sendBody(c *conn, body []byte) (string, error) {
	if err := c.nc.SetDeadline(time.Now().Add(r.conf().CommandTimeout)); err != nil {
		return "", err
	}
	defer func() { _ = c.nc.SetDeadline(time.Time{}) }() // as go-smtp's client does after each command
	if err := writeData(c.nc, body); err != nil {
		return "", err
	}
	_, msg, err := c.readReply(250)
	if err != nil {
		return "", err
	}
	return oneLine("250 " + msg), nil
}

// writeData writes body and the ending dot to nc: a stored body (CRLF line
// ends only) dot-stuffed here, anything else through textproto's
// DotWriter.
func writeData(nc io.Writer, body []byte) error {
	if crlfOnly(body) {
		if err := writeStuffed(nc, body); err != nil {
			return err
		}
		_, err := io.WriteString(nc, "\r\n.\r\n")
		return err
	}
	dw := textproto.NewWriter(bufio.NewWriter(nc)).DotWriter()
	if _, err := dw.Write(body); err != nil {
		return err
	}
	return dw.Close()
}

// endEmptyData ends a DATA that a server accepted although it had refused
// every recipient (RFC 2920 forbids it; the relay sends nothing): an
// empty message is the only way out, and its reply is read and dropped.
func (r *Relay) endEmptyData(c *conn) error {
	if _, err := c.nc.Write([]byte(".\r\n")); err != nil {
		return err
	}
	_, _, err := c.readReply(250)
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return nil
	}
	return err
}

// readReply reads one reply with the connection's own reader (made on
// first use: go-smtp's reader has consumed every reply before ours is
// used, and ours reads every reply of a group, so neither holds the
// other's bytes). A reply with another code is an *smtp.SMTPError, as
// go-smtp's client returns.
func (c *conn) readReply(expectCode int) (int, string, error) {
	if c.rd == nil {
		c.rd = textproto.NewReader(bufio.NewReader(c.nc))
	}
	code, msg, err := c.rd.ReadResponse(expectCode)
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return code, msg, toSMTPError(pe)
	}
	return code, msg, err
}

// toSMTPError converts a reply to an *smtp.SMTPError with its enhanced
// status code, as go-smtp's client does.
func toSMTPError(pe *textproto.Error) *smtp.SMTPError {
	se := &smtp.SMTPError{Code: pe.Code, Message: pe.Msg}
	first, rest, ok := strings.Cut(pe.Msg, " ")
	if !ok {
		return se
	}
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return se
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return se
		}
		ec[i] = n
	}
	se.EnhancedCode = ec
	// RFC 2034: the enhanced code starts every line.
	se.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return se
}
