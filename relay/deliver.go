package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/bounce"
	"github.com/smtpgw/smtpgw/store"
)

// job is one delivery transaction: claimed recipients of one message at one
// destination domain.
type job struct {
	rcpts    []*store.Claimed
	domain   string    // recipient domain (lowercase)
	dest     string    // semaphore key: the domain, or smarthostDest
	deadline time.Time // the job must have finished before this (lease safety)
	expired  bool      // its message was older than MaxQueueLifetime at claim
}

// smarthostDest is the destination of every job in smarthost mode.
const smarthostDest = "[smarthost]" // not a domain: MX-mode destinations never clash with it

// groupJobs groups claimed recipients by (message, destination), keeping
// the store's order: in MX mode the destination is the recipient domain;
// in smarthost mode it is the smarthost, so a message goes there as one
// job whatever its recipients' domains.
func groupJobs(claimed []*store.Claimed, mode string, deadline time.Time) []*job {
	var jobs []*job
	idx := make(map[string]*job)
	for _, c := range claimed {
		dom := strings.ToLower(c.Domain)
		if dom == "" {
			dom = domainOf(c.Address)
		}
		dest := dom
		if mode == ModeSmarthost {
			dest = smarthostDest
		}
		k := c.MessageID + "\x00" + dest
		j := idx[k]
		if j == nil {
			j = &job{domain: dom, dest: dest, deadline: deadline}
			idx[k] = j
			jobs = append(jobs, j)
		}
		j.rcpts = append(j.rcpts, c)
	}
	return jobs
}

// domainOf returns the lowercased domain part of an address.
func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return ""
}

// result is the decision for one recipient of a job.
type result struct {
	state     string // a store.State constant; "" while undecided
	reply     string // SMTP reply or local reason, one line
	remoteMTA string // host that gave the reply, "" for local reasons
	sendingIP string // our address on the connection that got the reply
	dsnNotify bool   // the remote took responsibility for DSNs (it offered DSN)
}

// Local replies. Codes follow RFC 3463 enhanced status codes.
const (
	replyNullMX       = "556 5.1.10 recipient domain does not accept mail (null MX)"
	replyNoDomain     = "550 5.1.2 recipient domain has no mail server"
	replyNoUTF8       = "553 5.6.7 remote server does not support SMTPUTF8"
	replyLocalFailure = "451 4.3.0 local error, will retry"
)

// runJob waits for j's destination slot (t; nil for an expired job, which
// needs none), then for a worker slot, then attempts the job and records
// its outcome. A job waiting for its destination holds no worker slot.
// loop ends when the relay stops: a job still waiting then gives up,
// leaving its recipients to Stop's lease release; base carries the job's
// store calls.
func (r *Relay) runJob(loop, base context.Context, j *job, t *ticket) {
	first := j.rcpts[0]
	log := withLazy(r.log, slog.String("msg_id", first.MessageID), slog.String("domain", j.domain), slog.Int("rcpts", len(j.rcpts)))
	actx, acancel := context.WithDeadline(loop, j.deadline)
	defer acancel()
	gaveUp := func(waitingFor string) {
		if loop.Err() != nil {
			log.Info("stopping: dropped job waiting for "+waitingFor, "dest", j.dest)
			return
		}
		// Waiting until the job's deadline: leave the recipients to their
		// lease, which ends soon; any node retries them.
		log.Warn("no "+waitingFor+" until lease deadline; leaving recipients to their lease", "dest", j.dest)
	}
	if t != nil {
		defer t.leave()
		if !t.held {
			if err := t.wait(actx); err != nil {
				gaveUp("destination slot")
				return
			}
			r.ready.Add(1)
		}
	}
	select {
	case r.slots <- struct{}{}:
	case <-actx.Done():
		r.ready.Add(-1)
		gaveUp("worker")
		return
	}
	// Deferred calls run last first: the job stops counting as ready
	// before its destination slot goes to a waiting job (t.leave).
	defer func() {
		<-r.slots
		r.ready.Add(-1)
	}()

	ctx, cancel := context.WithDeadline(base, j.deadline)
	defer cancel()
	start := time.Now()
	res := make([]result, len(j.rcpts))

	if j.expired {
		for i, c := range j.rcpts {
			res[i] = result{state: store.StateExpired, reply: expiredReply(r.conf().MaxQueueLifetime, c.LastReply)}
		}
		r.finish(base, log, j, res, nil, start)
		return
	}

	r.metrics.inflight.Inc()
	defer r.metrics.inflight.Dec()

	body, err := r.body(ctx, first)
	if errors.Is(err, store.ErrNotFound) {
		log.Info("message deleted while claimed; nothing to deliver")
		return
	}
	if err != nil {
		log.Warn("prepare message body", "err", err)
		for i := range res {
			res[i] = result{state: store.StateDeferred, reply: replyLocalFailure}
		}
		r.finish(base, log, j, res, nil, start)
		return
	}
	r.deliver(ctx, log, j, body, res)
	r.finish(base, log, j, res, body, start)
}

// body fetches the message body and DKIM-signs it when its From: domain is
// a sending domain.
func (r *Relay) body(ctx context.Context, c *store.Claimed) ([]byte, error) {
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	body := c.Body
	if body == nil {
		var err error
		if body, err = r.st.MessageBody(sctx, c.MessageID); err != nil {
			return nil, fmt.Errorf("fetch body: %w", err)
		}
	}
	signed, err := r.sign(sctx, body, c.Info.FriendlyFrom)
	if err != nil {
		return nil, err
	}
	return signed, nil
}

// deliver runs the transaction for j on the first route that answers and
// fills res.
func (r *Relay) deliver(ctx context.Context, log *slog.Logger, j *job, body []byte, res []result) {
	routes, err := r.routes(ctx, j.domain)
	if err != nil {
		var pe *permanentError
		state := store.StateDeferred
		if errors.As(err, &pe) {
			state = store.StateBounced
		}
		for i := range res {
			res[i] = result{state: state, reply: replyOf(err)}
		}
		return
	}
	var lastErr error
	for _, rt := range routes {
		c, reused, err := r.connect(ctx, rt)
		if err != nil {
			log.Info("connect failed", "host", rt.host, "err", err)
			lastErr = err
			continue
		}
		tr := r.transact(ctx, c, j, body, res)
		if tr.retryFresh && reused {
			// The server closed the idle connection: nothing was sent past
			// MAIL, so a fresh connection is safe.
			c.close()
			if c, err = r.dial(ctx, rt); err != nil {
				lastErr = err
				continue
			}
			tr = r.transact(ctx, c, j, body, res)
		}
		if tr.reusable && ctx.Err() == nil {
			r.pool.put(rt.key, c)
		} else {
			c.close()
		}
		return
	}
	if lastErr == nil {
		lastErr = errors.New("no route")
	}
	for i := range res {
		res[i] = result{state: store.StateDeferred, reply: replyOf(lastErr)}
	}
}

// txResult says what state a transaction left the connection in.
type txResult struct {
	reusable   bool // the connection is idle and clean
	retryFresh bool // a transport error at MAIL: nothing was sent, retry on a new connection
}

// transact runs MAIL, RCPT and DATA for j on c and fills res.
func (r *Relay) transact(ctx context.Context, c *conn, j *job, body []byte, res []result) txResult {
	stop := context.AfterFunc(ctx, func() { _ = c.nc.Close() })
	defer stop()
	first := j.rcpts[0]
	setAll := func(state, reply string) {
		for i := range res {
			if res[i].state == "" || res[i].state == "accepted" {
				res[i] = result{state: state, reply: reply, remoteMTA: c.host, sendingIP: c.local}
			}
		}
	}
	for i := range res {
		res[i] = result{}
	}
	// MAIL FROM said SMTPUTF8 (Go's net/smtp says it whenever it is
	// offered), but only a message that really has non-ASCII addresses or
	// headers needs it (RFC 6531 §3.4): an ASCII one goes as it is.
	utf8 := first.SMTPUTF8 && needsSMTPUTF8(j, body)
	if utf8 && !c.has("SMTPUTF8") {
		setAll(store.StateBounced, replyNoUTF8)
		return txResult{reusable: true}
	}
	opts := &smtp.MailOptions{Size: int64(len(body)), UTF8: utf8}
	if c.has("DSN") {
		switch strings.ToUpper(first.DSNRet) {
		case "FULL":
			opts.Return = smtp.DSNReturnFull
		case "HDRS":
			opts.Return = smtp.DSNReturnHeaders
		}
		if isPrintableASCII(first.DSNEnvID) {
			opts.EnvelopeID = first.DSNEnvID
		}
	}
	// pending are the recipients still to send. A server that refuses a
	// RCPT for its recipient limit (452 4.5.3, or 552 from older ones,
	// https://tools.ietf.org/html/rfc5321#section-4.5.3.1.10) gets the
	// accepted ones delivered and the rest in the next transaction on the
	// same connection.
	pending := make([]int, len(j.rcpts))
	for i := range pending {
		pending[i] = i
	}
	for len(pending) > 0 {
		group := make([]*store.Claimed, len(pending))
		for k, i := range pending {
			group[k] = j.rcpts[i]
		}
		if canPipeline(c, first.MailFrom, group) {
			next, tr, done := r.transactPipelined(ctx, c, first.MailFrom, opts, j, pending, group, body, res, setAll)
			if done {
				return tr
			}
			pending = next
			continue
		}
		if err := c.client.Mail(first.MailFrom, opts); err != nil {
			setAll(classify(err))
			if closing(err) {
				// A broken connection or 421 (the server closing an idle
				// connection): nothing was sent, a fresh connection may do.
				return txResult{retryFresh: ctx.Err() == nil && len(pending) == len(j.rcpts)}
			}
			return txResult{reusable: true}
		}
		accepted := 0
		var next []int
		for k, i := range pending {
			rc := j.rcpts[i]
			err := c.client.Rcpt(rc.Address, rcptOptions(rc))
			if err == nil {
				res[i] = c.accepted()
				accepted++
				continue
			}
			if closing(err) {
				setAll(classify(err))
				return txResult{}
			}
			if accepted > 0 && tooManyRecipients(err) {
				next = pending[k:]
				break
			}
			res[i] = c.refused(err)
		}
		if accepted == 0 {
			return txResult{reusable: c.client.Reset() == nil}
		}
		reply, err := r.data(c, body)
		if err != nil {
			setAll(classify(err))
			return txResult{reusable: !closing(err)}
		}
		for i := range res {
			if res[i].state == "accepted" {
				res[i].state = store.StateDelivered
				res[i].reply = reply
			}
		}
		pending = next
	}
	return txResult{reusable: true}
}

// accepted is the result of a recipient the server accepted on c, until
// the DATA reply decides.
func (c *conn) accepted() result {
	return result{state: "accepted", remoteMTA: c.host, sendingIP: c.local, dsnNotify: c.has("DSN")}
}

// refused is the result of a recipient whose RCPT err refused on c.
func (c *conn) refused(err error) result {
	state, reply := classify(err)
	return result{state: state, reply: reply, remoteMTA: c.host, sendingIP: c.local}
}

// transactPipelined is one transaction of transact with the recipients
// pending (indexes into j.rcpts) sent pipelined: MAIL, RCPTs and DATA in
// one write, then the body. It returns the recipients left for the next
// transaction on the connection; done means transact returns tr.
func (r *Relay) transactPipelined(ctx context.Context, c *conn, from string, opts *smtp.MailOptions, j *job,
	pending []int, group []*store.Claimed, body []byte, res []result, setAll func(state, reply string)) (next []int, tr txResult, done bool) {
	chunk := !r.conf().DisableChunking && canChunk(c, body)
	rep, err := r.pipeline(c, from, opts, group, body, chunk)
	if err != nil {
		// The connection broke before the group's last reply. With DATA
		// no body was sent: nothing was delivered, and a fresh connection
		// may do (an idle one the server had closed, as for go-smtp's
		// MAIL below). With BDAT the body was sent: only if not even
		// MAIL was answered is a fresh connection tried at once; else, as
		// after a DATA whose final reply was lost, the recipients wait
		// for their retry.
		setAll(classify(err))
		fresh := ctx.Err() == nil && len(pending) == len(j.rcpts) && !(chunk && rep.answered)
		return nil, txResult{retryFresh: fresh}, true
	}
	if rep.mail != nil {
		setAll(classify(rep.mail))
		if closing(rep.mail) {
			return nil, txResult{retryFresh: ctx.Err() == nil && len(pending) == len(j.rcpts)}, true
		}
		return nil, txResult{reusable: true}, true
	}
	accepted := 0
	for k, i := range pending {
		err := rep.rcpts[k]
		if err == nil {
			res[i] = c.accepted()
			accepted++
			continue
		}
		if closing(err) {
			setAll(classify(err))
			return nil, txResult{}, true
		}
		if tooManyRecipients(err) {
			// Over the server's recipient limit: the next transaction
			// (decided below, once it is known whether any was taken).
			next = append(next, i)
			continue
		}
		res[i] = c.refused(err)
	}
	if accepted == 0 && len(next) > 0 {
		// The limit refused every one of them: that is their answer.
		for _, i := range next {
			res[i] = c.refused(rep.rcpts[slices.Index(pending, i)])
		}
		next = nil
	}
	if accepted == 0 {
		if rep.data == nil && !chunk {
			// DATA accepted with no recipient: end it empty.
			if err := r.endEmptyData(c); err != nil {
				return nil, txResult{}, true
			}
			return nil, txResult{reusable: true}, true
		}
		return nil, txResult{reusable: c.client.Reset() == nil}, true
	}
	if rep.data != nil {
		setAll(classify(rep.data))
		return nil, txResult{reusable: !closing(rep.data) && c.client.Reset() == nil}, true
	}
	reply := rep.final
	if !chunk {
		if reply, err = r.sendBody(c, body); err != nil {
			setAll(classify(err))
			return nil, txResult{reusable: !closing(err)}, true
		}
	}
	for i := range res {
		if res[i].state == "accepted" {
			res[i].state = store.StateDelivered
			res[i].reply = reply
		}
	}
	return next, txResult{}, false
}

// needsSMTPUTF8 reports whether j's envelope or its message's header has
// characters outside ASCII.
func needsSMTPUTF8(j *job, body []byte) bool {
	if !isASCII(j.rcpts[0].MailFrom) {
		return true
	}
	for _, rc := range j.rcpts {
		if !isASCII(rc.Address) {
			return true
		}
	}
	header := body
	if i := bytes.Index(body, []byte("\r\n\r\n")); i >= 0 {
		header = body[:i]
	}
	return !isASCII(string(header))
}

// tooManyRecipients reports whether a RCPT was refused for the server's
// limit of recipients per transaction.
func tooManyRecipients(err error) bool {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return false
	}
	return se.Code == 452 || se.EnhancedCode == smtp.EnhancedCode{4, 5, 3} || se.EnhancedCode == smtp.EnhancedCode{5, 5, 3}
}

// data sends DATA and the body, and returns the final reply.
func (r *Relay) data(c *conn, body []byte) (string, error) {
	w, err := c.client.Data()
	if err != nil {
		return "", err
	}
	// go-smtp sets no deadline while the body is written; bound it here.
	if err := c.nc.SetDeadline(time.Now().Add(r.conf().CommandTimeout)); err != nil {
		_ = w.Close()
		return "", fmt.Errorf("set deadline: %w", err)
	}
	if err := writeBody(c.nc, w, body); err != nil {
		return "", fmt.Errorf("write body: %w", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return oneLine("250 " + resp.StatusText), nil
}

// writeBody writes the message body after DATA's 354. go-smtp's writer
// dot-stuffs byte by byte (textproto's DotWriter, a call per byte); a
// stored body has CRLF line ends only, so it goes to the connection's
// buffer (nc, the flushConn go-smtp writes to: the order of writes is
// kept) in a few large writes with the dots added, less its final CRLF,
// which w's Close writes with the ending ".": "\r\n.\r\n". A body with a
// bare CR or LF (none is stored; this is a safeguard) goes through w.
func writeBody(nc io.Writer, w io.Writer, body []byte) error {
	if !crlfOnly(body) {
		_, err := w.Write(body)
		return err
	}
	return writeStuffed(nc, body)
}

// writeStuffed writes body, whose line ends are all CRLF, dot-stuffed and
// less its final CRLF: what precedes "\r\n.\r\n" after DATA.
func writeStuffed(nc io.Writer, body []byte) error {
	body = bytes.TrimSuffix(body, []byte("\r\n"))
	if len(body) > 0 && body[0] == '.' {
		if _, err := io.WriteString(nc, "."); err != nil {
			return err
		}
	}
	for {
		i := bytes.Index(body, []byte("\n."))
		if i < 0 {
			break
		}
		if _, err := nc.Write(body[:i+2]); err != nil { // up to and with the '.'
			return err
		}
		if _, err := io.WriteString(nc, "."); err != nil {
			return err
		}
		body = body[i+2:]
	}
	_, err := nc.Write(body)
	return err
}

// crlfOnly reports whether every CR and LF of b is part of a CRLF. It
// runs once per delivered message over the whole body: single-byte counts
// (vectorised) first, then one jump per line to check each LF follows a
// CR; with as many CRs as LFs, every CR is then followed by an LF.
func crlfOnly(b []byte) bool {
	if bytes.Count(b, []byte{'\r'}) != bytes.Count(b, []byte{'\n'}) {
		return false
	}
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return true
		}
		if i+j == 0 || b[i+j-1] != '\r' {
			return false
		}
		i += j + 1
	}
}

// closing reports whether err leaves the connection unusable: a transport
// error, or a 421 reply, after which the server closes the connection
// (https://tools.ietf.org/html/rfc5321#section-3.8).
func closing(err error) bool {
	var se *smtp.SMTPError
	return !errors.As(err, &se) || se.Code == 421
}

// rcptOptions returns the NOTIFY and ORCPT parameters of a recipient, or nil.
func rcptOptions(c *store.Claimed) *smtp.RcptOptions {
	var o smtp.RcptOptions
	o.Notify = parseNotify(c.DSNNotify)
	if c.DSNOrcpt != "" {
		typ, addr := parseOrcpt(c.DSNOrcpt)
		switch {
		case strings.EqualFold(typ, "rfc822") && isPrintableASCII(addr):
			o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeRFC822, addr
		case strings.EqualFold(typ, "utf-8"):
			o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeUTF8, addr
		}
	}
	if len(o.Notify) == 0 && o.OriginalRecipient == "" {
		return nil
	}
	return &o
}

// parseNotify parses a comma-separated NOTIFY value, dropping anything
// invalid (NEVER combined with others, unknown words).
func parseNotify(s string) []smtp.DSNNotify {
	if s == "" {
		return nil
	}
	var out []smtp.DSNNotify
	never := false
	for _, p := range strings.Split(s, ",") {
		switch v := smtp.DSNNotify(strings.ToUpper(strings.TrimSpace(p))); v {
		case smtp.DSNNotifyNever:
			never = true
		case smtp.DSNNotifySuccess, smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed:
			out = append(out, v)
		}
	}
	if never {
		if len(out) > 0 {
			return nil
		}
		return []smtp.DSNNotify{smtp.DSNNotifyNever}
	}
	return out
}

// notifies reports whether a NOTIFY value asks for the report kind k
// ("FAILURE", "DELAY", "SUCCESS"). An empty value means FAILURE (and DELAY
// at the MTA's discretion; we send none), https://tools.ietf.org/html/rfc3461#section-4.1.
func notifies(notify, k string) bool {
	if notify == "" {
		return k == "FAILURE"
	}
	for _, v := range parseNotify(notify) {
		if string(v) == k {
			return true
		}
	}
	return false
}

// parseOrcpt splits "type;address" (the type defaults to rfc822).
func parseOrcpt(s string) (typ, addr string) {
	if t, a, ok := strings.Cut(s, ";"); ok {
		return strings.TrimSpace(t), strings.TrimSpace(a)
	}
	return "rfc822", strings.TrimSpace(s)
}

// isPrintableASCII reports whether s is non-empty printable US-ASCII.
func isPrintableASCII(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// permanentError is a local failure that bounces (null MX, no such domain).
type permanentError struct{ reply string }

func (e *permanentError) Error() string { return e.reply }

// tempError is a local failure that defers, with the reply to record.
type tempError struct {
	reply string
	err   error
}

func (e *tempError) Error() string { return e.reply + ": " + e.err.Error() }
func (e *tempError) Unwrap() error { return e.err }

// classify maps an attempt error to a recipient state and a one-line reply:
// 5xx bounces, 4xx and everything else (timeouts, broken connections,
// TLS failures) defers.
func classify(err error) (string, string) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		reply := formatSMTPError(se)
		if se.Code >= 500 && se.Code < 600 {
			return store.StateBounced, reply
		}
		return store.StateDeferred, reply
	}
	return store.StateDeferred, replyOf(err)
}

// formatSMTPError renders an upstream reply as "550 5.1.1 text".
func formatSMTPError(se *smtp.SMTPError) string {
	s := fmt.Sprintf("%d", se.Code)
	if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
		s += fmt.Sprintf(" %d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	if se.Message != "" {
		s += " " + se.Message
	}
	return oneLine(s)
}

// replyOf renders a local or transport error as a reply line.
func replyOf(err error) string {
	var pe *permanentError
	var te *tempError
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &pe):
		return pe.reply
	case errors.As(err, &te):
		return te.reply
	case errors.As(err, &se):
		return formatSMTPError(se)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "451 4.4.2 timeout talking to remote server"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "451 4.4.2 timeout talking to remote server"
	}
	return oneLine("451 4.4.1 " + err.Error())
}

// oneLine joins a multi-line reply and drops control characters.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == '\t' {
			return ' '
		}
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > 900 {
		s = s[:900]
	}
	return strings.TrimSpace(s)
}

// expiredReply is the reason given for an expired recipient.
func expiredReply(lifetime time.Duration, last string) string {
	s := "554 5.4.7 message expired after " + lifetime.String() + " in queue"
	if last != "" {
		s += "; last reply: " + last
	}
	return oneLine(s)
}

// backoff returns the delay before retry number attempts (1 = first retry):
// initial * 2^(attempts-1), capped at max, ±20% jitter.
func backoff(initial, max time.Duration, attempts int) time.Duration {
	d := initial
	for i := 1; i < attempts && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	jitter := 0.8 + 0.4*rand.Float64()
	return time.Duration(float64(d) * jitter)
}

// finish turns results into outcomes, events and DSNs and writes them in one
// store.Finish, retrying briefly while the lease still holds.
func (r *Relay) finish(base context.Context, log *slog.Logger, j *job, res []result, body []byte, start time.Time) {
	now := time.Now()
	r.metrics.attempt.Observe(now.Sub(start).Seconds())
	first := j.rcpts[0]
	expireAt := first.CreatedAt.Add(r.conf().MaxQueueLifetime)
	var f store.Finish
	var reports []dsnRecipient
	// A job's recipients share one message: its events carry the metadata
	// and tags of its X-MSYS-API header, like its injection events.
	meta, tags := store.MsysEventFields(first.MsysAPI)
	for i, c := range j.rcpts {
		rs := res[i]
		if rs.state == "" || rs.state == "accepted" {
			rs = result{state: store.StateDeferred, reply: replyLocalFailure}
		}
		out := store.Outcome{RecipientID: c.ID, State: rs.state, Reply: rs.reply}
		if rs.state == store.StateDeferred {
			out.NextAttempt = now.Add(backoff(r.conf().RetryInitial, r.conf().RetryMax, c.Attempts+1))
			if out.NextAttempt.After(expireAt) {
				out.State = store.StateExpired
				out.NextAttempt = time.Time{}
				out.Reply = expiredReply(r.conf().MaxQueueLifetime, rs.reply)
			}
		}
		f.Outcomes = append(f.Outcomes, out)
		f.Events = append(f.Events, store.Event{
			Type:       eventType(out.State),
			Time:       now,
			MessageID:  c.MessageID,
			KeyID:      c.KeyID,
			Subaccount: c.Subaccount,
			Recipient:  c.Address,
			CampaignID: c.CampaignID,
			Metadata:   meta,
			Tags:       tags,
			Reply:      out.Reply,
			Detail:     eventDetail(c, out, rs, now),
		})
		r.metrics.deliveries.WithLabelValues(out.State).Inc()
		if d, ok := dsnFor(c, out, rs, now, expireAt); ok {
			reports = append(reports, d)
		}
		log.Info("relay attempt", "rcpt_id", c.ID, "state", out.State, "remote", rs.remoteMTA, "reply", out.Reply)
	}
	if len(reports) > 0 && first.MailFrom != "" {
		if body == nil {
			b, err := r.rawBody(base, first.MessageID)
			if err != nil {
				log.Warn("fetch body for DSN; sending the DSN without the original", "err", err)
			}
			body = b
		}
		m, err := buildDSN(r.conf().Hostname, first, reports, body, now)
		if err != nil {
			log.Error("build DSN", "err", err)
		} else {
			f.Enqueue = append(f.Enqueue, m)
			r.metrics.dsns.Inc()
		}
	}
	r.writeFinish(base, log, j, f)
	r.suppressHardBounces(base, log, f.Events)
}

// suppressHardBounces puts the recipients of hard bounces (bounce classes
// 10, 30 and 90) on their account's suppression list for both types. A
// failure is logged: the next bounce of the address tries again.
func (r *Relay) suppressHardBounces(base context.Context, log *slog.Logger, evs []store.Event) {
	for _, ev := range evs {
		if ev.Type != store.EventBounce || !bounce.Class(ev.Detail.BounceClass).Hard() {
			continue
		}
		ctx, cancel := context.WithTimeout(base, storeTimeout)
		err := r.supp.AddHardBounce(ctx, ev.Subaccount, ev.Recipient, ev.Reply)
		cancel()
		if err != nil {
			log.Warn("suppress hard-bounced recipient", "rcpt", ev.Recipient, "err", err)
			continue
		}
		log.Info("recipient suppressed after a hard bounce", "rcpt", ev.Recipient, "bounce_class", ev.Detail.BounceClass)
	}
}

// rawBody fetches a message body without signing it.
func (r *Relay) rawBody(base context.Context, id string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(base, storeTimeout)
	defer cancel()
	return r.st.MessageBody(ctx, id)
}

// writeFinish calls store.Finish, retrying with backoff (up to
// finishBackoffMax apart) until it succeeds or the lease is about to end
// (7/8 of it from the claim): an outcome that is not saved leaves its
// recipients leased to this relay, so they would wait out the rest of the
// lease and then be delivered again. Retrying a Finish is safe: one that did
// commit cleared the leases, so a retry applies nothing twice.
func (r *Relay) writeFinish(base context.Context, log *slog.Logger, j *job, f store.Finish) {
	limit := j.deadline.Add(r.conf().Lease / 8)
	backoff := finishBackoffMin
	for try := 1; ; try++ {
		ctx, cancel := context.WithTimeout(base, storeTimeout)
		n, err := r.st.Finish(ctx, r.conf().Owner, f)
		cancel()
		if err == nil {
			if n < len(f.Outcomes) {
				log.Warn("lease lost before finish; outcomes ignored for some recipients",
					"applied", n, "outcomes", len(f.Outcomes))
			}
			if try > 1 {
				log.Info("delivery outcome recorded after retrying", "tries", try)
			}
			return
		}
		r.metrics.finishFailures.Inc()
		if time.Now().Add(backoff).After(limit) {
			log.Error("record delivery outcome; recipients will be retried when their lease ends", "err", err, "tries", try)
			return
		}
		// The first failure and then every tenth, not a line per retry.
		if try == 1 || try%10 == 0 {
			log.Warn("record delivery outcome, retrying", "err", err, "tries", try)
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-base.Done():
			t.Stop()
			log.Error("record delivery outcome: relay stopping; recipients will be retried when their lease is released", "err", err)
			return
		}
		backoff = min(backoff*2, finishBackoffMax)
	}
}

// eventType maps a final state to its event type.
// eventDetail gives an attempt's event SparkPost's fields: the message's
// (sender, From:, Subject:, size, client), the attempt's (retries, queue
// time, remote host) and, for failures, the bounce class and reply code.
func eventDetail(c *store.Claimed, out store.Outcome, rs result, now time.Time) store.EventDetail {
	d := store.EventDetail{
		MsgFrom:       c.MailFrom,
		FriendlyFrom:  c.Info.FriendlyFrom,
		Subject:       c.Info.Subject,
		MsgSize:       c.Size,
		IPAddress:     c.Info.IPAddress,
		RemoteHost:    rs.remoteMTA,
		SendingIP:     rs.sendingIP,
		RoutingDomain: c.Domain,
		RcptType:      c.Info.RcptType(c.Address),
		NumRetries:    c.Attempts,
		QueueTime:     now.Sub(c.CreatedAt).Milliseconds(),
		InjectionTime: c.CreatedAt,
	}
	if out.State != store.StateDelivered {
		code, enh, text := bounce.ParseReply(out.Reply)
		d.BounceClass = int(bounce.Classify(code, enh, text))
		if code != 0 {
			d.ErrorCode = strconv.Itoa(code)
		}
	}
	return d
}

func eventType(state string) string {
	switch state {
	case store.StateDelivered:
		return store.EventDelivery
	case store.StateBounced:
		return store.EventBounce
	case store.StateExpired:
		return store.EventExpiry
	default:
		return store.EventDelay
	}
}
