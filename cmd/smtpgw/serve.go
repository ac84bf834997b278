package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/audit"
	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/config"
	"github.com/smtpgw/smtpgw/console"
	"github.com/smtpgw/smtpgw/limits"
	"github.com/smtpgw/smtpgw/relay"
	"github.com/smtpgw/smtpgw/smtpd"
	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/suppression"
	"github.com/smtpgw/smtpgw/webhooks"
)

const serveUsage = `usage: smtpgw serve [--config FILE] [--log-level debug|info|warn|error] [--log-format text|json] [--cpuprofile FILE]`

// cmdServe runs the gateway until ctx is cancelled (SIGINT/SIGTERM), then
// shuts down in two phases (mox lifecycle): SMTP stops taking new mail and
// drains sessions up to smtp.shutdown_grace, relay workers finish their
// attempts, the HTTP listener closes, and the store closes last.
func cmdServe(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("serve")
	level := fs.String("log-level", "", "log level: debug, info, warn or error (default: log_level of the configuration, info)")
	format := fs.String("log-format", "text", "log format: text or json")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile (go tool pprof) of the whole run to `FILE`, for benchmarks")
	pos, err := parse(fs, serveUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("serve: unexpected argument %q\n%s", pos[0], serveUsage)
	}
	tuneGC()
	if *cpuprofile != "" {
		stop, err := startCPUProfile(*cpuprofile)
		if err != nil {
			return fmt.Errorf("serve: --cpuprofile: %w", err)
		}
		defer stop()
	}
	// SIGHUP reloads; from now on it no longer kills the process.
	hup, stopHUP := notifyHUP()
	defer stopHUP()
	cfg, err := loadConfig(*cfgPath, e)
	if err != nil {
		return err
	}
	levelSet := *level != ""
	if !levelSet {
		*level = cfg.LogLevel
	}
	levelVar := new(slog.LevelVar)
	log, err := newLogger(*level, *format, levelVar, e)
	if err != nil {
		return err
	}
	if cfg.Database.URL == "" {
		unlock, err := lockDataDir(cfg.DataDir)
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		defer unlock()
	}
	st, err := openConfigured(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	log.Debug("configuration", "config", cfg.Redacted())
	if cfg.Database.URL == "" {
		log.Info("store: SQLite", "path", cfg.DataDir+"/smtpgw.db")
	} else {
		log.Info("store: PostgreSQL")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newStoreCollector(st))

	// One failed-authentication budget per client address for SMTP AUTH,
	// the HTTP API, the console and /metrics: the Verifier's.
	verifier := auth.NewVerifier(st, verifierConfig(cfg, log))
	defer verifier.Close()

	// One checker of sending limits for SMTP and the API, so a limit
	// changed through the API applies to this node's next message.
	quota := limits.New(st, limits.Config{CacheTTL: cfg.Auth.CacheTTL.Duration, Logger: log.With("component", "limits")})
	defer quota.Close()
	// One suppression list cache for SMTP and the API, so an entry
	// changed through the API applies to this node's next RCPT.
	supp := suppression.NewChecker(st, cfg.Auth.CacheTTL.Duration)
	rl, err := relay.New(relayConfig(cfg, log), st, reg)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	sc := smtpdConfig(cfg, log)
	sc.Limits = quota
	sc.Suppressions = supp
	sc.Handoff = rl // messages received here go to this node's relay at once
	srv, err := smtpd.New(sc, st, verifier, reg)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}

	var shuttingDown atomic.Bool
	var httpSrv *http.Server
	var httpCert *smtpd.CertHolder // nil: plain HTTP
	if cfg.HTTP.Addr != "" {
		l, err := net.Listen("tcp", cfg.HTTP.Addr)
		if err != nil {
			return fmt.Errorf("serve: http.addr %s: %w (choose a free address, or \"\" to disable)", cfg.HTTP.Addr, err)
		}
		scheme := "http"
		if cfg.HTTP.TLS || cfg.HTTP.TLSCert != "" {
			// Reloaded like the SMTP certificate: when its files change,
			// and on SIGHUP.
			httpCert, err = smtpd.NewCertHolder(cfg.HTTP.TLSCert, cfg.HTTP.TLSKey, cfg.DataDir, cfg.Hostname, log)
			if err != nil {
				_ = l.Close()
				return fmt.Errorf("serve: http TLS: %w", err)
			}
			stopWatch := make(chan struct{})
			defer close(stopWatch)
			go httpCert.Watch(smtpd.DefaultCertCheckInterval, stopWatch)
			l = tls.NewListener(l, &tls.Config{GetCertificate: httpCert.GetCertificate, MinVersion: tls.VersionTLS12})
			scheme = "https"
		}
		apiH := apiHandler(cfg, st, verifier, quota, supp, log)
		consoleH, err := consoleHandler(cfg, st, verifier, apiH, log)
		if err != nil {
			_ = l.Close()
			return fmt.Errorf("serve: %w", err)
		}
		httpSrv = &http.Server{
			Handler:           adminHandler(st, verifier, reg, &shuttingDown, l.Addr(), log, apiH, consoleH),
			ReadHeaderTimeout: 10 * time.Second,
			// API request bodies are small (api caps them at 1 MiB): a
			// client slower than this is holding a connection open.
			ReadTimeout: 30 * time.Second,
			IdleTimeout: 2 * time.Minute,
		}
		go func() {
			if err := httpSrv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http listener stopped", "err", err)
			}
		}()
		log.Info("http listening", "addr", l.Addr().String(), "scheme", scheme, "paths", "/ (console) /metrics /healthz /readyz /api/v1/")
	}

	if err := srv.Start(); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	if err := rl.Start(ctx); err != nil {
		_ = srv.Shutdown(context.Background())
		return fmt.Errorf("serve: start relay: %w", err)
	}
	if cfg.Webhooks.AllowPrivateTargets {
		log.Warn("webhooks.allow_private_targets is on: webhooks may reach loopback, private and metadata addresses")
	}
	hooks := webhooks.NewService(webhooksConfig(cfg, log), st)
	if err := hooks.Start(ctx); err != nil {
		_ = srv.Shutdown(context.Background())
		rl.Stop()
		return fmt.Errorf("serve: start webhooks: %w", err)
	}
	attrs := []any{"relay_mode", cfg.Relay.Mode, "pid", os.Getpid()}
	if a := srv.SubmissionAddr(); a != nil {
		attrs = append(attrs, "submission", a.String())
	}
	if a := srv.SubmissionsAddr(); a != nil {
		attrs = append(attrs, "submissions", a.String())
	}
	log.Info("smtpgw ready", attrs...)

	rel := &reloader{path: *cfgPath, e: e, log: log, level: levelVar, levelSet: levelSet, cur: cfg, srv: srv, rl: rl, httpCert: httpCert}
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-hup:
			log.Info("SIGHUP: reloading the configuration and certificates")
			rel.reload()
		}
	}
	shuttingDown.Store(true)
	log.Info("shutting down", "grace", cfg.SMTP.ShutdownGrace.Duration.String())
	grace, cancel := context.WithTimeout(context.Background(), cfg.SMTP.ShutdownGrace.Duration)
	defer cancel()
	if err := srv.Shutdown(grace); err != nil {
		log.Warn("smtp shutdown", "err", err)
	}
	rl.Stop()
	hooks.Stop()
	if httpSrv != nil {
		if err := httpSrv.Shutdown(grace); err != nil {
			log.Warn("http shutdown", "err", err)
		}
	}
	log.Info("stopped")
	return nil
}

// newLogger builds the process logger on stderr.
// Its level is lv (set to level here; a reload may change it).
func newLogger(level, format string, lv *slog.LevelVar, e env) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("serve: --log-level must be debug, info, warn or error, not %q", level)
	}
	lv.Set(l)
	// Neither handler escapes everything a terminal acts on (JSON leaves
	// DEL, C1 and bidi controls; text leaves DEL): see term.go.
	opts := &slog.HandlerOptions{Level: lv, ReplaceAttr: escapeLogAttr}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(e.stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(e.stderr, opts)), nil
	default:
		return nil, usagef("serve: --log-format must be text or json, not %q", format)
	}
}

// smtpdConfig copies the [smtp] section into smtpd's own Config.
func smtpdConfig(cfg *config.Config, log *slog.Logger) smtpd.Config {
	c := cfg.SMTP
	return smtpd.Config{
		Hostname:            cfg.Hostname,
		SubmissionAddr:      c.SubmissionAddr,
		SubmissionsAddr:     c.SubmissionsAddr,
		TLSCert:             c.TLSCert,
		TLSKey:              c.TLSKey,
		DataDir:             cfg.DataDir,
		AllowInsecureAuth:   c.AllowInsecureAuth,
		AuthUsernames:       c.AuthUsernames,
		MaxMessageBytes:     c.MaxMessageBytes,
		MaxRecipients:       c.MaxRecipients,
		IdleTimeout:         c.IdleTimeout.Duration,
		ProxyProtocolFrom:   c.ProxyProtocolPrefixes,
		MaxConnections:      c.MaxConnections,
		KeyRateLimit:        float64(c.KeyRateLimit),
		KeyRateBurst:        c.KeyRateBurst,
		MaxConnectionsPerIP: c.MaxConnectionsPerIP,
		MaxJunkCommands:     c.MaxJunkCommands,
		AuthTimeout:         c.AuthTimeout.Duration,
		DataTimeout:         c.DataTimeout.Duration,
		MaxInflightBytes:    c.MaxInflightBytes,
		BareLineEndings:     c.BareLineEndings,
		MaxReceivedHeaders:  c.MaxReceivedHeaders,
		MaxHeaderBytes:      c.MaxHeaderBytes,
		// A [relay] key: it is about what may be relayed.
		RequireVerifiedDomains: cfg.Relay.RequireVerifiedDomains,
		Logger:                 log.With("component", "smtpd"),
	}
}

// verifierConfig copies [auth] and the failed-authentication budget
// (smtp.max_auth_failures, shared by SMTP AUTH, the API and /metrics) into
// auth's Config.
func verifierConfig(cfg *config.Config, log *slog.Logger) auth.Config {
	return auth.Config{
		CacheTTL:      cfg.Auth.CacheTTL.Duration,
		MaxFailures:   authFailureLimit(cfg.SMTP.MaxAuthFailures),
		FailureWindow: cfg.SMTP.AuthFailureWindow.Duration,
		Logger:        log.With("component", "auth"),
	}
}

// authFailureLimit maps smtp.max_auth_failures, where 0 means no limit, to
// auth.Config.MaxFailures, where 0 means the default and a
// negative value no limit.
func authFailureLimit(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// relayConfig copies the [relay] and [events] sections into relay's Config.
func relayConfig(cfg *config.Config, log *slog.Logger) relay.Config {
	r := cfg.Relay
	return relay.Config{
		Hostname:                    cfg.Hostname,
		Mode:                        r.Mode,
		Smarthost:                   r.Smarthost,
		SmarthostTLS:                r.SmarthostTLS,
		SmarthostUsername:           r.SmarthostUsername,
		SmarthostPassword:           r.SmarthostPassword,
		SmarthostInsecureSkipVerify: r.SmarthostInsecureSkipVerify,
		Workers:                     r.Workers,
		PerDomainConcurrency:        r.PerDomainConcurrency,
		InFlowDelay:                 r.InFlowDelay.Duration,
		SmarthostConcurrency:        r.SmarthostConcurrency,
		RetryInitial:                r.RetryInitial.Duration,
		RetryMax:                    r.RetryMax.Duration,
		MaxQueueLifetime:            r.MaxQueueLifetime.Duration,
		FinishedRetention:           r.FinishedRetention.Duration,
		Lease:                       r.Lease.Duration,
		ConnectTimeout:              r.ConnectTimeout.Duration,
		CommandTimeout:              r.CommandTimeout.Duration,
		DisableChunking:             r.DisableChunking,
		DNSResolver:                 r.DNSResolver,
		MXPort:                      r.MXPort,
		EventRetention:              cfg.Events.Retention.Duration,
		// On SQLite this process holds data_dir's serve lock (lockDataDir):
		// any lease in the store belongs to a predecessor that is gone.
		ReleaseAllLeasesOnStart: cfg.Database.URL == "",
		Logger:                  log.With("component", "relay"),
	}
}

// apiHandler builds the JSON APIs (package api). Its Manager holds the
// Verifier, so a key deleted or changed through the API is refused at once
// on this node. Failed API authentications are throttled like SMTP AUTH.
//
// The API works on the store wrapped by audit.Wrap, so the changes it makes
// are in the audit log.
func apiHandler(cfg *config.Config, st store.Store, v *auth.Verifier, quota *limits.Checker, supp *suppression.Checker, log *slog.Logger) *api.Handler {
	st = audit.Wrap(st, log.With("component", "audit"))
	return api.New(api.Config{
		DKIMSelector: cfg.Relay.DKIMSelector,
		Logger:       log.With("component", "api"),
		Limits:       quota,
		Webhooks:     webhooks.NewManager(webhooksConfig(cfg, log), st),
		Suppressions: supp,
		DNSResolver:  cfg.Relay.DNSResolver,
	}, st, v, auth.NewManager(st, v))
}

// webhooksConfig copies the [webhooks] section into webhooks' Config.
func webhooksConfig(cfg *config.Config, log *slog.Logger) webhooks.Config {
	w := cfg.Webhooks
	return webhooks.Config{
		AllowPrivateTargets: w.AllowPrivateTargets,
		RetryInitial:        w.RetryInitial.Duration,
		RetryMax:            w.RetryMax.Duration,
		MaxAge:              w.MaxAge.Duration,
		Timeout:             w.Timeout.Duration,
		BatchSize:           w.BatchSize,
		BatchInterval:       w.BatchInterval.Duration,
		Workers:             w.Workers,
		Node:                cfg.Hostname,
		Logger:              log.With("component", "webhooks"),
	}
}

// consoleHandler builds the web console (package console) over the same
// operations as the API: the audited store, a Manager holding the
// Verifier, and the API's key check (allowed IPs, failure throttle) for
// sign-in.
func consoleHandler(cfg *config.Config, st store.Store, v *auth.Verifier, apiH *api.Handler, log *slog.Logger) (http.Handler, error) {
	st = audit.Wrap(st, log.With("component", "audit"))
	return console.New(console.Config{
		IdleTimeout:  cfg.HTTP.ConsoleIdleTimeout.Duration,
		DKIMSelector: cfg.Relay.DKIMSelector,
		Logger:       log.With("component", "console"),
	}, st, v, auth.NewManager(st, v), apiH)
}

// adminHandler serves /metrics, /healthz, /readyz, under /api/ the JSON
// APIs (apiH) and at every other path the web console (consoleH, if not
// nil). /metrics is open when the listener is on a loopback or
// private address; on a public address it needs an API key with
// metrics/view in the Authorization header (SPEC §3).
func adminHandler(st store.Store, v *auth.Verifier, reg *prometheus.Registry, down *atomic.Bool, addr net.Addr, log *slog.Logger, apiH, consoleH http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/api/", apiH)
	if consoleH != nil {
		mux.Handle("/", consoleH)
	}
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	open := isPrivateListener(addr)
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if !open && !metricsAllowed(w, r, v, log) {
			return
		}
		metrics.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := st.Ping(ctx); err != nil {
			log.Warn("readyz: store not answering or not accepting writes", "err", err)
			http.Error(w, "store unavailable or not accepting writes", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// metricsAllowed checks the key of a /metrics request on a public listener
// (metrics/view, master account) and answers the refusals: 429 with
// Retry-After once the client address used up its failed-authentication
// budget (the Verifier's, shared with SMTP AUTH and the API), 401 for a
// missing or refused key, 503 when the key store does not answer.
func metricsAllowed(w http.ResponseWriter, r *http.Request, v *auth.Verifier, log *slog.Logger) bool {
	const unauthorized = `{"errors":[{"message":"Unauthorized."}]}`
	client, _ := netip.ParseAddrPort(r.RemoteAddr)
	ip := client.Addr().Unmap()
	if d, blocked := v.Blocked(ip); blocked {
		return metricsThrottled(w, r, d, log)
	}
	key := api.RequestKey(r)
	if key == "" {
		http.Error(w, unauthorized, http.StatusUnauthorized)
		return false
	}
	id, err := v.VerifyGrant(r.Context(), key, ip, auth.GrantMetricsView)
	var (
		refused *auth.Error
		thr     *auth.ThrottledError
	)
	switch {
	case errors.As(err, &thr):
		return metricsThrottled(w, r, thr.RetryAfter, log)
	case errors.As(err, &refused):
		log.Info("metrics: refused", "remote", r.RemoteAddr, "reason", err)
		http.Error(w, unauthorized, http.StatusUnauthorized)
		return false
	case err != nil:
		log.Warn("metrics: key store unavailable", "remote", r.RemoteAddr, "err", err)
		w.Header().Set("Retry-After", "5")
		http.Error(w, `{"errors":[{"message":"Service unavailable."}]}`, http.StatusServiceUnavailable)
		return false
	case id.Subaccount != 0:
		// Metrics cover every account: a subaccount's key may not read them.
		log.Info("metrics: refused", "remote", r.RemoteAddr,
			"reason", fmt.Sprintf("key %s belongs to subaccount %d", id.KeyID, id.Subaccount))
		http.Error(w, unauthorized, http.StatusUnauthorized)
		return false
	}
	return true
}

// metricsThrottled answers 429 to a client address that failed too often.
func metricsThrottled(w http.ResponseWriter, r *http.Request, retryAfter time.Duration, log *slog.Logger) bool {
	log.Info("metrics: refused: too many failed authentications from this address", "remote", r.RemoteAddr)
	w.Header().Set("Retry-After", api.RetryAfterSeconds(retryAfter))
	http.Error(w, `{"errors":[{"message":"Too many failed authentications","description":"too many requests with a wrong API key came from this address: try again later"}]}`,
		http.StatusTooManyRequests)
	return false
}

// isPrivateListener reports whether addr is loopback or private.
func isPrivateListener(addr net.Addr) bool {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return false
	}
	a := ap.Addr().Unmap()
	return a.IsLoopback() || a.IsPrivate()
}

// serveGCPercent is the garbage collector's target (GOGC) for serve when
// the environment sets none. The heap is mostly short-lived message
// buffers (a session's spool, the encoding of a batch), so Go's default of
// 100 collects often while little of it survives: at 200 the gateway spent
// 10-17 % less CPU per message on PostgreSQL under smtpgw bench (pgx
// builds each batch in freshly grown buffers), no measurable difference on
// SQLite, for 8-13 MB more resident memory (docs/benchmarks.md). GOGC in
// the environment wins, as for any Go program.
const serveGCPercent = 200

// tuneGC sets serveGCPercent unless GOGC is set.
func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(serveGCPercent)
	}
}

// startCPUProfile profiles the process into path until the returned stop
// is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}
