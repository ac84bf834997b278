package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/bounce"
	"github.com/smtpgw/smtpgw/limits"
	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/suppression"
)

// errClientRead marks a failure to read the message from the client
// (connection dropped, RSET during BDAT): not a fault of ours.
var errClientRead = errors.New("client stopped sending")

// backend creates go-smtp sessions for a Server.
type backend struct{ s *Server }

// NewSession is called by go-smtp at the first EHLO/HELO, and again after
// STARTTLS (which ends the previous session, authentication included).
func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	nc := c.Conn()
	raw := nc
	if tc, ok := nc.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	tc, ok := raw.(*conn)
	if !ok {
		return nil, errors.New("new session: connection not accepted by this server")
	}
	// Replies from Shutdown go to the TLS connection once it exists.
	tc.setWriter(nc)
	ctx, cancel := context.WithCancel(b.s.baseCtx)
	s := &session{
		srv:    b.s,
		c:      c,
		conn:   tc,
		ctx:    ctx,
		cancel: cancel,
		log:    tc.log(),
		ip:     tc.clientIP(),
	}
	if st, ok := c.TLSConnectionState(); ok {
		s.tls = tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
		tc.tlsStarted()
	}
	tc.markProgress()
	s.log.Debug("session started", "helo", c.Hostname(), "tls", s.tls)
	return s, nil
}

// session is one SMTP session: from EHLO (or STARTTLS) to the end of the
// connection. go-smtp calls its methods from the connection's goroutine,
// except Data for BDAT, which runs in its own goroutine while RSET may
// arrive: the transaction is guarded by mu.
type session struct {
	srv    *Server
	c      *smtp.Conn
	conn   *conn
	ctx    context.Context // cancelled by Logout and by Shutdown's deadline
	cancel context.CancelFunc
	log    *slog.Logger
	ip     netip.Addr
	tls    string // "TLS 1.3 TLS_AES_128_GCM_SHA256"; "" without TLS

	// Set by a successful AUTH; not changed afterwards.
	id         *auth.Identity
	subaccount int64 // the subaccount messages are sent for

	mu       sync.Mutex
	tx       transaction
	reserved int64 // in-flight budget reserved by MAIL SIZE=, until DATA takes it
}

// transaction is the envelope of the message being received.
type transaction struct {
	helo     string
	from     string
	utf8     bool
	bodyType string
	dsnRet   string
	dsnEnvID string
	size     int64 // MAIL SIZE=, 0 if not given
	rcpts    []*store.Recipient
	// suppressed holds, per lowercased recipient, the suppression types
	// found at RCPT (none of them both types: those were refused); DATA
	// decides on them.
	suppressed map[string]suppression.Types
	// quota is the sending-limit quota taken at MAIL; released if the
	// transaction ends without the message stored.
	quota *limits.Reservation
	// recheck: the store could not be asked for quota at MAIL; DATA takes
	// it before storing the message.
	recheck bool
}

var _ smtp.AuthSession = (*session)(nil)

// AuthMechanisms lists the SASL mechanisms offered (go-smtp offers them
// only under TLS unless AllowInsecureAuth, and answers AUTH without TLS
// with 523 5.7.10).
func (s *session) AuthMechanisms() []string {
	return []string{sasl.Plain, sasl.Login}
}

// Auth starts an AUTH exchange.
func (s *session) Auth(mech string) (sasl.Server, error) {
	s.conn.markProgress()
	if _, blocked := s.srv.verifier.Blocked(s.ip); blocked {
		s.srv.metrics.auth.WithLabelValues("throttled").Inc()
		s.log.Info("authentication refused: too many failures from this address")
		return nil, s.closeAfter(ErrAuthThrottled)
	}
	switch mech {
	case sasl.Plain:
		return newPlainServer(s.authenticate), nil
	case sasl.Login:
		return newLoginServer(s.authenticate), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// closeAfter arranges for the connection to close once e is written.
func (s *session) closeAfter(e *smtp.SMTPError) error {
	s.conn.closeAfterWrite.Store(true)
	return e
}

// authenticate checks the AUTH credentials; the password is the API key.
// It returns nil or a named reply. Neither the key nor the username is
// logged: a client may put its key in the wrong field.
func (s *session) authenticate(username, password string) error {
	err := s.checkCredentials(username, password)
	s.srv.metrics.reply("AUTH", err, 235)
	return err
}

func (s *session) checkCredentials(username, password string) error {
	sub, err := parseUsername(username, s.srv.usernames)
	if err != nil {
		s.srv.verifier.Fail(s.ip)
		return s.authFailed("bad_username", err)
	}
	ctx, cancel := context.WithTimeout(s.ctx, authTimeout)
	defer cancel()
	id, err := s.srv.verifier.Verify(ctx, password, s.ip)
	var ae *auth.Error
	switch {
	case errors.Is(err, auth.ErrThrottled):
		// Another session (or the HTTP API) used up the budget meanwhile.
		s.srv.metrics.auth.WithLabelValues("throttled").Inc()
		return s.closeAfter(ErrAuthThrottled)
	case errors.As(err, &ae):
		// The Verifier spent one failure of the budget, except for a
		// missing grant, which SMTP counts too.
		if errors.Is(err, auth.ErrMissingGrant) {
			s.srv.verifier.Fail(s.ip)
		}
		return s.authFailed(authOutcome(ae), err)
	case err != nil:
		s.srv.metrics.auth.WithLabelValues("temporary_failure").Inc()
		s.log.Warn("authentication: key store unavailable", "err", err)
		return ErrAuthTemporary
	}
	subaccount := id.Subaccount
	if sub >= 0 {
		// A subaccount's key always sends as its subaccount; only a
		// master key may choose one.
		if id.Subaccount != 0 && sub != id.Subaccount {
			s.srv.verifier.Fail(s.ip)
			return s.authFailed("bad_subaccount", fmt.Errorf("key %s (short key %s) of subaccount %d asked for subaccount %d",
				id.KeyID, id.ShortKey, id.Subaccount, sub))
		}
		subaccount = sub
		// A master key acts only for an existing, active subaccount (a
		// subaccount's own key was checked by Verify).
		if id.Subaccount == 0 {
			err := s.srv.verifier.CheckSubaccount(ctx, sub)
			switch {
			case errors.As(err, &ae):
				return s.authFailed("bad_subaccount", fmt.Errorf("key %s (short key %s): %w", id.KeyID, id.ShortKey, err))
			case err != nil:
				s.srv.metrics.auth.WithLabelValues("temporary_failure").Inc()
				s.log.Warn("authentication: key store unavailable", "err", err)
				return ErrAuthTemporary
			}
		}
	}
	s.id, s.subaccount = id, subaccount
	s.conn.authenticated()
	s.srv.metrics.auth.WithLabelValues("success").Inc()
	s.log = s.log.With("key_id", id.KeyID, "subaccount", subaccount)
	s.log.Info("authenticated", "short_key", id.ShortKey)
	return nil
}

// authFailed logs why AUTH failed and answers 535, or 421 and disconnect
// once the address is blocked (the failure was counted by the Verifier or
// the caller).
func (s *session) authFailed(outcome string, cause error) error {
	s.srv.metrics.auth.WithLabelValues(outcome).Inc()
	s.log.Info("authentication failed", "reason", cause.Error())
	if _, blocked := s.srv.verifier.Blocked(s.ip); blocked {
		s.log.Warn("too many failed authentications from this address: disconnecting")
		return s.closeAfter(ErrAuthThrottled)
	}
	return ErrAuthInvalid
}

func authOutcome(e *auth.Error) string {
	switch {
	case errors.Is(e, auth.ErrRevokedKey):
		return "revoked_key"
	case errors.Is(e, auth.ErrExpiredKey):
		return "expired_key"
	case errors.Is(e, auth.ErrMissingGrant):
		return "missing_grant"
	case errors.Is(e, auth.ErrIPNotAllowed):
		return "ip_not_allowed"
	case errors.Is(e, auth.ErrSubaccountInactive), errors.Is(e, auth.ErrUnknownSubaccount):
		return "bad_subaccount"
	}
	return "unknown_key"
}

// Mail starts a transaction.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	err := reply(s.mail(from, opts))
	s.srv.metrics.reply("MAIL", err, 250)
	if err == nil {
		s.conn.markProgress()
	}
	return err
}

func (s *session) mail(from string, opts *smtp.MailOptions) error {
	if s.srv.draining.Load() {
		return s.closeAfter(ErrShuttingDown)
	}
	if s.id == nil {
		return ErrAuthRequired
	}
	if !s.srv.rates.Load().allow(s.id.KeyID) {
		s.srv.metrics.limited.WithLabelValues("node", "second").Inc()
		s.log.Info("message refused: key over its rate limit")
		return ErrRateLimited
	}
	if from != "" {
		var err error
		if from, err = parseMailbox(from, opts.UTF8); err != nil {
			return fmt.Errorf("mail from: %w", err)
		}
	}
	// The in-flight budget: SIZE= is reserved now, so that a message that
	// cannot fit is refused before it is sent; without it, MAIL is refused
	// only when nothing is left.
	var reserve int64
	if opts.Size > 0 {
		reserve = (opts.Size + budgetStep - 1) / budgetStep * budgetStep
		if !s.srv.budget.reserve(reserve) {
			s.srv.metrics.limit.WithLabelValues("inflight_bytes").Inc()
			s.log.Info("message refused: in-flight budget used up", "size", opts.Size)
			return ErrInsufficientResources
		}
	} else if s.srv.budget.exhausted() {
		s.srv.metrics.limit.WithLabelValues("inflight_bytes").Inc()
		s.log.Info("message refused: in-flight budget used up")
		return ErrInsufficientResources
	}
	quota, err := s.reserveQuota()
	var over *smtp.SMTPError
	switch {
	case errors.As(err, &over):
		s.srv.budget.release(reserve)
		return over
	case err != nil:
		// The store could not be asked. The check is made again before
		// the message is stored: a store still down then refuses it at
		// DATA with 451 4.3.0 and the message's id, as any store failure.
		s.log.Warn("sending limits cannot be checked at MAIL: checking again before storing", "err", err)
	}
	if !s.conn.beginTx() {
		quota.Release()
		s.srv.budget.release(reserve)
		return s.closeAfter(ErrShuttingDown)
	}
	s.mu.Lock()
	s.srv.budget.release(s.reserved) // a MAIL without RSET replaces the transaction
	s.reserved = reserve
	s.tx.quota.Release() // and its quota, unused, goes back
	s.tx = transaction{
		helo:     s.c.Hostname(),
		from:     from,
		utf8:     opts.UTF8,
		bodyType: string(opts.Body),
		dsnRet:   string(opts.Return),
		dsnEnvID: opts.EnvelopeID,
		size:     opts.Size,
		quota:    quota,
		recheck:  err != nil,
	}
	s.mu.Unlock()
	return nil
}

// reserveQuota takes one message from the sending limits of the key and
// the subaccount. Over a limit it returns the 451 4.7.1 reply naming it;
// when the store cannot be asked, the store's error (a temporary failure).
func (s *session) reserveQuota() (*limits.Reservation, error) {
	ctx, cancel := context.WithTimeout(s.ctx, authTimeout)
	defer cancel()
	r, err := s.srv.quota.Reserve(ctx, s.id.KeyID, s.subaccount)
	var ex *limits.ExceededError
	switch {
	case errors.As(err, &ex):
		s.srv.metrics.limited.WithLabelValues(ex.Scope.Kind, ex.Unit.Name()).Inc()
		s.log.Info("message refused: sending limit reached", "limit", ex.Error(), "until", ex.Until)
		return nil, limitReached(ex)
	case err != nil:
		return nil, fmt.Errorf("sending limits: %w", err)
	}
	return r, nil
}

// Rcpt adds a recipient. go-smtp has already refused the one over
// MaxRecipients (452 4.5.3).
func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	err := reply(s.rcpt(to, opts))
	s.srv.metrics.reply("RCPT", err, 250)
	if err == nil {
		s.conn.markProgress()
	}
	return err
}

func (s *session) rcpt(to string, opts *smtp.RcptOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	addr, err := parseMailbox(to, s.tx.utf8)
	if err != nil {
		return fmt.Errorf("rcpt to: %w", err)
	}
	r := &store.Recipient{Address: addr, Domain: domainOf(addr)}
	if len(opts.Notify) > 0 {
		n := make([]string, len(opts.Notify))
		for i, v := range opts.Notify {
			n[i] = string(v)
		}
		r.DSNNotify = strings.Join(n, ",")
	}
	if opts.OriginalRecipient != "" {
		r.DSNOrcpt = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
	}
	if s.id == nil {
		return ErrAuthRequired
	}
	types, err := s.checkSuppressedRcpt(addr)
	if err != nil {
		return err
	}
	if types != 0 {
		if s.tx.suppressed == nil {
			s.tx.suppressed = make(map[string]suppression.Types)
		}
		s.tx.suppressed[strings.ToLower(addr)] = types
	}
	s.tx.rcpts = append(s.tx.rcpts, r)
	return nil
}

// Reset ends the transaction (RSET, a new EHLO, the end of DATA). Quota
// still held was not used by a stored message: it is given back.
func (s *session) Reset() {
	s.mu.Lock()
	quota := s.tx.quota
	s.tx = transaction{}
	s.srv.budget.release(s.reserved)
	s.reserved = 0
	s.mu.Unlock()
	quota.Release()
	s.conn.endTx()
}

// takeReservation hands the MAIL SIZE= reservation to the message.
func (s *session) takeReservation() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.reserved
	s.reserved = 0
	return r
}

// Logout ends the session (connection closed, or STARTTLS).
func (s *session) Logout() error {
	s.mu.Lock()
	quota := s.tx.quota
	s.tx.quota = nil
	s.srv.budget.release(s.reserved)
	s.reserved = 0
	s.mu.Unlock()
	quota.Release()
	s.cancel()
	s.conn.endTx()
	// After STARTTLS the next session sets the TLS writer; until then a
	// reply from Shutdown could only be garbage in the TLS stream.
	s.conn.setWriter(nil)
	return nil
}

// Data receives the message (DATA or BDAT), stores it and answers
// 250 only once it is committed.
func (s *session) Data(r io.Reader) error {
	start := time.Now()
	// The whole transfer, however steady, must end by the data deadline;
	// it lasts until the reply is written (go-smtp reads what is left of
	// a refused message before answering).
	s.conn.startData(start.Add(s.srv.cfg.DataTimeout))
	defer s.conn.endData()
	id := store.NewID()
	// Group commit may wait a little for this message (store.Arriving).
	arrived := s.srv.st.Arriving()
	defer arrived()
	m, err := s.data(fastData(r), id, arrived)
	if err == nil {
		// Stored: the quota taken at MAIL is used for good.
		s.mu.Lock()
		s.tx.quota = nil
		s.mu.Unlock()
		s.srv.metrics.reply("DATA", queued(id), 250)
		s.log.Info("queued", "msg_id", id, "from", m.MailFrom, "rcpts", len(m.Recipients), "size", m.Size,
			"campaign_id", m.CampaignID, "duration", time.Since(start).Round(time.Microsecond).String())
		return queued(id)
	}
	if errors.Is(err, store.ErrOutcomeUnknown) {
		// The message may be stored: neither 250 nor 451 would be true.
		// No reply at all is what a client treats as "retry, perhaps a
		// duplicate" (RFC 5321 §4.1.1.4), so the connection is closed
		// without one.
		s.srv.metrics.replies.WithLabelValues("DATA", "none", "none").Inc()
		s.log.Error("commit outcome unknown: closing the connection without a reply", "msg_id", id, "err", err.Error())
		_ = s.conn.Close()
		return fmt.Errorf("message %s: connection closed without a reply: %w", id, err)
	}
	rep := reply(err).(*smtp.SMTPError)
	if rep == ErrTemporary {
		rep = &smtp.SMTPError{Code: rep.Code, EnhancedCode: rep.EnhancedCode, Message: rep.Message + " (id " + id + ")"}
	}
	s.srv.metrics.reply("DATA", rep, 250)
	// Client mistakes and dropped connections log lower than our own
	// failures (mox userError).
	level := slog.LevelInfo
	if rep.Code/100 == 4 && !errors.Is(err, errClientRead) {
		level = slog.LevelWarn
	}
	s.log.Log(s.ctx, level, "rejected", "msg_id", id, "code", rep.Code,
		"enhanced", fmt.Sprintf("%d.%d.%d", rep.EnhancedCode[0], rep.EnhancedCode[1], rep.EnhancedCode[2]), "err", err.Error())
	return rep
}

// data reads, checks, prepares and enqueues one message.
func (s *session) data(r io.Reader, id string, arrived func()) (*store.Message, error) {
	s.mu.Lock()
	tx := s.tx
	tx.rcpts = slices.Clone(tx.rcpts)
	s.mu.Unlock()

	// The MAIL SIZE= reservation, if any, becomes the message's.
	sp := newSpool(s.srv.spoolDir, s.srv.budget, s.takeReservation(), tx.size)
	defer sp.release()
	mr := &msgReader{
		sp:         sp,
		reject:     s.srv.cfg.BareLineEndings == BareReject,
		maxHeader:  s.srv.cfg.MaxHeaderBytes,
		onProgress: s.conn.markProgress,
	}
	hdrLen, err := mr.read(r)
	if err != nil {
		s.srv.metrics.limitHit(err)
		return nil, err
	}
	if s.id == nil || len(tx.rcpts) == 0 {
		return nil, errors.New("read message: transaction was reset")
	}

	tr := traceInfo{
		helo:     tx.helo,
		ip:       s.ip,
		hostname: s.srv.cfg.Hostname,
		protocol: withProtocol(s.tls != "", tx.utf8),
		tls:      s.tls,
		id:       id,
		now:      time.Now(),
	}
	if len(tx.rcpts) == 1 {
		tr.recipient = tx.rcpts[0].Address
	}
	hdr, err := sp.head(hdrLen)
	if err != nil {
		return nil, err
	}
	p, err := prepareHeader(hdr, tr, s.srv.cfg.MaxReceivedHeaders)
	if err != nil {
		s.srv.metrics.limitHit(err)
		return nil, err
	}
	// The new header goes in front of the body where it lies: the message
	// is not copied (see spool.go).
	body, err := sp.message(p.header, hdrLen)
	if err != nil {
		return nil, err
	}
	m := &store.Message{
		ID:         id,
		KeyID:      s.id.KeyID,
		Subaccount: s.subaccount,
		MailFrom:   tx.from,
		Body:       body,
		SMTPUTF8:   tx.utf8,
		BodyType:   tx.bodyType,
		DSNRet:     tx.dsnRet,
		DSNEnvID:   tx.dsnEnvID,
		Recipients: tx.rcpts,
		Info: store.MessageInfo{
			FriendlyFrom: p.fromAddr,
			Subject:      p.subject,
			IPAddress:    s.ip.String(),
		},
	}
	if p.msys != nil {
		if err := s.addMsysRecipients(m, p.msys); err != nil {
			return nil, err
		}
		m.CampaignID = p.msys.CampaignID
		if m.MsysAPI, err = p.msys.Encode(); err != nil {
			return nil, err
		}
	}

	if tx.recheck {
		// MAIL could not take the quota: take it now, before anything
		// is stored (over a limit: 451 4.7.1; store down: 451 4.3.0).
		quota, err := s.reserveQuota()
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.tx.quota, s.tx.recheck = quota, false
		s.mu.Unlock()
	}

	ctx, cancel := context.WithTimeout(s.ctx, enqueueTimeout)
	defer cancel()
	rep, err := s.srv.domains.check(ctx, p.fromDomain, s.subaccount, s.srv.cfg.RequireVerifiedDomains)
	if err != nil {
		return nil, err
	}
	if rep != nil {
		s.policyRejection(ctx, m, p.msys, rep)
		return nil, fmt.Errorf("from domain %q: %w", p.fromDomain, rep)
	}
	if err := s.dropSuppressed(ctx, m, p.msys, tx.suppressed); err != nil {
		return nil, err
	}

	ho := s.srv.cfg.Handoff
	leased := false
	if ho != nil {
		var l store.Lease
		if l, leased = ho.Reserve(ctx, len(m.Recipients), rcptDomains(m.Recipients)); leased {
			m.Lease = &l
		}
	}
	// The commit gets its whole time, whatever the wait for the relay's
	// room (relay.in_flow_delay) took.
	ectx, ecancel := context.WithTimeout(s.ctx, enqueueTimeout)
	defer ecancel()
	t0 := time.Now()
	arrived()
	err = s.srv.st.Enqueue(ectx, m)
	s.srv.metrics.enqueue.Observe(time.Since(t0).Seconds())
	if leased {
		if err != nil {
			ho.Release(len(m.Recipients))
		} else {
			// A body in memory goes to the relay as it is: nothing
			// else uses it now. A mapped one is copied: the mapping
			// goes with the spool.
			ho.Handoff(*m.Lease, m.Claimed(sp.inMemory()))
		}
	}
	// The body's memory (or mapping) goes with the spool.
	m.Body = nil
	if err != nil {
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	s.conn.messageQueued()
	s.srv.metrics.queued.Inc()
	s.srv.metrics.bytes.Add(float64(m.Size))
	return m, nil
}

// rcptDomains lists the distinct domains of rs.
func rcptDomains(rs []*store.Recipient) []string {
	var ds []string
	for _, r := range rs {
		if !slices.Contains(ds, r.Domain) {
			ds = append(ds, r.Domain)
		}
	}
	return ds
}

// addMsysRecipients adds X-MSYS-API cc, bcc and archive addresses to the
// envelope, within MaxRecipients and 1000 in all.
func (s *session) addMsysRecipients(m *store.Message, x *MsysAPI) error {
	extra := x.Recipients()
	if len(extra) == 0 {
		return nil
	}
	limit := min(s.srv.cfg.MaxRecipients, maxTotalRecipients)
	if len(m.Recipients)+len(extra) > limit {
		return msysErrorf("too many recipients with cc, bcc and archive (at most %d in all)", limit)
	}
	to := make(map[string]bool, len(m.Recipients))
	for _, r := range m.Recipients {
		to[r.Address] = true
	}
	for i, a := range extra {
		addr, err := parseMailbox(a, true)
		if err != nil {
			return msysErrorf("bad address %q", a)
		}
		m.Recipients = append(m.Recipients, &store.Recipient{Address: addr, Domain: domainOf(addr)})
		if m.Info.RcptTypes == nil {
			m.Info.RcptTypes = make(map[string]string, len(extra))
		}
		if _, ok := m.Info.RcptTypes[addr]; !ok && !to[addr] {
			m.Info.RcptTypes[addr] = x.rcptType(i)
		}
	}
	return nil
}

// policyRejection records a refused message as policy_rejection events,
// one per recipient, so it shows in the events API. A failure to record is
// only logged: the client gets its 550 anyway.
func (s *session) policyRejection(ctx context.Context, m *store.Message, x *MsysAPI, rep *smtp.SMTPError) {
	evs := make([]store.Event, 0, len(m.Recipients))
	line := replyLine(rep)
	class := int(bounce.Classify(rep.Code, fmt.Sprintf("%d.%d.%d", rep.EnhancedCode[0], rep.EnhancedCode[1], rep.EnhancedCode[2]), rep.Message))
	for _, r := range m.Recipients {
		ev := store.Event{
			Type:       store.EventPolicyRejection,
			MessageID:  m.ID,
			KeyID:      m.KeyID,
			Subaccount: m.Subaccount,
			Recipient:  r.Address,
			CampaignID: m.CampaignID,
			Reply:      line,
			Detail: store.EventDetail{
				MsgFrom:       m.MailFrom,
				FriendlyFrom:  m.Info.FriendlyFrom,
				Subject:       m.Info.Subject,
				MsgSize:       int64(len(m.Body)),
				IPAddress:     m.Info.IPAddress,
				RoutingDomain: r.Domain,
				RcptType:      m.Info.RcptType(r.Address),
				BounceClass:   class,
				ErrorCode:     strconv.Itoa(rep.Code),
			},
		}
		if x != nil {
			ev.CampaignID = x.CampaignID
			ev.Metadata = x.Metadata
			ev.Tags = x.Tags
		}
		evs = append(evs, ev)
	}
	if err := s.srv.st.AddEvents(ctx, evs); err != nil {
		s.log.Warn("record policy rejection", "msg_id", m.ID, "err", err)
	}
}

// withProtocol is the Received: "with" keyword: ESMTP plus S for TLS and A
// for AUTH (RFC 3848), UTF8 variants for SMTPUTF8 (RFC 6531 §3.7.3).
func withProtocol(tls, utf8 bool) string {
	p := "ESMTP"
	if utf8 {
		p = "UTF8SMTP"
	}
	if tls {
		p += "S"
	}
	return p + "A"
}

// interface checks.
var (
	_ smtp.Backend = backend{}
	_ net.Conn     = (*conn)(nil)
)
