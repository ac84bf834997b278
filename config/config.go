// Package config turns a TOML file plus SMTPGW_* environment variables into
// a validated Config (SPEC.md §8).
//
// Load works in four steps:
//
//  1. start from Default(), so a missing key keeps its default;
//  2. decode the TOML file over it (path "" means ./smtpgw.toml if present,
//     else no file), refusing keys the Config does not know;
//  3. apply SMTPGW_<SECTION>_<KEY> environment variables, which win over the
//     file; their names are derived from the toml struct tags, so a new key
//     gets its variable for free;
//  4. Validate, which names the key and the fix for every problem.
//
// The package imports nothing of smtpgw's own: cmd/smtpgw copies the values
// into each package's own Config.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultPath is the file Load reads when it is given no path and the file
// exists in the working directory.
const DefaultPath = "smtpgw.toml"

// EnvPrefix starts every environment variable Load reads.
const EnvPrefix = "SMTPGW_"

// envTestPrefix starts environment variables reserved for tests, which Load
// ignores instead of reporting them as unknown.
const envTestPrefix = "SMTPGW_TEST_"

// KeyEnv holds an API key for client commands (smtpgw bench), so that the
// key is not on a command line where ps shows it. Load ignores it: a shell
// that exports it may also start the gateway.
const KeyEnv = "SMTPGW_KEY"

// docsHint ends an unknown-key error: where the keys are listed.
const docsHint = "see docs/configuration.md for the keys"

// Relay modes (relay.mode).
const (
	// ModeMX delivers to the recipient domain's MX hosts.
	ModeMX = "mx"
	// ModeSmarthost hands every message to relay.smarthost.
	ModeSmarthost = "smarthost"
	// ModeHold delivers nothing: mail is accepted and stays queued until
	// the mode is changed (reload or restart). The default, so a gateway
	// never sends to the internet before it is told to.
	ModeHold = "hold"
)

// Smarthost TLS modes (relay.smarthost_tls).
const (
	// SmarthostSTARTTLS connects in plain text and requires STARTTLS.
	SmarthostSTARTTLS = "starttls"
	// SmarthostImplicit speaks TLS from the first byte (port 465 style).
	SmarthostImplicit = "implicit"
	// SmarthostNone never uses TLS: for test targets and trusted networks.
	SmarthostNone = "none"
)

// redacted replaces secrets in Redacted's dump.
const redacted = "REDACTED"

// maxInFlowDelay is the longest relay.in_flow_delay: a client waits that
// long for the reply to its message.
const maxInFlowDelay = 10 * time.Second

// Duration is a time.Duration written as text in TOML and the environment,
// such as "60s", "5m" or "72h".
type Duration struct{ time.Duration }

// UnmarshalText parses text with time.ParseDuration. The error names the
// fix; Load prefixes it with the key.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write it like \"60s\" or \"5m\")", text)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration the way UnmarshalText reads it.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.Duration.String()), nil
}

// Config is the whole gateway configuration. The toml tags are the key names
// of SPEC.md §8; environment variable names are derived from them.
type Config struct {
	// Hostname is the name in the SMTP banner and EHLO reply; default
	// os.Hostname(), or "localhost" if that fails.
	Hostname string `toml:"hostname"`
	// DataDir holds the SQLite file, the generated TLS certificate and DKIM
	// keys; default "./data".
	DataDir string `toml:"data_dir"`
	// LogLevel is the level of serve's log: "debug", "info" (default),
	// "warn" or "error"; serve --log-level overrides it. A reload
	// (SIGHUP) applies a change.
	LogLevel string `toml:"log_level"`
	// Database selects the store.
	Database Database `toml:"database"`
	// SMTP configures the submission listeners.
	SMTP SMTP `toml:"smtp"`
	// Auth configures API key verification.
	Auth Auth `toml:"auth"`
	// Relay configures onward delivery.
	Relay Relay `toml:"relay"`
	// Events configures the event log.
	Events Events `toml:"events"`
	// Webhooks configures event webhook delivery.
	Webhooks Webhooks `toml:"webhooks"`
	// HTTP configures the admin listener (metrics, health, JSON APIs).
	HTTP HTTP `toml:"http"`
}

// Database is the [database] section.
type Database struct {
	// URL is "" for SQLite in DataDir, or a postgres:// (postgresql://) URL
	// for PostgreSQL.
	URL string `toml:"url"`
}

// SMTP is the [smtp] section.
type SMTP struct {
	// SubmissionAddr is the STARTTLS submission listener; "" disables it.
	SubmissionAddr string `toml:"submission_addr"`
	// SubmissionsAddr is the implicit-TLS listener, e.g. ":465"; "" (the
	// default) disables it.
	SubmissionsAddr string `toml:"submissions_addr"`
	// TLSCert is the PEM certificate path; "" means a self-signed
	// certificate generated in DataDir.
	TLSCert string `toml:"tls_cert"`
	// TLSKey is the PEM private key path for TLSCert.
	TLSKey string `toml:"tls_key"`
	// AllowInsecureAuth permits AUTH without TLS: development only.
	AllowInsecureAuth bool `toml:"allow_insecure_auth"`
	// AuthUsernames are the accepted AUTH usernames; "*" accepts any.
	AuthUsernames []string `toml:"auth_usernames"`
	// MaxMessageBytes is the SIZE limit advertised and enforced.
	MaxMessageBytes int64 `toml:"max_message_bytes"`
	// MaxRecipients is the most RCPT TO commands per message.
	MaxRecipients int `toml:"max_recipients"`
	// IdleTimeout closes a connection that sends nothing for this long.
	IdleTimeout Duration `toml:"idle_timeout"`
	// MaxAuthFailures is how many failed key checks a client IP may make
	// per AuthFailureWindow, over SMTP AUTH, the HTTP API and /metrics
	// together, before it gets 421 (SMTP) or 429 (HTTP); 0 means no limit.
	MaxAuthFailures int `toml:"max_auth_failures"`
	// AuthFailureWindow is the window MaxAuthFailures counts over.
	AuthFailureWindow Duration `toml:"auth_failure_window"`
	// ProxyProtocolFrom lists the addresses or CIDR prefixes of trusted
	// load balancers that may send a PROXY protocol header.
	ProxyProtocolFrom []string `toml:"proxy_protocol_from"`
	// ProxyProtocolPrefixes is ProxyProtocolFrom parsed by Validate; a bare
	// address becomes a /32 or /128.
	ProxyProtocolPrefixes []netip.Prefix `toml:"-"`
	// ShutdownGrace is how long serve waits for sessions to finish on
	// shutdown before closing them.
	ShutdownGrace Duration `toml:"shutdown_grace"`
	// MaxConnections is the most concurrent SMTP connections per node.
	MaxConnections int `toml:"max_connections"`
	// KeyRateLimit is the most messages per second one API key may inject on
	// this node (MAIL beyond it gets 451 4.7.1); 0 means no limit.
	KeyRateLimit int `toml:"key_rate_limit"`
	// KeyRateBurst is how many messages a key may send at once before
	// KeyRateLimit applies; 0 means the same as KeyRateLimit.
	KeyRateBurst int `toml:"key_rate_burst"`
	// MaxConnectionsPerIP is the most concurrent SMTP connections from one
	// client address (IPv6: one /64) on this node.
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`
	// MaxJunkCommands is how many commands that make no progress (NOOP,
	// RSET, VRFY, HELP, unknown or refused commands) a session may send
	// before it gets 421.
	MaxJunkCommands int `toml:"max_junk_commands"`
	// AuthTimeout is how long a connection may take from connecting to a
	// successful AUTH.
	AuthTimeout Duration `toml:"auth_timeout"`
	// DataTimeout is how long one DATA or BDAT transfer may take in all.
	DataTimeout Duration `toml:"data_timeout"`
	// MaxInflightBytes is the budget of message bytes being received and
	// stored at once on this node; beyond it MAIL or DATA gets 452 4.3.1.
	// A value below MaxMessageBytes counts as MaxMessageBytes.
	MaxInflightBytes int64 `toml:"max_inflight_bytes"`
	// BareLineEndings is BareNormalize or BareReject: what happens to a
	// bare CR or LF in a message.
	BareLineEndings string `toml:"bare_line_endings"`
	// MaxReceivedHeaders is the most Received: fields a message may carry
	// (a mail loop otherwise).
	MaxReceivedHeaders int `toml:"max_received_headers"`
	// MaxHeaderBytes is the largest header block a message may have.
	MaxHeaderBytes int64 `toml:"max_header_bytes"`
}

// smtp.bare_line_endings values.
const (
	// BareNormalize turns every bare CR or LF into CRLF.
	BareNormalize = "normalize"
	// BareReject refuses a message with a bare CR or LF (550 5.6.0).
	BareReject = "reject"
)

// Auth is the [auth] section.
type Auth struct {
	// CacheTTL is how long a verified key lookup is trusted before the store
	// is asked again (and so how long a revocation may take to bite).
	CacheTTL Duration `toml:"cache_ttl"`
}

// Relay is the [relay] section.
type Relay struct {
	// Mode is ModeHold (the default), ModeMX or ModeSmarthost.
	Mode string `toml:"mode"`
	// Smarthost is the "host:port" every message goes to in smarthost mode.
	Smarthost string `toml:"smarthost"`
	// SmarthostTLS is SmarthostSTARTTLS, SmarthostImplicit or SmarthostNone.
	SmarthostTLS string `toml:"smarthost_tls"`
	// SmarthostUsername is the AUTH username at the smarthost; "" means no
	// AUTH.
	SmarthostUsername string `toml:"smarthost_username"`
	// SmarthostPassword is the AUTH password at the smarthost. Redacted
	// hides it.
	SmarthostPassword string `toml:"smarthost_password"`
	// SmarthostInsecureSkipVerify accepts any smarthost certificate: for
	// test targets with self-signed certificates.
	SmarthostInsecureSkipVerify bool `toml:"smarthost_insecure_skip_verify"`
	// Workers is the number of delivery workers per node.
	Workers int `toml:"workers"`
	// InFlowDelay is how long a received message waits for the relay to
	// have room before it is stored, when the relay is full: sessions then
	// slow to the pace the relay delivers at (Postfix's in_flow_delay).
	// "0s" does not wait.
	InFlowDelay Duration `toml:"in_flow_delay"`
	// PerDomainConcurrency caps concurrent deliveries to one domain.
	PerDomainConcurrency int `toml:"per_domain_concurrency"`
	// SmarthostConcurrency caps concurrent deliveries to the smarthost in
	// smarthost mode; 0 means Workers (every worker may use it).
	SmarthostConcurrency int `toml:"smarthost_concurrency"`
	// RetryInitial is the delay before the first retry; it doubles up to
	// RetryMax.
	RetryInitial Duration `toml:"retry_initial"`
	// RetryMax is the longest delay between retries.
	RetryMax Duration `toml:"retry_max"`
	// MaxQueueLifetime is how long a message is retried before it bounces.
	MaxQueueLifetime Duration `toml:"max_queue_lifetime"`
	// FinishedRetention is how long a finished message (every recipient
	// delivered, bounced or expired) stays visible in queue show before its
	// body and recipients are deleted; its events are kept for
	// events.retention.
	FinishedRetention Duration `toml:"finished_retention"`
	// DNSResolver is the "host:port" of the DNS server asked for MX, A and
	// AAAA records; "" uses the system resolver.
	DNSResolver string `toml:"dns_resolver"`
	// MXPort is the port MX hosts are dialled on: 25, except in tests.
	MXPort int `toml:"mx_port"`
	// DKIMSelector is the DKIM selector messages are signed with.
	DKIMSelector string `toml:"dkim_selector"`
	// RequireVerifiedDomains refuses at DATA (550 5.7.1) a message whose
	// From: domain is not a sending domain with a verified DKIM record
	// (POST /api/v1/sending-domains/{d}/verify).
	RequireVerifiedDomains bool `toml:"require_verified_domains"`
	// Lease is how long a claimed batch is owned before another node may
	// take it over.
	Lease Duration `toml:"lease"`
	// ConnectTimeout bounds dialling an upstream server.
	ConnectTimeout Duration `toml:"connect_timeout"`
	// CommandTimeout bounds each SMTP command to an upstream server.
	CommandTimeout Duration `toml:"command_timeout"`
	// DisableChunking sends every message with DATA, even to servers that
	// offer CHUNKING (BDAT): for a next hop whose CHUNKING is broken.
	DisableChunking bool `toml:"disable_chunking"`
}

// Webhooks is the [webhooks] section (package webhooks).
type Webhooks struct {
	// AllowPrivateTargets lets webhooks POST to loopback, private,
	// link-local and metadata addresses; false refuses them at connect
	// time (a webhook is a request made on a tenant's behalf).
	AllowPrivateTargets bool `toml:"allow_private_targets"`
	// RetryInitial is the delay before the first retry of a failed batch;
	// it doubles per attempt up to RetryMax.
	RetryInitial Duration `toml:"retry_initial"`
	// RetryMax caps the delay between retries.
	RetryMax Duration `toml:"retry_max"`
	// MaxAge is how long a batch is retried before it is given up.
	MaxAge Duration `toml:"max_age"`
	// Timeout bounds one POST (connect, send, answer).
	Timeout Duration `toml:"timeout"`
	// BatchSize is the most events one batch carries.
	BatchSize int `toml:"batch_size"`
	// BatchInterval is how often new events are gathered into batches.
	BatchInterval Duration `toml:"batch_interval"`
	// Workers is how many batches one node POSTs at once.
	Workers int `toml:"workers"`
}

// Events is the [events] section.
type Events struct {
	// Retention is how long events are kept; SparkPost keeps 10 days.
	Retention Duration `toml:"retention"`
}

// HTTP is the [http] section.
type HTTP struct {
	// Addr is the admin listener for the web console, metrics, health and
	// the JSON APIs; "" disables it.
	Addr string `toml:"addr"`
	// TLS serves the listener over HTTPS. With TLSCert and TLSKey empty it
	// uses the self-signed certificate SMTP uses (data_dir/tls). Setting
	// TLSCert and TLSKey implies TLS.
	TLS bool `toml:"tls"`
	// TLSCert and TLSKey are the PEM certificate and key of the HTTPS
	// listener; both or neither.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// ConsoleIdleTimeout ends a web console session after this long
	// without a request.
	ConsoleIdleTimeout Duration `toml:"console_idle_timeout"`
}

// Default returns the configuration used when neither file nor environment
// sets a key.
func Default() *Config {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return &Config{
		Hostname: host,
		DataDir:  "./data",
		LogLevel: "info",
		SMTP: SMTP{
			SubmissionAddr:        "127.0.0.1:2525",
			AuthUsernames:         []string{"SMTP_Injection"},
			MaxMessageBytes:       20971520,
			MaxRecipients:         1000,
			IdleTimeout:           Duration{60 * time.Second},
			MaxAuthFailures:       5,
			AuthFailureWindow:     Duration{5 * time.Minute},
			ProxyProtocolFrom:     []string{},
			ProxyProtocolPrefixes: []netip.Prefix{},
			ShutdownGrace:         Duration{30 * time.Second},
			MaxConnections:        1000,
			MaxConnectionsPerIP:   50,
			MaxJunkCommands:       100,
			AuthTimeout:           Duration{30 * time.Second},
			DataTimeout:           Duration{10 * time.Minute},
			MaxInflightBytes:      256 << 20,
			BareLineEndings:       BareNormalize,
			MaxReceivedHeaders:    50,
			MaxHeaderBytes:        1 << 20,
		},
		Auth: Auth{CacheTTL: Duration{5 * time.Second}},
		Relay: Relay{
			Mode:                 ModeHold,
			SmarthostTLS:         SmarthostSTARTTLS,
			Workers:              32,
			InFlowDelay:          Duration{time.Second},
			PerDomainConcurrency: 8,
			RetryInitial:         Duration{time.Minute},
			RetryMax:             Duration{time.Hour},
			MaxQueueLifetime:     Duration{72 * time.Hour},
			FinishedRetention:    Duration{time.Hour},
			MXPort:               25,
			DKIMSelector:         "smtpgw",
			Lease:                Duration{15 * time.Minute},
			ConnectTimeout:       Duration{30 * time.Second},
			CommandTimeout:       Duration{5 * time.Minute},
		},
		Events: Events{Retention: Duration{240 * time.Hour}},
		Webhooks: Webhooks{
			RetryInitial:  Duration{5 * time.Second},
			RetryMax:      Duration{time.Hour},
			MaxAge:        Duration{8 * time.Hour},
			Timeout:       Duration{10 * time.Second},
			BatchSize:     1000,
			BatchInterval: Duration{time.Second},
			Workers:       8,
		},
		HTTP: HTTP{Addr: "127.0.0.1:8025", ConsoleIdleTimeout: Duration{30 * time.Minute}},
	}
}

// Load reads the TOML file at path over Default(), applies the SMTPGW_*
// variables in env (os.Environ() form, "NAME=value") and validates the
// result. Path "" means ./smtpgw.toml if it exists, else no file.
func Load(path string, env []string) (*Config, error) {
	cfg := Default()
	if path == "" {
		_, err := os.Stat(DefaultPath)
		switch {
		case err == nil:
			path = DefaultPath
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("config: stat %s: %w", DefaultPath, err)
		}
	}
	if path != "" {
		if err := cfg.decodeFile(path); err != nil {
			return nil, err
		}
	}
	if err := cfg.applyEnv(env); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// decodeFile decodes the TOML file at path into c.
func (c *Config) decodeFile(path string) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("config: read %s: file does not exist (check the --config path, or leave it out to use ./%s or the defaults)", path, DefaultPath)
	}
	if err != nil {
		return fmt.Errorf("config: read %s: %w", path, err)
	}
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if key, val, ok := unquotedValue(data, pe.Position.Line); ok {
				return fmt.Errorf("config: %s: the value %s must be quoted: write %s = %q (at %s line %d)",
					key, val, key[strings.LastIndex(key, ".")+1:], val, path, pe.Position.Line)
			}
		}
		if errors.As(err, &pe) && pe.LastKey != "" {
			return fmt.Errorf("config: %s: %s (at %s line %d)", pe.LastKey, pe.Message, path, pe.Position.Line)
		}
		// A type mismatch is a plain error of the form
		// `toml: line N (last key "k"): incompatible types: ...`; turn it
		// into "key: problem" when it has that shape.
		if m := typeErrRE.FindStringSubmatch(err.Error()); m != nil {
			return fmt.Errorf("config: %s: %s (at %s line %s)", m[2], m[3], path, m[1])
		}
		return fmt.Errorf("config: parse %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		key := und[0].String()
		return fmt.Errorf("config: unknown key %q in %s (%s%s)", key, path, suggest(key, fileKeys()), docsHint)
	}
	return nil
}

// field is one configuration key found by reflecting over Config.
type field struct {
	key   string // dotted TOML key, "smtp.idle_timeout"
	index []int  // path for reflect.Value.FieldByIndex
}

// fields lists every key of Config in declaration order, sections included
// as the parents of their keys but not listed themselves.
func fields() []field {
	var out []field
	var walk func(t reflect.Type, prefix string, index []int)
	walk = func(t reflect.Type, prefix string, index []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "" || name == "-" {
				continue
			}
			idx := append(append([]int(nil), index...), i)
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[Duration]() {
				walk(f.Type, prefix+name+".", idx)
				continue
			}
			out = append(out, field{key: prefix + name, index: idx})
		}
	}
	walk(reflect.TypeFor[Config](), "", nil)
	return out
}

// typeErrRE matches BurntSushi/toml's error for a value of the wrong type.
var typeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]+)"\): incompatible types: (.*)$`)

// fileKeys lists every dotted key and every section name, for suggesting
// the key a file meant.
func fileKeys() []string {
	keys := knownKeys()
	for _, k := range knownKeys() {
		if section, _, ok := strings.Cut(k, "."); ok && !slices.Contains(keys, section) {
			keys = append(keys, section)
		}
	}
	return keys
}

// assignRE matches a "key = value" line.
var assignRE = regexp.MustCompile(`^\s*([A-Za-z0-9_-]+)\s*=\s*(.*?)\s*(#.*)?$`)

// unquotedValue reports whether line n (from 1) of a TOML file that failed
// to parse assigns a bare word that is not a TOML value — a string written
// without quotes, such as submission_addr = 127.0.0.1:2525 or
// idle_timeout = 60s — and returns its dotted key (with the section above
// it) and the value.
func unquotedValue(data []byte, n int) (key, val string, ok bool) {
	lines := strings.Split(string(data), "\n")
	if n < 1 || n > len(lines) {
		return "", "", false
	}
	m := assignRE.FindStringSubmatch(lines[n-1])
	if m == nil || m[2] == "" || strings.ContainsAny(m[2][:1], "\"'[{") {
		return "", "", false
	}
	var probe map[string]any
	if _, err := toml.Decode("v = "+m[2], &probe); err == nil {
		return "", "", false // a TOML value (number, boolean, date): not the problem
	}
	key = m[1]
	for i := n - 2; i >= 0; i-- {
		if h := strings.TrimSpace(lines[i]); strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
			key = strings.Trim(h, "[] ") + "." + key
			break
		}
	}
	return key, m[2], true
}

// knownKeys lists every dotted key, for suggestions.
func knownKeys() []string {
	fs := fields()
	keys := make([]string, len(fs))
	for i, f := range fs {
		keys[i] = f.key
	}
	return keys
}

// EnvName is the environment variable that sets key: "smtp.idle_timeout"
// gives "SMTPGW_SMTP_IDLE_TIMEOUT".
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// applyEnv sets the keys named by SMTPGW_* variables in env.
func (c *Config) applyEnv(env []string) error {
	byName := make(map[string]field)
	var names []string
	for _, f := range fields() {
		n := EnvName(f.key)
		byName[n] = f
		names = append(names, n)
	}
	root := reflect.ValueOf(c).Elem()
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) || strings.HasPrefix(name, envTestPrefix) || name == KeyEnv {
			continue
		}
		f, ok := byName[name]
		if !ok {
			return fmt.Errorf("config: unknown environment variable %s (%sunset it; %s)", name, suggest(name, names), docsHint)
		}
		if err := setText(root.FieldByIndex(f.index), value); err != nil {
			return fmt.Errorf("config: %s (from %s): %w", f.key, name, err)
		}
	}
	return nil
}

// setText parses s into v according to v's type.
func setText(v reflect.Value, s string) error {
	if u, ok := v.Addr().Interface().(interface{ UnmarshalText([]byte) error }); ok {
		return u.UnmarshalText([]byte(s))
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not a boolean (write true or false)", s)
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
		v.SetInt(n)
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("set %s from the environment: unsupported list type", v.Type())
		}
		list := []string{}
		for _, part := range strings.Split(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				list = append(list, part)
			}
		}
		v.Set(reflect.ValueOf(list))
	default:
		return fmt.Errorf("set %s from the environment: unsupported type", v.Type())
	}
	return nil
}

// suggest returns `did you mean "x"?; ` for the candidate closest to name,
// or "" when none is close. A candidate whose last part equals name's last
// part (a key put in the wrong section) counts as close.
func suggest(name string, candidates []string) string {
	last := func(s string) string {
		if i := strings.LastIndex(s, "."); i >= 0 {
			return s[i+1:]
		}
		return s
	}
	best, bestDist := "", 4 // farther than 3 edits is not a typo
	for _, c := range candidates {
		d := levenshtein(strings.ToLower(name), strings.ToLower(c))
		if strings.Contains(name, ".") && last(name) == last(c) {
			d = min(d, 1)
		}
		// A name cut short (SMTPGW_SMTP_IDLE for SMTPGW_SMTP_IDLE_TIMEOUT).
		if 2*len(name) >= len(c) && strings.HasPrefix(strings.ToLower(c), strings.ToLower(name)) {
			d = min(d, 2)
		}
		if d < bestDist {
			best, bestDist = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("did you mean %q?; ", best)
}

// levenshtein is the edit distance between a and b.
func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Validate checks every key, fills SMTP.ProxyProtocolPrefixes, and returns
// all problems joined, each naming the key and the fix.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: "+key+": "+format, args...))
	}

	if strings.TrimSpace(c.Hostname) == "" || strings.ContainsAny(c.Hostname, " \t\r\n") {
		bad("hostname", "%q is not a host name (set it to the name clients and relays see, like \"mail.example.com\")", c.Hostname)
	}
	if c.DataDir == "" {
		bad("data_dir", "is empty (set a directory, like \"./data\")")
	}
	if err := checkDatabaseURL(c.Database.URL); err != nil {
		bad("database.url", "%v", err)
	}

	s := &c.SMTP
	checkAddr(bad, "smtp.submission_addr", s.SubmissionAddr, true)
	checkAddr(bad, "smtp.submissions_addr", s.SubmissionsAddr, true)
	switch {
	case s.TLSCert != "" && s.TLSKey == "":
		bad("smtp.tls_key", "is empty but smtp.tls_cert is set (set both, or neither for a self-signed certificate)")
	case s.TLSCert == "" && s.TLSKey != "":
		bad("smtp.tls_cert", "is empty but smtp.tls_key is set (set both, or neither for a self-signed certificate)")
	}
	checkReadable(bad, "smtp.tls_cert", s.TLSCert)
	checkReadable(bad, "smtp.tls_key", s.TLSKey)
	if len(s.AuthUsernames) == 0 {
		bad("smtp.auth_usernames", "is empty, so no one could log in (list at least one username, or \"*\" for any)")
	}
	for _, u := range s.AuthUsernames {
		if strings.TrimSpace(u) == "" {
			bad("smtp.auth_usernames", "contains an empty username (remove it)")
		}
	}
	checkPositive(bad, "smtp.max_message_bytes", s.MaxMessageBytes)
	checkPositive(bad, "smtp.max_recipients", int64(s.MaxRecipients))
	if s.MaxAuthFailures < 0 {
		bad("smtp.max_auth_failures", "%d is negative (set a positive number of failures, or 0 for no limit)", s.MaxAuthFailures)
	}
	checkPositive(bad, "smtp.max_connections", int64(s.MaxConnections))
	checkPositive(bad, "smtp.max_connections_per_ip", int64(s.MaxConnectionsPerIP))
	checkPositive(bad, "smtp.max_junk_commands", int64(s.MaxJunkCommands))
	checkPositive(bad, "smtp.max_received_headers", int64(s.MaxReceivedHeaders))
	checkPositive(bad, "smtp.max_header_bytes", s.MaxHeaderBytes)
	checkPositive(bad, "smtp.max_inflight_bytes", s.MaxInflightBytes)
	if s.BareLineEndings != BareNormalize && s.BareLineEndings != BareReject {
		bad("smtp.bare_line_endings", "%q is not a choice (write \"normalize\" or \"reject\")", s.BareLineEndings)
	}
	checkDuration(bad, "smtp.auth_timeout", s.AuthTimeout)
	checkDuration(bad, "smtp.data_timeout", s.DataTimeout)
	if s.KeyRateLimit < 0 || s.KeyRateBurst < 0 {
		bad("smtp.key_rate_limit", "must be 0 (no limit) or a positive number of messages per second; key_rate_burst likewise")
	}
	checkDuration(bad, "smtp.idle_timeout", s.IdleTimeout)
	checkDuration(bad, "smtp.auth_failure_window", s.AuthFailureWindow)
	checkDuration(bad, "smtp.shutdown_grace", s.ShutdownGrace)
	s.ProxyProtocolPrefixes = make([]netip.Prefix, 0, len(s.ProxyProtocolFrom))
	for _, p := range s.ProxyProtocolFrom {
		prefix, err := parsePrefix(p)
		if err != nil {
			bad("smtp.proxy_protocol_from", "%q is not an IP address or CIDR prefix (write it like \"10.0.0.0/8\" or \"192.0.2.1\")", p)
			continue
		}
		s.ProxyProtocolPrefixes = append(s.ProxyProtocolPrefixes, prefix)
	}

	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "%q is not a log level (write \"debug\", \"info\", \"warn\" or \"error\")", c.LogLevel)
	}
	checkDuration(bad, "auth.cache_ttl", c.Auth.CacheTTL)

	r := &c.Relay
	switch r.Mode {
	case ModeMX, ModeHold:
	case ModeSmarthost:
		if r.Smarthost == "" {
			bad("relay.smarthost", "is empty but relay.mode is \"smarthost\" (set it to \"host:port\", or set relay.mode = \"mx\")")
		}
	default:
		bad("relay.mode", "%q is not a relay mode (write \"hold\", \"smarthost\" or \"mx\")", r.Mode)
	}
	checkAddr(bad, "relay.smarthost", r.Smarthost, false)
	switch r.SmarthostTLS {
	case SmarthostSTARTTLS, SmarthostImplicit, SmarthostNone:
	default:
		bad("relay.smarthost_tls", "%q is not a TLS mode (write \"starttls\", \"implicit\" or \"none\")", r.SmarthostTLS)
	}
	if r.SmarthostPassword != "" && r.SmarthostUsername == "" {
		bad("relay.smarthost_username", "is empty but relay.smarthost_password is set (set both, or neither for no AUTH)")
	}
	checkPositive(bad, "relay.workers", int64(r.Workers))
	if d := r.InFlowDelay.Duration; d < 0 || d > maxInFlowDelay {
		bad("relay.in_flow_delay", "%s is out of range (set a duration from \"0s\", not to wait, to %q: clients wait that long for a reply)", d, maxInFlowDelay.String())
	}
	checkPositive(bad, "relay.per_domain_concurrency", int64(r.PerDomainConcurrency))
	if r.SmarthostConcurrency < 0 {
		bad("relay.smarthost_concurrency", "%d is negative (set it above zero, or 0 for relay.workers)", r.SmarthostConcurrency)
	}
	checkDuration(bad, "relay.retry_initial", r.RetryInitial)
	checkDuration(bad, "relay.retry_max", r.RetryMax)
	if r.RetryMax.Duration > 0 && r.RetryMax.Duration < r.RetryInitial.Duration {
		bad("relay.retry_max", "%s is shorter than relay.retry_initial %s (make it at least as long)", r.RetryMax.Duration, r.RetryInitial.Duration)
	}
	checkDuration(bad, "relay.max_queue_lifetime", r.MaxQueueLifetime)
	checkDuration(bad, "relay.finished_retention", r.FinishedRetention)
	checkAddr(bad, "relay.dns_resolver", r.DNSResolver, false)
	if r.MXPort < 1 || r.MXPort > 65535 {
		bad("relay.mx_port", "%d is not a port (use 1-65535; 25 outside tests)", r.MXPort)
	}
	if r.DKIMSelector == "" || strings.ContainsAny(r.DKIMSelector, " \t\r\n;=") {
		bad("relay.dkim_selector", "%q is not a DKIM selector (use a DNS label, like \"smtpgw\")", r.DKIMSelector)
	}
	checkDuration(bad, "relay.lease", r.Lease)
	checkDuration(bad, "relay.connect_timeout", r.ConnectTimeout)
	checkDuration(bad, "relay.command_timeout", r.CommandTimeout)

	checkDuration(bad, "events.retention", c.Events.Retention)
	wh := &c.Webhooks
	checkDuration(bad, "webhooks.retry_initial", wh.RetryInitial)
	checkDuration(bad, "webhooks.retry_max", wh.RetryMax)
	if wh.RetryMax.Duration > 0 && wh.RetryMax.Duration < wh.RetryInitial.Duration {
		bad("webhooks.retry_max", "%s is shorter than webhooks.retry_initial %s (make it at least as long)", wh.RetryMax.Duration, wh.RetryInitial.Duration)
	}
	checkDuration(bad, "webhooks.max_age", wh.MaxAge)
	checkDuration(bad, "webhooks.timeout", wh.Timeout)
	checkDuration(bad, "webhooks.batch_interval", wh.BatchInterval)
	checkPositive(bad, "webhooks.workers", int64(wh.Workers))
	if wh.BatchSize < 1 || wh.BatchSize > 10000 {
		bad("webhooks.batch_size", "%d is out of range (use 1 to 10000; SparkPost sends up to 1000)", wh.BatchSize)
	}
	checkAddr(bad, "http.addr", c.HTTP.Addr, true)
	h := &c.HTTP
	switch {
	case h.TLSCert != "" && h.TLSKey == "":
		bad("http.tls_key", "is empty but http.tls_cert is set (set both, or neither: http.tls = true then uses the self-signed certificate)")
	case h.TLSCert == "" && h.TLSKey != "":
		bad("http.tls_cert", "is empty but http.tls_key is set (set both, or neither: http.tls = true then uses the self-signed certificate)")
	}
	checkReadable(bad, "http.tls_cert", h.TLSCert)
	checkReadable(bad, "http.tls_key", h.TLSKey)
	checkDuration(bad, "http.console_idle_timeout", h.ConsoleIdleTimeout)

	return errors.Join(errs...)
}

// checkPositive reports a zero or negative limit.
func checkPositive(bad func(string, string, ...any), key string, n int64) {
	if n <= 0 {
		bad(key, "%d is not a positive number (set it above zero)", n)
	}
}

// checkDuration reports a zero or negative duration.
func checkDuration(bad func(string, string, ...any), key string, d Duration) {
	if d.Duration <= 0 {
		bad(key, "%q is not a positive duration (write it like \"60s\" or \"5m\")", d.Duration.String())
	}
}

// checkAddr reports a non-empty addr that is not host:port. A listen
// address may leave the host empty (":465").
func checkAddr(bad func(string, string, ...any), key, addr string, listen bool) {
	if addr == "" {
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" || (!listen && host == "") {
		bad(key, "%q is not \"host:port\" (write it like \"127.0.0.1:2525\")", addr)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		if _, err := net.LookupPort("tcp", port); err != nil {
			bad(key, "%q has no valid port (use a number 0-65535)", addr)
		}
	}
}

// checkReadable reports a non-empty path that cannot be opened.
func checkReadable(bad func(string, string, ...any), key, path string) {
	if path == "" {
		return
	}
	f, err := os.Open(path)
	if err != nil {
		bad(key, "cannot read %q: %v (check the path and its permissions)", path, errors.Unwrap(err))
		return
	}
	if st, err := f.Stat(); err == nil && st.IsDir() {
		bad(key, "%q is a directory (name the PEM file in it)", path)
	}
	if err := f.Close(); err != nil {
		bad(key, "close %q: %v", path, err)
	}
}

// checkDatabaseURL accepts "" (SQLite) and postgres:// or postgresql:// URLs.
func checkDatabaseURL(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return errors.New("is not a postgres:// or postgresql:// URL (write it like \"postgres://user@host:5432/db\", or \"\" for SQLite in data_dir)")
	}
	return nil
}

// parsePrefix parses a CIDR prefix or a bare address, which becomes a
// single-address prefix.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("parse prefix: %w", err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("parse address: %w", err)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Redacted returns the configuration as TOML with secrets (the smarthost
// password, the password in database.url) replaced by "REDACTED", for
// logging.
func (c *Config) Redacted() string {
	cp := *c
	if cp.Relay.SmarthostPassword != "" {
		cp.Relay.SmarthostPassword = redacted
	}
	cp.Database.URL = redactURL(cp.Database.URL)
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(cp); err != nil {
		// Config holds only strings, numbers, bools, lists and Durations,
		// which always encode; say so rather than panic if that changes.
		return fmt.Sprintf("# config: encode: %v", err)
	}
	return b.String()
}

// redactURL hides the password in a database URL, in the user info or a
// password= query parameter. A URL that does not parse is hidden whole.
func redactURL(s string) string {
	if s == "" {
		return s
	}
	u, err := url.Parse(s)
	if err != nil {
		return redacted
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), redacted)
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", redacted)
		u.RawQuery = q.Encode()
	}
	return u.String()
}
