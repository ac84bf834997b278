package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// specExample is the example file of SPEC.md §8, verbatim.
const specExample = `
hostname = "mail.example.com"           # EHLO/banner name; default: os.Hostname()
data_dir = "./data"                     # SQLite file, generated TLS cert, DKIM keys

[database]
url = ""                                # "" = SQLite in data_dir; "postgres://user@host/db" = PostgreSQL

[smtp]
submission_addr = "127.0.0.1:2525"      # STARTTLS; "" disables
submissions_addr = ""                   # implicit TLS, e.g. ":465"
tls_cert = ""                           # PEM paths; "" = self-signed in data_dir (logged as such)
tls_key = ""
allow_insecure_auth = false             # AUTH without TLS: development only
auth_usernames = ["SMTP_Injection"]     # "*" = any username
max_message_bytes = 20971520
max_recipients = 1000
idle_timeout = "60s"
max_auth_failures = 5                   # per client IP per auth_failure_window, then 421
auth_failure_window = "5m"
proxy_protocol_from = []                # CIDRs of trusted load balancers

[auth]
cache_ttl = "5s"

[relay]
mode = "hold"                           # "hold", "smarthost" or "mx"
smarthost = ""                          # "host:port"
smarthost_tls = "starttls"              # "starttls", "implicit", "none"
smarthost_username = ""
smarthost_password = ""
workers = 32
per_domain_concurrency = 8
retry_initial = "1m"
retry_max = "1h"
max_queue_lifetime = "72h"

[http]
addr = "127.0.0.1:8025"                 # metrics, health, JSON APIs; "" disables
`

// writeFile writes content to a new file in a test directory and returns
// its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return path
}

// mustLoad loads path and env and fails the test on error.
func mustLoad(t *testing.T, path string, env []string) *Config {
	t.Helper()
	cfg, err := Load(path, env)
	if err != nil {
		t.Fatalf("Load(%q, %q): %v", path, env, err)
	}
	return cfg
}

// TestLoadDefaultPath checks that Load("") uses ./smtpgw.toml when present
// and the defaults otherwise. It changes directory, so it is not parallel.
func TestLoadDefaultPath(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)

	cfg := mustLoad(t, "", nil)
	want := Default()
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("no file: got\n%+v\nwant defaults\n%+v", cfg, want)
	}

	if err := os.WriteFile(filepath.Join(dir, DefaultPath), []byte("[relay]\nworkers = 3\n"), 0o600); err != nil {
		t.Fatalf("write %s: %v", DefaultPath, err)
	}
	cfg = mustLoad(t, "", nil)
	if cfg.Relay.Workers != 3 {
		t.Errorf("with ./%s: relay.workers = %d, want 3 from the file", DefaultPath, cfg.Relay.Workers)
	}
}

// TestDefaults pins the defaults the brief and SPEC.md §8 list.
func TestDefaults(t *testing.T) {
	t.Parallel()
	c := Default()
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	checks := []struct {
		key       string
		got, want any
	}{
		{"hostname", c.Hostname, host},
		{"data_dir", c.DataDir, "./data"},
		{"database.url", c.Database.URL, ""},
		{"smtp.submission_addr", c.SMTP.SubmissionAddr, "127.0.0.1:2525"},
		{"smtp.submissions_addr", c.SMTP.SubmissionsAddr, ""},
		{"smtp.allow_insecure_auth", c.SMTP.AllowInsecureAuth, false},
		{"smtp.auth_usernames", c.SMTP.AuthUsernames, []string{"SMTP_Injection"}},
		{"smtp.max_message_bytes", c.SMTP.MaxMessageBytes, int64(20971520)},
		{"smtp.max_recipients", c.SMTP.MaxRecipients, 1000},
		{"smtp.idle_timeout", c.SMTP.IdleTimeout.Duration, 60 * time.Second},
		{"smtp.max_auth_failures", c.SMTP.MaxAuthFailures, 5},
		{"smtp.auth_failure_window", c.SMTP.AuthFailureWindow.Duration, 5 * time.Minute},
		{"smtp.shutdown_grace", c.SMTP.ShutdownGrace.Duration, 30 * time.Second},
		{"smtp.max_connections", c.SMTP.MaxConnections, 1000},
		{"smtp.max_connections_per_ip", c.SMTP.MaxConnectionsPerIP, 50},
		{"smtp.max_junk_commands", c.SMTP.MaxJunkCommands, 100},
		{"smtp.auth_timeout", c.SMTP.AuthTimeout.Duration, 30 * time.Second},
		{"smtp.data_timeout", c.SMTP.DataTimeout.Duration, 10 * time.Minute},
		{"smtp.max_inflight_bytes", c.SMTP.MaxInflightBytes, int64(256 << 20)},
		{"smtp.bare_line_endings", c.SMTP.BareLineEndings, "normalize"},
		{"smtp.max_received_headers", c.SMTP.MaxReceivedHeaders, 50},
		{"smtp.max_header_bytes", c.SMTP.MaxHeaderBytes, int64(1 << 20)},
		{"auth.cache_ttl", c.Auth.CacheTTL.Duration, 5 * time.Second},
		{"relay.mode", c.Relay.Mode, "hold"},
		{"relay.smarthost_tls", c.Relay.SmarthostTLS, "starttls"},
		{"relay.workers", c.Relay.Workers, 32},
		{"relay.in_flow_delay", c.Relay.InFlowDelay.Duration, time.Second},
		{"relay.per_domain_concurrency", c.Relay.PerDomainConcurrency, 8},
		{"relay.retry_initial", c.Relay.RetryInitial.Duration, time.Minute},
		{"relay.retry_max", c.Relay.RetryMax.Duration, time.Hour},
		{"relay.max_queue_lifetime", c.Relay.MaxQueueLifetime.Duration, 72 * time.Hour},
		{"relay.finished_retention", c.Relay.FinishedRetention.Duration, time.Hour},
		{"relay.dns_resolver", c.Relay.DNSResolver, ""},
		{"relay.mx_port", c.Relay.MXPort, 25},
		{"relay.dkim_selector", c.Relay.DKIMSelector, "smtpgw"},
		{"relay.lease", c.Relay.Lease.Duration, 15 * time.Minute},
		{"relay.connect_timeout", c.Relay.ConnectTimeout.Duration, 30 * time.Second},
		{"relay.command_timeout", c.Relay.CommandTimeout.Duration, 5 * time.Minute},
		{"relay.smarthost_insecure_skip_verify", c.Relay.SmarthostInsecureSkipVerify, false},
		{"events.retention", c.Events.Retention.Duration, 240 * time.Hour},
		{"webhooks.allow_private_targets", c.Webhooks.AllowPrivateTargets, false},
		{"webhooks.retry_initial", c.Webhooks.RetryInitial.Duration, 5 * time.Second},
		{"webhooks.max_age", c.Webhooks.MaxAge.Duration, 8 * time.Hour},
		{"webhooks.timeout", c.Webhooks.Timeout.Duration, 10 * time.Second},
		{"webhooks.batch_size", c.Webhooks.BatchSize, 1000},
		{"http.addr", c.HTTP.Addr, "127.0.0.1:8025"},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("default %s = %#v, want %#v", ck.key, ck.got, ck.want)
		}
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

// TestSpecExample checks that the SPEC.md §8 example parses and gives the
// values it shows.
func TestSpecExample(t *testing.T) {
	t.Parallel()
	cfg := mustLoad(t, writeFile(t, "spec.toml", specExample), nil)
	want := Default()
	want.Hostname = "mail.example.com"
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("SPEC example: got\n%s\nwant\n%s", cfg.Redacted(), want.Redacted())
	}
}

// TestExampleFile checks that config/example.toml sets every key, loads, and
// equals Default() except for the hostname, which it sets on purpose.
func TestExampleFile(t *testing.T) {
	t.Parallel()
	cfg := mustLoad(t, "example.toml", nil)
	want := Default()
	want.Hostname = "mail.example.com"
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("example.toml differs from Default():\n%s\nwant\n%s", cfg.Redacted(), want.Redacted())
	}

	var v map[string]any
	md, err := toml.DecodeFile("example.toml", &v)
	if err != nil {
		t.Fatalf("decode example.toml: %v", err)
	}
	for _, key := range knownKeys() {
		if !md.IsDefined(strings.Split(key, ".")...) {
			t.Errorf("example.toml does not show key %q", key)
		}
	}
}

// TestEnvOverridesFile checks that each kind of value set in the file is
// replaced by its SMTPGW_ variable.
func TestEnvOverridesFile(t *testing.T) {
	t.Parallel()
	file := `
hostname = "file.example"
[database]
url = "postgres://file@db/one"
[smtp]
submission_addr = "127.0.0.1:2600"
allow_insecure_auth = false
max_message_bytes = 1000
max_recipients = 10
idle_timeout = "10s"
auth_usernames = ["a"]
proxy_protocol_from = ["10.0.0.0/8"]
[relay]
workers = 2
[events]
retention = "1h"
`
	path := writeFile(t, "smtpgw.toml", file)
	tests := []struct {
		name  string
		env   string
		check func(c *Config) (got, want any)
	}{
		{"top-level string", "SMTPGW_HOSTNAME=env.example", func(c *Config) (any, any) { return c.Hostname, "env.example" }},
		{"section string", "SMTPGW_DATABASE_URL=postgresql://env@db/two", func(c *Config) (any, any) { return c.Database.URL, "postgresql://env@db/two" }},
		{"empty string disables", "SMTPGW_SMTP_SUBMISSION_ADDR=", func(c *Config) (any, any) { return c.SMTP.SubmissionAddr, "" }},
		{"int", "SMTPGW_RELAY_WORKERS=7", func(c *Config) (any, any) { return c.Relay.Workers, 7 }},
		{"int64", "SMTPGW_SMTP_MAX_MESSAGE_BYTES=5000000000", func(c *Config) (any, any) { return c.SMTP.MaxMessageBytes, int64(5000000000) }},
		{"bool", "SMTPGW_SMTP_ALLOW_INSECURE_AUTH=true", func(c *Config) (any, any) { return c.SMTP.AllowInsecureAuth, true }},
		{"duration", "SMTPGW_SMTP_IDLE_TIMEOUT=2m", func(c *Config) (any, any) { return c.SMTP.IdleTimeout.Duration, 2 * time.Minute }},
		{"duration in another section", "SMTPGW_EVENTS_RETENTION=48h", func(c *Config) (any, any) { return c.Events.Retention.Duration, 48 * time.Hour }},
		{"finished retention", "SMTPGW_RELAY_FINISHED_RETENTION=10m", func(c *Config) (any, any) { return c.Relay.FinishedRetention.Duration, 10 * time.Minute }},
		{"list", "SMTPGW_SMTP_AUTH_USERNAMES=x, y ,z", func(c *Config) (any, any) { return c.SMTP.AuthUsernames, []string{"x", "y", "z"} }},
		{"cidr list", "SMTPGW_SMTP_PROXY_PROTOCOL_FROM=192.0.2.0/24,2001:db8::1", func(c *Config) (any, any) {
			return c.SMTP.ProxyProtocolPrefixes, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::1/128")}
		}},
		{"empty list", "SMTPGW_SMTP_PROXY_PROTOCOL_FROM=", func(c *Config) (any, any) { return c.SMTP.ProxyProtocolFrom, []string{} }},
		{"test variables ignored", "SMTPGW_TEST_DATABASE_URL=postgres://x@y/z", func(c *Config) (any, any) { return c.Database.URL, "postgres://file@db/one" }},
		{"other variables ignored", "HOME=/nowhere", func(c *Config) (any, any) { return c.Relay.Workers, 2 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := mustLoad(t, path, []string{tt.env})
			if got, want := tt.check(cfg); !reflect.DeepEqual(got, want) {
				t.Errorf("with %s: got %#v, want %#v", tt.env, got, want)
			}
		})
	}

	// Keys the environment does not name keep the file's value.
	cfg := mustLoad(t, path, []string{"SMTPGW_RELAY_WORKERS=9"})
	if cfg.Hostname != "file.example" || cfg.SMTP.MaxRecipients != 10 {
		t.Errorf("file values lost: hostname %q, max_recipients %d", cfg.Hostname, cfg.SMTP.MaxRecipients)
	}
}

// TestLoadErrors lists inputs that must fail and what the error must say.
func TestLoadErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert := filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(cert, []byte("not really a cert"), 0o600); err != nil {
		t.Fatalf("write cert: %v", err)
	}
	missing := filepath.Join(dir, "missing.pem")
	tests := []struct {
		name string
		file string // TOML content; "" means no file
		env  []string
		want []string // substrings of the error
	}{
		{"unknown key in file", "[smtp]\nsubmision_addr = \":25\"\n", nil,
			[]string{`unknown key "smtp.submision_addr"`, `did you mean "smtp.submission_addr"?`, "docs/configuration.md"}},
		{"key in wrong section", "[smtp]\ncache_ttl = \"1s\"\n", nil,
			[]string{`unknown key "smtp.cache_ttl"`, `did you mean "auth.cache_ttl"?`}},
		{"unknown section", "[smpt]\nfoo = 1\n", nil, []string{`unknown key "smpt"`, `did you mean "smtp"?`}},
		{"unknown env", "", []string{"SMTPGW_SMTP_IDLE_TIMOUT=5s"},
			[]string{"unknown environment variable SMTPGW_SMTP_IDLE_TIMOUT", `did you mean "SMTPGW_SMTP_IDLE_TIMEOUT"?`}},
		{"bad duration in file", "[smtp]\nidle_timeout = \"60\"\n", nil,
			[]string{`config: smtp.idle_timeout: "60" is not a duration (write it like "60s" or "5m")`, "line 2"}},
		{"integer duration in file", "[relay]\nlease = 300\n", nil,
			[]string{`relay.lease: "300" is not a duration`}},
		{"bad duration in env", "", []string{"SMTPGW_AUTH_CACHE_TTL=soon"},
			[]string{`auth.cache_ttl (from SMTPGW_AUTH_CACHE_TTL): "soon" is not a duration`}},
		{"bad int in env", "", []string{"SMTPGW_RELAY_WORKERS=many"},
			[]string{`relay.workers (from SMTPGW_RELAY_WORKERS): "many" is not a whole number`}},
		{"bad bool in env", "", []string{"SMTPGW_SMTP_ALLOW_INSECURE_AUTH=yes please"},
			[]string{`smtp.allow_insecure_auth (from SMTPGW_SMTP_ALLOW_INSECURE_AUTH): "yes please" is not a boolean`}},
		{"wrong type in file", "[smtp]\nmax_recipients = \"many\"\n", nil,
			[]string{"config: smtp.max_recipients: TOML value has type string; destination has type integer", "line 2"}},
		{"syntax error", "[smtp\n", nil, []string{"config: "}},
		{"bad cidr", "[smtp]\nproxy_protocol_from = [\"10.0.0.0/33\"]\n", nil,
			[]string{`config: smtp.proxy_protocol_from: "10.0.0.0/33" is not an IP address or CIDR prefix`}},
		{"cut-short env", "", []string{"SMTPGW_SMTP_IDLE=5s"},
			[]string{"unknown environment variable SMTPGW_SMTP_IDLE", `did you mean "SMTPGW_SMTP_IDLE_TIMEOUT"?`}},
		{"unquoted address", "[smtp]\nsubmission_addr = 127.0.0.1:2525\n", nil,
			[]string{`config: smtp.submission_addr: the value 127.0.0.1:2525 must be quoted: write submission_addr = "127.0.0.1:2525"`, "line 2"}},
		{"unquoted duration", "hostname = \"h\"\n[smtp]\n\nidle_timeout = 60s # idle\n", nil,
			[]string{`config: smtp.idle_timeout: the value 60s must be quoted: write idle_timeout = "60s"`, "line 4"}},
		{"unquoted top-level", "data_dir = /var/lib/smtpgw\n", nil,
			[]string{`config: data_dir: the value /var/lib/smtpgw must be quoted`}},
		{"bad mode", "[relay]\nmode = \"direct\"\n", nil,
			[]string{`config: relay.mode: "direct" is not a relay mode (write "hold", "smarthost" or "mx")`}},
		{"smarthost mode without smarthost", "[relay]\nmode = \"smarthost\"\n", nil,
			[]string{`config: relay.smarthost: is empty but relay.mode is "smarthost"`}},
		{"bad smarthost_tls", "[relay]\nmode = \"smarthost\"\nsmarthost = \"mx.example:587\"\nsmarthost_tls = \"tls\"\n", nil,
			[]string{`config: relay.smarthost_tls: "tls" is not a TLS mode`}},
		{"smarthost without port", "[relay]\nmode = \"smarthost\"\nsmarthost = \"mx.example\"\n", nil,
			[]string{`relay.smarthost: "mx.example" is not "host:port"`}},
		{"bad db scheme", "[database]\nurl = \"mysql://x@y/z\"\n", nil,
			[]string{"config: database.url: is not a postgres:// or postgresql:// URL"}},
		{"bad db scheme from env", "", []string{"SMTPGW_DATABASE_URL=host=db user=x"},
			[]string{"config: database.url:"}},
		{"zero limit", "[smtp]\nmax_recipients = 0\n", nil,
			[]string{"config: smtp.max_recipients: 0 is not a positive number"}},
		{"negative max_auth_failures", "[smtp]\nmax_auth_failures = -1\n", nil,
			[]string{"config: smtp.max_auth_failures: -1 is negative", "0 for no limit"}},
		{"bad bare_line_endings", "[smtp]\nbare_line_endings = \"strip\"\n", nil,
			[]string{`config: smtp.bare_line_endings: "strip" is not a choice`}},
		{"zero data_timeout", "[smtp]\ndata_timeout = \"0s\"\n", nil,
			[]string{`config: smtp.data_timeout: "0s" is not a positive duration`}},
		{"negative in_flow_delay", "[relay]\nin_flow_delay = \"-1s\"\n", nil,
			[]string{"config: relay.in_flow_delay: -1s is out of range", `"0s", not to wait`}},
		{"long in_flow_delay", "[relay]\nin_flow_delay = \"1m\"\n", nil,
			[]string{"config: relay.in_flow_delay: 1m0s is out of range", `to "10s"`}},
		{"zero max_connections_per_ip", "[smtp]\nmax_connections_per_ip = 0\n", nil,
			[]string{"config: smtp.max_connections_per_ip: 0 is not a positive number"}},
		{"negative limit from env", "", []string{"SMTPGW_RELAY_PER_DOMAIN_CONCURRENCY=-1"},
			[]string{"config: relay.per_domain_concurrency: -1 is not a positive number"}},
		{"negative duration", "[relay]\nretry_initial = \"-1m\"\n", nil,
			[]string{`config: relay.retry_initial: "-1m0s" is not a positive duration`}},
		{"zero finished_retention", "[relay]\nfinished_retention = \"0s\"\n", nil,
			[]string{`config: relay.finished_retention: "0s" is not a positive duration`}},
		{"retry_max below retry_initial", "[relay]\nretry_initial = \"2h\"\nretry_max = \"1h\"\n", nil,
			[]string{"config: relay.retry_max: 1h0m0s is shorter than relay.retry_initial"}},
		{"bad mx_port", "[relay]\nmx_port = 70000\n", nil, []string{"config: relay.mx_port: 70000 is not a port"}},
		{"empty auth usernames", "[smtp]\nauth_usernames = []\n", nil, []string{"config: smtp.auth_usernames: is empty"}},
		{"tls_cert without tls_key", "[smtp]\ntls_cert = " + quote(cert) + "\n", nil,
			[]string{"config: smtp.tls_key: is empty but smtp.tls_cert is set"}},
		{"tls_key without tls_cert", "[smtp]\ntls_key = " + quote(cert) + "\n", nil,
			[]string{"config: smtp.tls_cert: is empty but smtp.tls_key is set"}},
		{"tls_cert unreadable", "[smtp]\ntls_cert = " + quote(missing) + "\ntls_key = " + quote(cert) + "\n", nil,
			[]string{"config: smtp.tls_cert: cannot read " + quote(missing), "check the path"}},
		{"tls_cert is a directory", "[smtp]\ntls_cert = " + quote(dir) + "\ntls_key = " + quote(cert) + "\n", nil,
			[]string{"config: smtp.tls_cert: " + quote(dir) + " is a directory"}},
		{"bad listen addr", "[http]\naddr = \"8025\"\n", nil, []string{`config: http.addr: "8025" is not "host:port"`}},
		{"empty hostname", "hostname = \"\"\n", nil, []string{"config: hostname:"}},
		{"several problems", "[relay]\nmode = \"x\"\nworkers = 0\n", nil,
			[]string{"relay.mode", "relay.workers"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := ""
			if tt.file != "" {
				path = writeFile(t, "smtpgw.toml", tt.file)
			} else {
				// An empty file: defaults, without depending on the
				// working directory.
				path = writeFile(t, "smtpgw.toml", "")
			}
			cfg, err := Load(path, tt.env)
			if err == nil {
				t.Fatalf("Load succeeded, want an error; config:\n%s", cfg.Redacted())
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

// quote writes s as a TOML basic string.
func quote(s string) string {
	return `"` + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `"`, `\"`) + `"`
}

// TestLoadMissingExplicitPath checks that a --config path that does not
// exist is an error naming it and the fix, not a silent fall back.
func TestLoadMissingExplicitPath(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nope.toml")
	_, err := Load(path, nil)
	if err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
	for _, w := range []string{path, "does not exist", "--config"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

// TestTLSFilesReadable checks that readable cert and key files pass.
func TestTLSFilesReadable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert := filepath.Join(dir, "cert.pem")
	key := filepath.Join(dir, "key.pem")
	for _, p := range []string{cert, key} {
		if err := os.WriteFile(p, []byte("pem"), 0o600); err != nil {
			t.Fatalf("write %s: %v", p, err)
		}
	}
	cfg := mustLoad(t, writeFile(t, "c.toml", ""), []string{"SMTPGW_SMTP_TLS_CERT=" + cert, "SMTPGW_SMTP_TLS_KEY=" + key})
	if cfg.SMTP.TLSCert != cert || cfg.SMTP.TLSKey != key {
		t.Errorf("tls paths = %q, %q; want %q, %q", cfg.SMTP.TLSCert, cfg.SMTP.TLSKey, cert, key)
	}
}

// TestProxyProtocolPrefixes checks how Validate parses proxy_protocol_from.
func TestProxyProtocolPrefixes(t *testing.T) {
	t.Parallel()
	c := Default()
	c.SMTP.ProxyProtocolFrom = []string{"10.1.2.3/8", "192.0.2.7", "2001:db8::/32", "::1", "::ffff:198.51.100.1"}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("198.51.100.1/32"),
	}
	if !reflect.DeepEqual(c.SMTP.ProxyProtocolPrefixes, want) {
		t.Errorf("prefixes = %v, want %v", c.SMTP.ProxyProtocolPrefixes, want)
	}
	// Validating again does not duplicate them.
	if err := c.Validate(); err != nil {
		t.Fatalf("second Validate: %v", err)
	}
	if len(c.SMTP.ProxyProtocolPrefixes) != len(want) {
		t.Errorf("after a second Validate: %d prefixes, want %d", len(c.SMTP.ProxyProtocolPrefixes), len(want))
	}
}

// TestRedacted checks that secrets are hidden and everything else is kept.
func TestRedacted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		dbURL   string
		secrets []string
		want    []string
	}{
		{"password in user info", "postgres://gw:s3cr3t-db@db.internal:5432/smtpgw?sslmode=require", []string{"s3cr3t-db"},
			[]string{"gw:REDACTED@db.internal:5432/smtpgw", "sslmode=require"}},
		{"password in query", "postgresql://gw@db/smtpgw?password=q-s3cr3t", []string{"q-s3cr3t"},
			[]string{"password=REDACTED"}},
		{"no password", "postgres://gw@db/smtpgw", nil, []string{`url = "postgres://gw@db/smtpgw"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			c.Database.URL = tt.dbURL
			c.Relay.Mode = ModeSmarthost
			c.Relay.Smarthost = "relay.example:587"
			c.Relay.SmarthostUsername = "relayuser"
			c.Relay.SmarthostPassword = "hunter2-relay"
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			out := c.Redacted()
			for _, s := range append(tt.secrets, "hunter2-relay") {
				if strings.Contains(out, s) {
					t.Errorf("Redacted shows secret %q:\n%s", s, out)
				}
			}
			for _, w := range append(tt.want, `smarthost_password = "REDACTED"`, `smarthost_username = "relayuser"`, `idle_timeout = "1m0s"`) {
				if !strings.Contains(out, w) {
					t.Errorf("Redacted lacks %q:\n%s", w, out)
				}
			}
			if c.Relay.SmarthostPassword != "hunter2-relay" || c.Database.URL != tt.dbURL {
				t.Error("Redacted changed the Config it was called on")
			}
			// The dump is a valid config file with the same keys.
			var back Config
			md, err := toml.Decode(out, &back)
			if err != nil {
				t.Fatalf("decode Redacted output: %v\n%s", err, out)
			}
			if und := md.Undecoded(); len(und) > 0 {
				t.Errorf("Redacted output has keys Load would refuse: %v", und)
			}
			if back.Relay.Workers != c.Relay.Workers || back.SMTP.IdleTimeout != c.SMTP.IdleTimeout {
				t.Errorf("Redacted round trip lost values: %+v", back)
			}
		})
	}
}

// TestEnvName checks the variable names derived from keys.
func TestEnvName(t *testing.T) {
	t.Parallel()
	for key, want := range map[string]string{
		"hostname":             "SMTPGW_HOSTNAME",
		"data_dir":             "SMTPGW_DATA_DIR",
		"database.url":         "SMTPGW_DATABASE_URL",
		"smtp.submission_addr": "SMTPGW_SMTP_SUBMISSION_ADDR",
		"smtp.idle_timeout":    "SMTPGW_SMTP_IDLE_TIMEOUT",
		"relay.mx_port":        "SMTPGW_RELAY_MX_PORT",
	} {
		if got := EnvName(key); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", key, got, want)
		}
	}
	// Every key gets a distinct variable.
	seen := make(map[string]string)
	for _, key := range knownKeys() {
		n := EnvName(key)
		if other, ok := seen[n]; ok {
			t.Errorf("keys %q and %q share variable %s", other, key, n)
		}
		seen[n] = key
	}
}

// TestDurationText checks Duration's text round trip and its error.
func TestDurationText(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"60s", "5m", "72h", "1h30m", "250ms"} {
		var d Duration
		if err := d.UnmarshalText([]byte(s)); err != nil {
			t.Errorf("UnmarshalText(%q): %v", s, err)
			continue
		}
		text, err := d.MarshalText()
		if err != nil {
			t.Fatalf("MarshalText: %v", err)
		}
		var back Duration
		if err := back.UnmarshalText(text); err != nil || back != d {
			t.Errorf("%q -> %q -> %v (%v), want %v", s, text, back, err, d)
		}
	}
	for _, s := range []string{"", "60", "5 minutes", "10d"} {
		var d Duration
		err := d.UnmarshalText([]byte(s))
		if err == nil || !strings.Contains(err.Error(), "is not a duration") {
			t.Errorf("UnmarshalText(%q) = %v, want a 'not a duration' error", s, err)
		}
	}
}

// TestKeyEnvIgnored: SMTPGW_KEY is for client commands (smtpgw bench); a
// shell that exports it can still start the gateway.
func TestKeyEnvIgnored(t *testing.T) {
	if _, err := Load("", []string{KeyEnv + "=0123"}); err != nil {
		t.Fatalf("Load with %s set: %v", KeyEnv, err)
	}
}
