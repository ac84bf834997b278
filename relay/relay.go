// Package relay delivers queued mail onward: to a smarthost, or to each
// recipient domain's MX hosts. It is the only package that speaks SMTP as a
// client.
//
// # Delivery steps
//
// A [Relay] runs one claim loop and up to Config.Workers delivery goroutines.
//
//  1. Claim. The loop leases due recipients with [store.Store.ClaimDue] when
//     the store signals new mail ([store.Store.Wakeups]), when a delivery
//     finished and the last claim was full, when a saturated destination has
//     room again, and on a one-second poll for deferred mail coming due. A
//     claim takes at most 2×Config.Workers recipients minus the jobs ready to
//     run, and skips saturated destinations (see Fairness below). A full
//     claim is followed by a claim of the rest of its last message for the
//     same destination (ClaimOptions.MessageID), so the claim size never
//     splits a message.
//  2. Group. Claimed recipients of the same message and destination (the
//     domain in MX mode, the smarthost in smarthost mode) form one job:
//     one MAIL FROM, several RCPT TO, one DATA; recipients the server
//     refuses for its per-transaction limit (452, x.5.3) go in the next
//     transaction on the same connection.
//  3. Expire. A job whose message is older than Config.MaxQueueLifetime is
//     not attempted: its recipients expire (it needs a worker, not its
//     destination).
//  4. Limit. A job waits for a slot of its destination's semaphore
//     (the destination is the recipient domain in MX mode, with
//     Config.PerDomainConcurrency slots, and the smarthost in smarthost mode,
//     with Config.SmarthostConcurrency), then for one of the Config.Workers
//     worker slots.
//  5. Body. The body comes from [store.Store.MessageBody]. If the domain of
//     its From: header is a sending domain ([store.Store.GetDomain], cached
//     for 30 s), a relaxed/relaxed DKIM-Signature is prepended
//     (https://tools.ietf.org/html/rfc6376).
//  6. Route. In smarthost mode the one route is Config.Smarthost. In MX mode
//     the domain's MX records, sorted by preference; a domain without MX
//     records is its own mail host if it has an address
//     (https://tools.ietf.org/html/rfc5321#section-5.1); a null MX ("."),
//     https://tools.ietf.org/html/rfc7505, and a domain that does not exist
//     bounce.
//  7. Connect. An idle connection to the route's host is reused (transactions
//     after the first skip the greeting; RSET after an aborted one), else a
//     new one is dialled: greeting, EHLO Config.Hostname, STARTTLS (required
//     for a "starttls" smarthost; opportunistic and unverified in MX mode, as
//     Postfix's "may" level, falling back to plain text when the handshake
//     fails), EHLO again, AUTH (PLAIN, else LOGIN, as offered) for a
//     smarthost with a username. A
//     connection failure moves on to the next MX host.
//  8. Transaction. MAIL FROM with SIZE, SMTPUTF8, RET and ENVID when the
//     message had them and the server supports them (BODY=8BITMIME is added
//     by go-smtp when offered); RCPT TO per recipient with NOTIFY and ORCPT
//     when the server offers DSN; DATA. A RCPT reply decides for its
//     recipient only; the DATA reply decides for every accepted recipient.
//  9. Classify. 2xx delivered; 4xx, timeouts and broken connections deferred
//     with exponential backoff and jitter (Config.RetryInitial doubling up to
//     Config.RetryMax, ±20%); 5xx bounced. A deferral that would land past the
//     queue lifetime expires instead.
//  10. Finish. One [store.Store.Finish] per job writes the outcomes, one event
//     per recipient (delivery, delay, bounce, expiry) and, for bounced or
//     expired recipients whose NOTIFY allows it, one DSN to the envelope sender
//     (see dsn.go), in one transaction: a bounce sends exactly one DSN, and
//     never for a null sender. Then the recipients of hard bounces (bounce
//     classes 10, 30, 90) go on their account's suppression list for both
//     types (package suppression).
//  11. Reuse. A connection left in a clean state goes back to the idle pool;
//     idle connections are closed after 5 s.
//
// # Fairness between destinations
//
// A backlog for one destination must not stall the others, so a job waiting
// for its destination's slot holds no worker: it takes the destination slot
// first (at once, when the claim loop hands it out, if one is free) and a
// worker slot after. (PerDomainConcurrency below is SmarthostConcurrency
// for the smarthost.) A destination with 2×PerDomainConcurrency jobs holding
// or waiting for its slots is saturated: in MX mode claims exclude its
// domain ([store.ClaimOptions].ExcludeDomains), so they take mail for other
// domains while it drains PerDomainConcurrency at a time; in smarthost mode,
// where every job has that one destination, the loop does not claim while it
// is saturated. When a saturated destination drops below that count the
// loop claims again at once. Claimed but unstarted work stays bounded: jobs
// ready to run (holding their destination's slot) never exceed 2×Workers,
// since a claim asks for no more than that minus those already ready and
// a waiting job becomes ready only in the place of one of its destination
// that left; and a destination gets no new jobs once saturated, so at most
// 2×PerDomainConcurrency plus one claim's jobs wait for it. One destination
// can still take every worker when PerDomainConcurrency >= Workers (the
// smarthost does by default: in smarthost mode it is the only one).
//
// # Leases
//
// A claimed recipient is leased to this relay for Config.Lease. Leases are not
// renewed: every job runs under a deadline of three quarters of the lease from
// its claim, and its connection is closed when the deadline passes, so the
// outcome is written while the lease still holds and no other node delivers
// the same recipient again. The lease must therefore exceed a slow delivery:
// connect plus a few command timeouts. A delivery cut off by the deadline is
// deferred and retried; the default lease, 15 min, lets every command use
// its full 5 min CommandTimeout. A node that dies loses its leases when they
// end and another node retries the work.
//
// A job still waiting for its destination or a worker at its deadline gives
// up and leaves its recipients to their lease, which ends a quarter lease
// later; they are retried then, with no attempt counted. (The store has no
// call to release single recipients, and one more claim would find the
// destination as busy.)
//
// [Relay.Stop] does not wait that long for work it claimed but had not
// started: jobs still waiting for a worker or for their destination's
// semaphore are dropped, and once the running deliveries have recorded
// their outcomes Stop releases every lease the relay still holds
// ([store.Store.ReleaseLeases]), so another node, or the next start, takes
// the work up at once. With Config.ReleaseAllLeasesOnStart, Start also
// releases the leases of every other owner: for a store no other relay
// uses (SQLite under an exclusive lock on its data directory), where those
// owners can only be dead processes.
//
// # Maintenance
//
// A maintenance loop runs at start and every minute. It holds the queued
// mail of suspended subaccounts, releases that of reactivated ones and
// drops that of terminated ones ([store.Store.ApplySubaccountStatus]; the
// change of status does it at once, this pass catches mail accepted just
// after). It deletes finished
// messages (every recipient delivered, bounced or expired) whose last
// recipient finished more than Config.FinishedRetention ago, in chunks of
// 1000 until a chunk comes back short, and, hourly, events older than
// Config.EventRetention. Events of a deleted message stay until their own
// retention.
//
// # Choices where the specification is silent
//
//   - DSNs: failure reports follow NOTIFY (default FAILURE). A "delayed" DSN
//     is sent once, on the first deferral, only to recipients that asked
//     NOTIFY=DELAY. A "relayed" DSN is sent for NOTIFY=SUCCESS when the next
//     hop does not offer DSN; when it does, NOTIFY and ORCPT go along and the
//     next hop reports. Original headers are returned unless RET=FULL.
//   - A message needing SMTPUTF8 (a non-ASCII address or header) bounces
//     (5.6.7) at a server without it; one whose client declared SMTPUTF8
//     but that is all ASCII is sent without it.
//     8-bit bodies are sent as they are to servers without 8BITMIME, and
//     BINARYMIME bodies are sent with DATA (go-smtp's client has no BDAT).
//   - Opportunistic TLS in MX mode does not verify certificates.
//   - A 5xx to AUTH at the smarthost, or a missing STARTTLS, defers (a
//     configuration problem on our side must not bounce mail).
package relay

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/suppression"
)

// Relay modes and smarthost TLS modes.
const (
	ModeMX        = "mx"
	ModeSmarthost = "smarthost"
	// ModeHold keeps mail queued: nothing is claimed or delivered until
	// the mode changes (a reload, or a restart with another mode).
	ModeHold = "hold"

	TLSStartTLS = "starttls"
	TLSImplicit = "implicit"
	TLSNone     = "none"
)

// Defaults for zero Config fields.
const (
	DefaultWorkers              = 32
	DefaultPerDomainConcurrency = 8
	DefaultRetryInitial         = time.Minute
	DefaultRetryMax             = time.Hour
	DefaultMaxQueueLifetime     = 72 * time.Hour
	DefaultLease                = 15 * time.Minute
	DefaultFinishedRetention    = time.Hour
	DefaultConnectTimeout       = 30 * time.Second
	DefaultCommandTimeout       = 5 * time.Minute
	DefaultMXPort               = 25
)

const (
	// maxBatch caps one ClaimDue.
	maxBatch = 100
	// maxMessageRecipients is the most recipients of one message a job
	// takes (the submission limit, SPEC §4): a message cut by maxBatch is
	// completed up to this many.
	maxMessageRecipients = 1000
	// pollInterval is how often the loop looks for deferred mail coming due.
	pollInterval = time.Second
	// maintainInterval is how often finished messages are pruned.
	maintainInterval = time.Minute
	// pruneEventsInterval is how often old events are pruned.
	pruneEventsInterval = time.Hour
	// pruneBatch caps one PruneMessages.
	pruneBatch = 1000
	// storeTimeout bounds one store call made by a delivery.
	storeTimeout = 30 * time.Second
	// releaseTimeout bounds releasing the leases at Stop.
	releaseTimeout = 5 * time.Second
	// finishBackoffMin and finishBackoffMax space the retries of a failed
	// Finish: a store that recovers has the outcome within seconds.
	finishBackoffMin = 100 * time.Millisecond
	finishBackoffMax = 2 * time.Second
)

// Config configures a Relay. Zero values take the defaults above.
type Config struct {
	// Hostname is the EHLO name and the Reporting-MTA of DSNs; default
	// os.Hostname().
	Hostname string
	// Mode is "mx" (default), "smarthost" or "hold" (deliver nothing;
	// mail stays queued).
	Mode string
	// Smarthost is host:port of the smarthost in smarthost mode.
	Smarthost string
	// SmarthostTLS is "starttls" (default; required), "implicit" or "none".
	SmarthostTLS string
	// SmarthostUsername enables AUTH to the smarthost when not empty (PLAIN,
	// or LOGIN when the server offers only that).
	SmarthostUsername string
	// SmarthostPassword is the password for AUTH.
	SmarthostPassword string
	// SmarthostInsecureSkipVerify accepts any smarthost certificate.
	SmarthostInsecureSkipVerify bool
	// SmarthostRootCAs verifies the smarthost certificate; nil: system roots.
	SmarthostRootCAs *x509.CertPool
	// Workers is the number of parallel deliveries.
	Workers int
	// InFlowDelay is how long Reserve waits for room when the relay is
	// full (every worker busy and the claims' room taken), so that a
	// node's SMTP sessions slow down to the pace its relay delivers at,
	// as Postfix's in_flow_delay does; 0 does not wait.
	InFlowDelay time.Duration
	// PerDomainConcurrency caps parallel deliveries per destination domain
	// in MX mode.
	PerDomainConcurrency int
	// SmarthostConcurrency caps parallel deliveries to the smarthost in
	// smarthost mode, where all mail shares that one destination, chosen
	// by the operator; 0 means Workers.
	SmarthostConcurrency int
	// DisableChunking sends DATA to every server, even those that offer
	// CHUNKING (see canChunk).
	DisableChunking bool
	// RetryInitial is the first retry delay; it doubles per attempt.
	RetryInitial time.Duration
	// RetryMax caps the retry delay.
	RetryMax time.Duration
	// MaxQueueLifetime is how long a message is retried before it expires.
	MaxQueueLifetime time.Duration
	// Lease is how long claimed recipients stay leased to this relay. It
	// must exceed a slow delivery (see the package doc).
	Lease time.Duration
	// ConnectTimeout bounds dialling and the TLS handshake.
	ConnectTimeout time.Duration
	// CommandTimeout bounds each SMTP command and the DATA transfer.
	CommandTimeout time.Duration
	// DNSResolver is host:port of the DNS server for MX and address lookups;
	// "" uses the system resolver.
	DNSResolver string
	// MXPort is the port dialled on MX hosts (25; tests use a local port).
	MXPort int
	// EventRetention prunes events older than this, hourly; 0 keeps them.
	EventRetention time.Duration
	// FinishedRetention is how long a finished message (every recipient
	// delivered, bounced or expired) is kept after its last recipient
	// finished; then its body and recipients are deleted (its events stay).
	FinishedRetention time.Duration
	// ReleaseAllLeasesOnStart makes Start release the leases of every owner
	// before the first claim. Set it only when no other relay can use the
	// store (SQLite with the data directory locked): on a shared database
	// it would hand live nodes' work to this one, delivering it twice.
	ReleaseAllLeasesOnStart bool
	// Owner is the lease owner id; "" gives hostname-pid-random.
	Owner string
	// Logger receives the relay's logs; nil discards them.
	Logger *slog.Logger
}

// Relay delivers queued mail. Create it with New, run it with Start, end it
// with Stop.
type Relay struct {
	cfg      atomic.Pointer[Config] // current configuration; see conf and Reload
	st       store.Store
	log      *slog.Logger
	metrics  *metrics
	resolver *net.Resolver
	pool     *connPool
	sems     *semaphores
	domains  *domainCache
	mx       *mxCache
	supp     *suppression.Service // hard bounces go on the suppression list

	slots    chan struct{}          // one per running job; capacity cfg.Workers
	ready    atomic.Int64           // jobs holding their destination's slot (or expiring), waiting for a worker or running
	reserved atomic.Int64           // recipients Reserve promised room for, not yet handed off or released
	run      atomic.Pointer[runCtx] // set by Start: the contexts jobs run under
	handoff  sync.RWMutex           // Handoff holds it shared while it starts jobs; Stop takes it to set stopped
	stopped  bool                   // Stop began; guarded by handoff
	jobDone  chan struct{}          // coalesced: a job finished
	room     roomSignal             // wakes Reserve's waiters (InFlowDelay)
	stop     chan struct{}          // closed by Stop
	stopOnce sync.Once
	started  atomic.Bool
	loopDone chan struct{} // closed when the claim and maintenance loops returned
	jobs     sync.WaitGroup

	// pruneLimit caps one PruneMessages (pruneBatch; tests lower it).
	pruneLimit  int
	releaseOnce sync.Once // Stop releases the leases once
}

// New checks cfg, fills its defaults and returns a Relay that is not yet
// running. reg may be nil (no metrics registered).
func New(cfg Config, st store.Store, reg prometheus.Registerer) (*Relay, error) {
	if st == nil {
		return nil, errors.New("new relay: nil store")
	}
	if err := applyDefaults(&cfg); err != nil {
		return nil, fmt.Errorf("new relay: %w", err)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("new relay: %w", err)
	}
	if reg != nil {
		if err := reg.Register(newQueueCollector(st, cfg.Logger)); err != nil {
			return nil, fmt.Errorf("new relay: register queue metrics: %w", err)
		}
	}
	r := &Relay{
		st:       st,
		log:      cfg.Logger,
		metrics:  m,
		resolver: newResolver(cfg.DNSResolver),
		pool:     newConnPool(),
		sems:     newSemaphores(cfg.PerDomainConcurrency, map[string]int{smarthostDest: cfg.SmarthostConcurrency}),
		domains:  newDomainCache(st),
		mx:       newMXCache(),
		supp:     suppression.New(st, nil),
		slots:    make(chan struct{}, cfg.Workers),
		jobDone:  make(chan struct{}, 1),
		stop:     make(chan struct{}),
		loopDone: make(chan struct{}),

		pruneLimit: pruneBatch,
	}
	r.cfg.Store(&cfg)
	r.log.Debug("relay limits", "lease", cfg.Lease.String(), "job_deadline", (cfg.Lease * 3 / 4).String(),
		"connect_timeout", cfg.ConnectTimeout.String(), "command_timeout", cfg.CommandTimeout.String())
	return r, nil
}

// applyDefaults validates cfg and fills zero fields.
func applyDefaults(cfg *Config) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("hostname: %w (set hostname in the configuration)", err)
		}
		cfg.Hostname = h
	}
	switch cfg.Mode {
	case "":
		cfg.Mode = ModeMX
	case ModeMX, ModeSmarthost, ModeHold:
	default:
		return fmt.Errorf("relay.mode %q: use \"mx\", \"smarthost\" or \"hold\"", cfg.Mode)
	}
	if cfg.Mode == ModeSmarthost {
		if _, port, err := net.SplitHostPort(cfg.Smarthost); err != nil || port == "" {
			return fmt.Errorf("relay.smarthost %q: must be host:port when relay.mode = \"smarthost\"", cfg.Smarthost)
		}
	}
	switch cfg.SmarthostTLS {
	case "":
		cfg.SmarthostTLS = TLSStartTLS
	case TLSStartTLS, TLSImplicit, TLSNone:
	default:
		return fmt.Errorf("relay.smarthost_tls %q: use \"starttls\", \"implicit\" or \"none\"", cfg.SmarthostTLS)
	}
	setDefault(&cfg.Workers, DefaultWorkers)
	setDefault(&cfg.PerDomainConcurrency, DefaultPerDomainConcurrency)
	setDefault(&cfg.SmarthostConcurrency, cfg.Workers)
	setDefault(&cfg.MXPort, DefaultMXPort)
	setDefault(&cfg.RetryInitial, DefaultRetryInitial)
	setDefault(&cfg.RetryMax, DefaultRetryMax)
	if cfg.RetryMax < cfg.RetryInitial {
		cfg.RetryMax = cfg.RetryInitial
	}
	setDefault(&cfg.MaxQueueLifetime, DefaultMaxQueueLifetime)
	setDefault(&cfg.Lease, DefaultLease)
	setDefault(&cfg.FinishedRetention, DefaultFinishedRetention)
	setDefault(&cfg.ConnectTimeout, DefaultConnectTimeout)
	setDefault(&cfg.CommandTimeout, DefaultCommandTimeout)
	if cfg.DNSResolver != "" {
		if _, _, err := net.SplitHostPort(cfg.DNSResolver); err != nil {
			cfg.DNSResolver = net.JoinHostPort(cfg.DNSResolver, "53")
		}
	}
	if cfg.EventRetention < 0 {
		cfg.EventRetention = 0
	}
	if cfg.Owner == "" {
		cfg.Owner = defaultOwner()
	}
	return nil
}

// setDefault sets *v to def when it is not positive.
func setDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// defaultOwner returns hostname-pid-random, unique per Relay.
func defaultOwner() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "smtpgw"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return h + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
}

// conf returns the current configuration (see Reload).
func (r *Relay) conf() *Config { return r.cfg.Load() }

// Reload applies the settings of cfg that can change while the relay runs:
// Mode, Smarthost, SmarthostTLS, SmarthostUsername, SmarthostPassword,
// SmarthostInsecureSkipVerify, SmarthostRootCAs, RetryInitial, RetryMax,
// MaxQueueLifetime, ConnectTimeout, CommandTimeout, InFlowDelay,
// EventRetention and FinishedRetention. The others (Hostname, Workers,
// PerDomainConcurrency, Lease, DNSResolver, MXPort,
// ReleaseAllLeasesOnStart, Owner, Logger) keep their values; they need a
// restart. An invalid cfg is refused with
// an error and nothing changes. Idle connections are closed, so the next
// delivery connects with the new settings; deliveries under way finish with
// the old ones.
func (r *Relay) Reload(cfg Config) error {
	old := r.conf()
	cfg.Hostname, cfg.Logger, cfg.Owner = old.Hostname, old.Logger, old.Owner
	if err := applyDefaults(&cfg); err != nil {
		return fmt.Errorf("reload relay: %w", err)
	}
	cfg.Workers, cfg.PerDomainConcurrency, cfg.Lease = old.Workers, old.PerDomainConcurrency, old.Lease
	cfg.SmarthostConcurrency = old.SmarthostConcurrency
	cfg.DNSResolver, cfg.MXPort, cfg.ReleaseAllLeasesOnStart = old.DNSResolver, old.MXPort, old.ReleaseAllLeasesOnStart
	r.cfg.Store(&cfg)
	r.pool.expire(true)
	if cfg.Mode != old.Mode {
		r.logMode(cfg.Mode)
	}
	return nil
}

// logMode logs the relay mode, loudly when it is hold.
func (r *Relay) logMode(mode string) {
	if mode == ModeHold {
		r.log.Warn("RELAY IS ON HOLD (relay.mode = \"hold\"): mail is accepted and queued but NOT delivered. " +
			"Set relay.mode to \"smarthost\" or \"mx\" and reload (SIGHUP) to deliver it")
		return
	}
	r.log.Info("relay mode", "mode", mode)
}

// Owner returns the lease owner id this relay claims with.
func (r *Relay) Owner() string { return r.conf().Owner }

// Start starts the claim loop, the maintenance loop and the
// idle-connection janitor; with Config.ReleaseAllLeasesOnStart it first
// releases every lease in the store. Cancelling ctx stops claiming, as Stop
// does, and drops claimed jobs not yet started; deliveries already running
// finish and record their outcomes (their store calls do not inherit ctx's
// cancellation). Call Stop to wait for them and release the leases left.
func (r *Relay) Start(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("start relay: already started")
	}
	select {
	case <-r.stop:
		close(r.loopDone) // Stop may be waiting for a loop that never ran
		return errors.New("start relay: already stopped")
	default:
	}
	if r.conf().ReleaseAllLeasesOnStart {
		rctx, cancel := context.WithTimeout(ctx, storeTimeout)
		n, err := r.st.ReleaseLeases(rctx, "")
		cancel()
		if err != nil {
			close(r.loopDone) // no loop runs; Stop must not wait for one
			return fmt.Errorf("start relay: release leases of earlier processes: %w", err)
		}
		if n > 0 {
			r.log.Info("released leases of earlier processes", "recipients", n)
		}
	}
	r.log.Info("relay started", "mode", r.conf().Mode, "workers", r.conf().Workers,
		"per_domain_concurrency", r.conf().PerDomainConcurrency, "smarthost_concurrency", r.conf().SmarthostConcurrency,
		"owner", r.conf().Owner)
	if r.conf().Mode == ModeHold {
		r.logMode(ModeHold)
	}
	base := context.WithoutCancel(ctx)
	loopCtx, cancel := context.WithCancel(ctx)
	r.run.Store(&runCtx{ctx: loopCtx, base: base})
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		r.claimLoop(loopCtx, base)
	}()
	go func() {
		defer wg.Done()
		r.maintainLoop(loopCtx)
	}()
	go func() {
		defer wg.Done()
		r.pool.janitor(loopCtx, r.stop)
	}()
	go func() {
		select {
		case <-r.stop:
		case <-loopCtx.Done():
		}
		cancel()
		wg.Wait()
		close(r.loopDone)
	}()
	return nil
}

// Stop stops claiming, drops claimed jobs not yet started, waits for running
// deliveries to finish and record their outcomes, closes idle connections,
// and releases the leases the relay still holds, so other relays (or the
// next start) can claim that work at once. It is safe to call twice, and
// without Start.
func (r *Relay) Stop() {
	r.stopOnce.Do(func() { close(r.stop) })
	// A barrier: from here on no Handoff starts jobs.
	r.handoff.Lock()
	r.stopped = true
	r.handoff.Unlock()
	if r.started.Load() {
		<-r.loopDone
	}
	r.jobs.Wait()
	r.pool.closeAll()
	if r.started.Load() {
		r.releaseOnce.Do(r.releaseLeases)
	}
}

// releaseLeases releases the leases still held by this relay's owner id:
// recipients of dropped jobs, of jobs whose outcome could not be written,
// of messages deleted while claimed.
func (r *Relay) releaseLeases() {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	n, err := r.st.ReleaseLeases(ctx, r.conf().Owner)
	switch {
	case err != nil:
		r.log.Warn("release leases at stop; the recipients wait for their lease to end", "err", err)
	case n > 0:
		r.log.Info("released leases at stop", "recipients", n)
	}
}

// claimLoop claims due recipients and dispatches jobs until ctx ends.
func (r *Relay) claimLoop(ctx, base context.Context) {
	poll := time.NewTicker(pollInterval)
	defer poll.Stop()
	wakeups := r.st.Wakeups()
	more := true // the last claim may have left due work behind
	for {
		if ctx.Err() != nil {
			return
		}
		if more {
			n, limit := r.claimOnce(ctx, base)
			more = limit > 0 && n >= limit || limit == 0
		}
		select {
		case <-ctx.Done():
			return
		case <-wakeups:
			more = true
		case <-poll.C:
			more = true
		case <-r.jobDone:
			// Claim again only if the last claim was full (or skipped for
			// want of room): otherwise the queue held no more due work.
		case <-r.sems.freed:
			// A saturated destination has room again; its due work was
			// skipped by the claims since.
			more = true
		}
	}
}

// claimOnce claims work and starts a goroutine per job. It claims at most
// 2×Workers minus the jobs already ready to run (holding their
// destination's slot) or running, skips saturated destinations (see
// [semaphores.saturated]; in smarthost mode, where every job has the same
// destination, it does not claim at all while that one is saturated), and
// takes a free destination slot for each job at once when there is one. It
// returns how many recipients it claimed and the limit it asked for (0 when
// it did not claim).
func (r *Relay) claimOnce(ctx, base context.Context) (int, int) {
	if r.conf().Mode == ModeHold {
		return 0, 0
	}
	room := 2*r.conf().Workers - int(r.ready.Load()) - int(r.reserved.Load())
	if room <= 0 {
		return 0, 0
	}
	busy := r.sems.saturated()
	var exclude []string
	if r.conf().Mode == ModeSmarthost {
		if len(busy) > 0 {
			return 0, 0
		}
	} else {
		exclude = busy
	}
	limit := min(maxBatch, room)
	// The lease runs from the store's clock at claim time; take the
	// deadline before asking so it is never later than the lease allows.
	deadline := time.Now().Add(r.conf().Lease * 3 / 4)
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	claimed, err := r.st.ClaimDue(cctx, r.conf().Owner, store.ClaimOptions{
		Limit: limit, Lease: r.conf().Lease, ExcludeDomains: exclude})
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("claim due recipients", "err", err)
		}
		return 0, limit
	}
	if len(claimed) == 0 {
		return 0, limit
	}
	n := len(claimed)
	if n == limit && cutShort(claimed) {
		// The limit may have cut the last message in two: claim the rest
		// of it for the same destination, so it goes out in one
		// transaction (or as few as the server's recipient limit allows)
		// rather than in claim-sized pieces.
		claimed = r.claimRest(ctx, claimed)
	}
	r.metrics.claimed.Add(float64(len(claimed)))
	r.dispatch(ctx, base, claimed, deadline)
	return n, limit
}

// dispatch groups claimed recipients into jobs and starts a goroutine per
// job; deadline is when their lease stops covering a delivery.
func (r *Relay) dispatch(ctx, base context.Context, claimed []*store.Claimed, deadline time.Time) {
	now := time.Now()
	for _, j := range groupJobs(claimed, r.conf().Mode, deadline) {
		j.expired = now.Sub(j.rcpts[0].CreatedAt) > r.conf().MaxQueueLifetime
		var t *ticket
		if j.expired {
			r.ready.Add(1) // expiring needs a worker, not the destination
		} else {
			// Joining here, not in the goroutine, makes the next claim
			// see the destination's load.
			t = r.sems.join(j.dest)
			if t.tryAcquire() {
				r.ready.Add(1)
			}
		}
		r.jobs.Add(1)
		go func() {
			defer func() {
				r.jobs.Done()
				select {
				case r.jobDone <- struct{}{}:
				default:
				}
				r.room.freed()
			}()
			r.runJob(ctx, base, j, t)
		}()
	}
}

// runCtx holds the contexts of a started relay's jobs (see Start).
type runCtx struct{ ctx, base context.Context }

// Handoff: a message this node just received goes to its delivery
// workers at once, without waiting for a claim. Before storing it, the SMTP
// server asks Reserve for room; if granted, the message is stored with its
// recipients already leased to this relay (store.Message.Lease), and once
// that commit is done Handoff starts its jobs, exactly as for claimed
// ones. So a message costs no claim transaction and no body read, and its
// delivery starts without a wake-up round trip through the store. When the
// message is not stored, Release gives the room back. A handed-off
// recipient whose job never runs (the process stops or dies) keeps its
// lease until Stop releases it or it runs out, like a claimed one.

// Reserve asks for room to deliver n recipients, of the given domains, the
// moment they are stored. It refuses (the message is stored unleased and
// claimed as usual) when the relay is not running or on hold, when a
// destination of the message is saturated, or when the claims' room
// (2×Workers minus ready jobs and other reservations) is smaller than n.
// When the relay is full (no room, or in smarthost mode the smarthost
// saturated), it first waits up to
// Config.InFlowDelay for room (not beyond ctx), if n can fit at all: the
// session that asked waits with it, and a node whose sessions take in mail
// faster than its relay delivers slows them to the relay's pace instead of
// letting the queue grow.
func (r *Relay) Reserve(ctx context.Context, n int, domains []string) (store.Lease, bool) {
	l, ok, full := r.reserve(n, domains)
	cfg := r.conf()
	if ok || !full || cfg.InFlowDelay <= 0 || int64(n) > 2*int64(cfg.Workers) {
		return l, ok
	}
	start := time.Now()
	timer := time.NewTimer(cfg.InFlowDelay)
	defer timer.Stop()
	// Waiters are served in turn: each freed room wakes the longest
	// waiting, so that no session waits the whole delay while others
	// arriving later go first. A waiter is in the queue before each try,
	// so that room freed during the try wakes it again.
	w := r.room.join()
	defer r.room.leave(w)
	for {
		if l, ok, full = r.reserve(n, domains); ok || !full {
			r.metrics.inflowDelay.Observe(time.Since(start).Seconds())
			if ok {
				r.room.freed() // what is left may serve the next in turn
			}
			return l, ok
		}
		select {
		case <-w.wake:
		case <-timer.C:
			r.metrics.inflowDelay.Observe(time.Since(start).Seconds())
			return store.Lease{}, false
		case <-ctx.Done():
			return store.Lease{}, false
		case <-r.stop:
			return store.Lease{}, false
		}
		r.room.requeue(w) // woken, it keeps its turn: first in the queue
	}
}

// reserve is one try of Reserve; full reports a refusal for want of room
// alone.
func (r *Relay) reserve(n int, domains []string) (l store.Lease, ok, full bool) {
	cfg := r.conf()
	if n <= 0 || cfg.Mode == ModeHold || r.run.Load() == nil {
		return store.Lease{}, false, false
	}
	select {
	case <-r.stop:
		return store.Lease{}, false, false
	default:
	}
	if busy := r.sems.saturated(); len(busy) > 0 {
		if cfg.Mode == ModeSmarthost {
			// All mail goes to the smarthost: its being saturated is
			// the relay being full.
			return store.Lease{}, false, true
		}
		for _, d := range domains {
			if slices.Contains(busy, d) {
				return store.Lease{}, false, false
			}
		}
	}
	for {
		res := r.reserved.Load()
		if 2*int64(cfg.Workers)-r.ready.Load()-res < int64(n) {
			return store.Lease{}, false, true
		}
		if r.reserved.CompareAndSwap(res, res+int64(n)) {
			break
		}
	}
	return store.Lease{Owner: cfg.Owner, Until: time.Now().Add(cfg.Lease)}, true, false
}

// roomSignal wakes the Reserve calls waiting for room, one at a time and in
// the order they came, when a job ends or a reservation is released. It
// costs an atomic load while none waits.
type roomSignal struct {
	waiters atomic.Int64
	mu      sync.Mutex
	queue   []*roomWaiter // in turn; a woken waiter has left it
}

// roomWaiter is one Reserve call waiting for room.
type roomWaiter struct {
	wake   chan struct{} // buffered 1: room may have been freed
	queued bool          // in roomSignal.queue; guarded by its mu
}

// join puts a new waiter at the end of the queue.
func (s *roomSignal) join() *roomWaiter {
	w := &roomWaiter{wake: make(chan struct{}, 1), queued: true}
	s.waiters.Add(1)
	s.mu.Lock()
	s.queue = append(s.queue, w)
	s.mu.Unlock()
	return w
}

// requeue puts w, woken (and so out of the queue), first in the queue
// again before it tries: it keeps its turn.
func (s *roomSignal) requeue(w *roomWaiter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !w.queued {
		s.queue = slices.Insert(s.queue, 0, w)
		w.queued = true
	}
}

// leave removes w, done waiting. A wake-up it was given and did not use
// goes to the next in turn.
func (s *roomSignal) leave(w *roomWaiter) {
	s.waiters.Add(-1)
	s.mu.Lock()
	if w.queued {
		s.queue = slices.DeleteFunc(s.queue, func(x *roomWaiter) bool { return x == w })
		w.queued = false
	}
	s.mu.Unlock()
	select {
	case <-w.wake:
		s.freed()
	default:
	}
}

// freed wakes the first waiter in turn, if any.
func (s *roomSignal) freed() {
	if s.waiters.Load() == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return
	}
	w := s.queue[0]
	s.queue = slices.Delete(s.queue, 0, 1)
	w.queued = false
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Release gives back the room Reserve granted for n recipients that were
// not stored.
func (r *Relay) Release(n int) {
	r.reserved.Add(-int64(n))
	r.room.freed()
}

// Handoff starts delivering recipients stored under lease l, granted by
// Reserve for len(claimed) recipients (see [store.Message.Claimed]).
func (r *Relay) Handoff(l store.Lease, claimed []*store.Claimed) {
	r.reserved.Add(-int64(len(claimed)))
	// No job may start once Stop waits for the jobs: a Handoff either
	// started its jobs before Stop set stopped, or sees it set.
	r.handoff.RLock()
	defer r.handoff.RUnlock()
	rc := r.run.Load()
	if rc == nil || rc.ctx.Err() != nil || len(claimed) == 0 {
		return // stopping: Stop releases the leases
	}
	if r.stopped {
		return
	}
	r.metrics.handedOff.Add(float64(len(claimed)))
	r.dispatch(rc.ctx, rc.base, claimed, l.Until.Add(-r.conf().Lease/4))
	// Jobs still waiting for their destination hold no room.
	r.room.freed()
}

// cutShort reports whether claimed may hold only part of its last
// message's recipients: fewer of them than the message was stored with, or
// a message stored before that count was kept. (Under load every claim
// fills its limit; a claim of single-recipient messages need not cost a
// second write transaction.)
func cutShort(claimed []*store.Claimed) bool {
	last := claimed[len(claimed)-1]
	if last.Info.Recipients == 0 {
		return true
	}
	have := 0
	for _, c := range claimed {
		if c.MessageID == last.MessageID {
			have++
		}
	}
	return have < last.Info.Recipients
}

// claimRest appends to claimed the due recipients of its last message that
// go to the same destination (the same domain in MX mode; any domain in
// smarthost mode), up to maxMessageRecipients in all.
func (r *Relay) claimRest(ctx context.Context, claimed []*store.Claimed) []*store.Claimed {
	last := claimed[len(claimed)-1]
	o := store.ClaimOptions{Lease: r.conf().Lease, MessageID: last.MessageID}
	have := 0
	for _, c := range claimed {
		if c.MessageID == last.MessageID && (r.conf().Mode == ModeSmarthost || c.Domain == last.Domain) {
			have++
		}
	}
	if r.conf().Mode != ModeSmarthost {
		o.Domain = last.Domain
	}
	o.Limit = maxMessageRecipients - have
	if o.Limit <= 0 {
		return claimed
	}
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	more, err := r.st.ClaimDue(cctx, r.conf().Owner, o)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("claim the rest of a message", "msg_id", last.MessageID, "err", err)
		}
		return claimed
	}
	return append(claimed, more...)
}

// maintainLoop prunes finished messages at start and every minute, and
// events older than EventRetention at start and hourly, until ctx ends.
func (r *Relay) maintainLoop(ctx context.Context) {
	t := time.NewTicker(maintainInterval)
	defer t.Stop()
	var eventsPruned time.Time
	for {
		r.pruneMessages(ctx)
		r.applySubaccountStatus(ctx)
		if r.conf().EventRetention > 0 && (eventsPruned.IsZero() || time.Since(eventsPruned) >= pruneEventsInterval) {
			r.pruneEvents(ctx)
			eventsPruned = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pruneMessages deletes messages finished more than FinishedRetention ago,
// one chunk after another while chunks come back full, so a backlog (after
// an upgrade, or downtime) is worked off without one huge transaction.
func (r *Relay) pruneMessages(ctx context.Context) {
	before := time.Now().Add(-r.conf().FinishedRetention)
	var total int64
	for ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, storeTimeout)
		n, err := r.st.PruneMessages(pctx, before, r.pruneLimit)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("prune finished messages", "err", err)
			}
			break
		}
		total += n
		if n < int64(r.pruneLimit) {
			break
		}
	}
	if total > 0 {
		r.log.Debug("pruned finished messages", "count", total, "retention", r.conf().FinishedRetention.String())
	}
}

// applySubaccountStatus holds the queued mail of suspended subaccounts and
// drops that of terminated ones ([store.Store.ApplySubaccountStatus]):
// mail accepted by a session that authenticated just before the change.
func (r *Relay) applySubaccountStatus(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	n, err := r.st.ApplySubaccountStatus(sctx)
	switch {
	case err != nil && ctx.Err() == nil:
		r.log.Warn("apply subaccount status to queued mail", "err", err)
	case n > 0:
		r.log.Info("applied subaccount status to queued mail", "recipients", n)
	}
}

// pruneEvents deletes events and audit log entries older than
// EventRetention.
func (r *Relay) pruneEvents(ctx context.Context) {
	before := time.Now().Add(-r.conf().EventRetention)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	n, err := r.st.PruneEvents(pctx, before)
	cancel()
	switch {
	case err != nil && ctx.Err() == nil:
		r.log.Warn("prune events", "err", err)
	case n > 0:
		r.log.Info("pruned events", "count", n, "retention", r.conf().EventRetention.String())
	}
	pctx, cancel = context.WithTimeout(ctx, 5*time.Minute)
	n, err = r.st.PruneAudit(pctx, before)
	cancel()
	switch {
	case err != nil && ctx.Err() == nil:
		r.log.Warn("prune audit log", "err", err)
	case n > 0:
		r.log.Info("pruned audit log", "count", n, "retention", r.conf().EventRetention.String())
	}
}

// semaphores limits parallel deliveries per destination and tells the
// claim loop which destinations have all the work they can take.
type semaphores struct {
	n     int            // slots per destination
	own   map[string]int // slots of destinations that have their own number
	freed chan struct{}  // coalesced: a destination dropped below full
	mu    sync.Mutex
	m     map[string]*semaphore
}

// semaphore is one destination's slots and how many jobs hold or wait for
// it; it is saturated at full users (twice its slots).
type semaphore struct {
	ch    chan struct{}
	users int
	full  int
}

// newSemaphores gives every destination n slots, but those in own their
// own number.
func newSemaphores(n int, own map[string]int) *semaphores {
	return &semaphores{n: n, own: own, freed: make(chan struct{}, 1), m: make(map[string]*semaphore)}
}

// slots is how many jobs may deliver to key at once.
func (s *semaphores) slots(key string) int {
	if n, ok := s.own[key]; ok && n > 0 {
		return n
	}
	return s.n
}

// ticket is one job's place at a destination: the job counts as a user of
// it from join until leave, holding a slot or waiting for one.
type ticket struct {
	s    *semaphores
	key  string
	sem  *semaphore
	held bool // the job holds one of the destination's slots
	gone bool // leave was called
}

// join registers a job for key; the caller must call leave once.
func (s *semaphores) join(key string) *ticket {
	s.mu.Lock()
	defer s.mu.Unlock()
	sem := s.m[key]
	if sem == nil {
		n := s.slots(key)
		sem = &semaphore{ch: make(chan struct{}, n), full: 2 * n}
		s.m[key] = sem
	}
	sem.users++
	return &ticket{s: s, key: key, sem: sem}
}

// tryAcquire takes a slot if one is free at once.
func (t *ticket) tryAcquire() bool {
	select {
	case t.sem.ch <- struct{}{}:
		t.held = true
	default:
	}
	return t.held
}

// wait takes a slot, waiting until ctx ends.
func (t *ticket) wait(ctx context.Context) error {
	if t.held {
		return nil
	}
	select {
	case t.sem.ch <- struct{}{}:
		t.held = true
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// leave gives back the slot, if held, and the job's place; it signals
// freed when the destination stops being saturated.
func (t *ticket) leave() {
	if t.gone {
		return
	}
	t.gone = true
	if t.held {
		<-t.sem.ch
		t.held = false
	}
	s := t.s
	s.mu.Lock()
	t.sem.users--
	if t.sem.users == t.sem.full-1 {
		select {
		case s.freed <- struct{}{}:
		default:
		}
	}
	if t.sem.users == 0 {
		delete(s.m, t.key)
	}
	s.mu.Unlock()
}

// acquire takes a slot for key, waiting until ctx ends. The returned release
// must be called once when acquire succeeded.
func (s *semaphores) acquire(ctx context.Context, key string) (func(), error) {
	t := s.join(key)
	if err := t.wait(ctx); err != nil {
		t.leave()
		return nil, err
	}
	return t.leave, nil
}

// saturated returns, sorted, the destinations with at least full jobs
// holding or waiting for a slot.
func (s *semaphores) saturated() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k, sem := range s.m {
		if sem.users >= sem.full {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}
