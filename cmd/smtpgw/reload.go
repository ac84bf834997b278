package main

import (
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"strings"
	"syscall"

	"github.com/smtpgw/smtpgw/config"
	"github.com/smtpgw/smtpgw/relay"
	"github.com/smtpgw/smtpgw/smtpd"
)

// liveKeys are the settings a reload (SIGHUP) applies to a running
// gateway; a change to any other key is logged as needing a restart.
var liveKeys = []string{
	"log_level",
	"http.tls_cert", "http.tls_key",
	"smtp.tls_cert", "smtp.tls_key", "smtp.key_rate_limit", "smtp.key_rate_burst", "smtp.max_connections",
	"relay.mode", "relay.smarthost", "relay.smarthost_tls", "relay.smarthost_username", "relay.smarthost_password",
	"relay.smarthost_insecure_skip_verify", "relay.retry_initial", "relay.retry_max", "relay.max_queue_lifetime",
	"relay.finished_retention", "relay.connect_timeout", "relay.command_timeout", "relay.disable_chunking",
	"relay.in_flow_delay",
	"events.retention",
}

// reloader re-reads the configuration on SIGHUP and applies what can
// change live.
type reloader struct {
	path     string
	e        env
	log      *slog.Logger
	level    *slog.LevelVar
	levelSet bool // --log-level was given: it wins over log_level
	cur      *config.Config
	srv      *smtpd.Server
	rl       *relay.Relay
	httpCert *smtpd.CertHolder // nil: the HTTP listener has no TLS
}

// notifyHUP returns a channel receiving SIGHUP, and its stop function.
func notifyHUP() (<-chan os.Signal, func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	return ch, func() { signal.Stop(ch) }
}

// reload loads the configuration file again and applies it. A
// configuration that does not load or validate, or whose certificate does
// not load, is refused with one ERROR line and the running one is kept.
func (r *reloader) reload() {
	next, err := loadConfig(r.path, r.e)
	if err != nil {
		r.log.Error("reload refused, still running the previous configuration", "err", oneLine(err.Error()))
		return
	}
	// The smtpd certificate loads first: it is what can fail. The relay's
	// settings were validated by config with the same rules.
	if r.httpCert != nil && (next.HTTP.TLS || next.HTTP.TLSCert != "") {
		// Checked before anything is applied: a bad pair refuses the
		// whole reload.
		if _, err := smtpd.LoadOrCreateCert(next.HTTP.TLSCert, next.HTTP.TLSKey, next.DataDir, r.cur.Hostname, r.log); err != nil {
			r.log.Error("reload refused, still running the previous configuration", "err", oneLine("http TLS: "+err.Error()))
			return
		}
	}
	if err := r.srv.Reload(smtpdConfig(next, r.log)); err != nil {
		r.log.Error("reload refused, still running the previous configuration", "err", oneLine(err.Error()))
		return
	}
	if r.httpCert != nil && (next.HTTP.TLS || next.HTTP.TLSCert != "") {
		if err := r.httpCert.Load(next.HTTP.TLSCert, next.HTTP.TLSKey, next.DataDir, r.cur.Hostname); err != nil {
			r.log.Error("reload: http TLS certificate not reloaded", "err", oneLine(err.Error()))
		}
	}
	if err := r.rl.Reload(relayConfig(next, r.log)); err != nil {
		// Unreachable after config validation; the certificate is applied.
		r.log.Error("reload: relay settings refused, the relay keeps its previous ones", "err", oneLine(err.Error()))
	}
	if !r.levelSet {
		r.level.Set(levelOf(next.LogLevel))
	}
	restart := restartNeeded(r.cur, next)
	r.cur = next
	attrs := []any{"relay_mode", next.Relay.Mode}
	if len(restart) > 0 {
		attrs = append(attrs, "needs_restart", strings.Join(restart, ","))
		r.log.Warn("configuration reloaded; these changed settings apply only after a restart", attrs...)
		return
	}
	r.log.Info("configuration reloaded", attrs...)
}

// levelOf parses a validated log level.
func levelOf(s string) slog.Level {
	var l slog.Level
	_ = l.UnmarshalText([]byte(s))
	return l
}

// oneLine folds err text onto one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// restartNeeded lists the keys that differ between old and next and that
// a reload does not apply.
func restartNeeded(old, next *config.Config) []string {
	var out []string
	var walk func(prefix string, a, b reflect.Value)
	walk = func(prefix string, a, b reflect.Value) {
		t := a.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			key := prefix + tag
			if f.Type.Kind() == reflect.Struct && !f.Anonymous && f.Type != reflect.TypeOf(config.Duration{}) {
				walk(key+".", a.Field(i), b.Field(i))
				continue
			}
			if !slices.Contains(liveKeys, key) && !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
				out = append(out, key)
			}
		}
	}
	walk("", reflect.ValueOf(*old), reflect.ValueOf(*next))
	return out
}
