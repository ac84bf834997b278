// Package tests holds black-box tests: they build the real smtpgw binary,
// run `smtpgw serve` as a subprocess against SQLite or PostgreSQL, and drive
// it with real SMTP clients (Go's, swaks, msmtp, python3's smtplib) and real
// SMTP servers as relay targets (maddy tests/, chasquid test/).
package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/logtest"
	"github.com/smtpgw/smtpgw/internal/pgtest"
	"github.com/smtpgw/smtpgw/internal/tlstest"
)

// binary is the smtpgw executable built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "smtpgw-tests-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "smtpgw")
	build := exec.Command("go", "build", "-o", binary, "../cmd/smtpgw")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build smtpgw:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// Backends lists the stores every end-to-end test runs against.
var Backends = []string{"sqlite", "postgres"}

// Options configure one gateway process.
type Options struct {
	// Backend is "sqlite" (a data dir of the test's own) or "postgres" (a
	// schema of the test's own, unless DatabaseURL is set).
	Backend string
	// DatabaseURL shares one PostgreSQL schema between gateways.
	DatabaseURL string
	// DataDir shares one data directory (restart tests); default a new one.
	DataDir string
	// TOML is appended to the generated configuration file.
	TOML string
	// Env is added to the process environment.
	Env []string
}

// Gateway is a running `smtpgw serve` process.
type Gateway struct {
	t       testing.TB
	opts    Options
	cfgPath string
	// Pair is the TLS certificate the gateway presents; clients trust Pair.CAPEM.
	Pair *tlstest.Pair
	// CAFile is the path of the CA certificate, for swaks/msmtp/python.
	CAFile string
	// DataDir is the gateway's data directory.
	DataDir string
	// DatabaseURL is "" for SQLite.
	DatabaseURL string
	// Submission and HTTP are the bound addresses, read from the log.
	Submission, HTTP string

	cmd  *exec.Cmd
	logs *logtest.Buffer
	done chan struct{}
}

// StartGateway writes a configuration, starts the gateway and waits until
// it logs "smtpgw ready". It is stopped (SIGTERM) in t.Cleanup.
func StartGateway(t testing.TB, o Options) *Gateway {
	t.Helper()
	g := &Gateway{t: t, opts: o, Pair: tlstest.New(t), DataDir: o.DataDir, DatabaseURL: o.DatabaseURL}
	if g.DataDir == "" {
		g.DataDir = t.TempDir()
	}
	if o.Backend == "postgres" && g.DatabaseURL == "" {
		g.DatabaseURL = pgtest.URL(t)
	}
	certFile, keyFile, caFile := g.Pair.Files(t)
	g.CAFile = caFile
	g.cfgPath = filepath.Join(t.TempDir(), "smtpgw.toml")
	cfg := fmt.Sprintf(`hostname = "gw.test"
data_dir = %q

[database]
url = %q

[smtp]
submission_addr = "127.0.0.1:0"
tls_cert = %q
tls_key = %q
idle_timeout = "30s"
shutdown_grace = "5s"

[http]
addr = "127.0.0.1:0"
%s
`, g.DataDir, g.DatabaseURL, certFile, keyFile, o.TOML)
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	g.start()
	t.Cleanup(g.Stop)
	return g
}

var (
	readyRe      = regexp.MustCompile(`msg="smtpgw ready".*submission=(\S+)`)
	httpListenRe = regexp.MustCompile(`msg="http listening" addr=(\S+)`)
)

func (g *Gateway) start() {
	g.t.Helper()
	if g.logs == nil {
		g.logs = &logtest.Buffer{} // kept across restarts
	}
	logs := g.logs
	g.cmd = exec.Command(binary, "serve", "--config", g.cfgPath, "--log-level", "debug")
	g.cmd.Env = append(g.environ(), g.opts.Env...)
	pr, pw := io.Pipe()
	g.cmd.Stdout = logs
	g.cmd.Stderr = pw
	if err := g.cmd.Start(); err != nil {
		g.t.Fatalf("start gateway: %v", err)
	}
	done := make(chan struct{})
	g.done = done
	ready := make(chan [2]string, 1)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var httpAddr string
		sent := false
		for sc.Scan() {
			line := sc.Text()
			logs.WriteString(line + "\n")
			if m := httpListenRe.FindStringSubmatch(line); m != nil {
				httpAddr = m[1]
			}
			if m := readyRe.FindStringSubmatch(line); m != nil && !sent {
				sent = true
				ready <- [2]string{m[1], httpAddr}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	cmd := g.cmd
	go func() {
		_ = cmd.Wait()
		_ = pw.Close()
		<-readerDone // the log is complete once done is closed
		close(done)
	}()
	select {
	case addrs := <-ready:
		g.Submission, g.HTTP = addrs[0], addrs[1]
	case <-done:
		g.t.Fatalf("gateway exited before it was ready:\n%s", logs.String())
	case <-time.After(60 * time.Second):
		g.t.Fatalf("gateway not ready after 60s:\n%s", logs.String())
	}
}

// environ is the process environment with no SMTPGW_ variables of the
// caller's, so the configuration file is what counts.
func (g *Gateway) environ() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SMTPGW_") {
			env = append(env, kv)
		}
	}
	return env
}

// Stop sends SIGTERM and waits for the process to exit.
func (g *Gateway) Stop() {
	if g.cmd == nil || g.cmd.Process == nil {
		return
	}
	select {
	case <-g.done:
		return
	default:
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(30 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.done
		g.t.Errorf("gateway did not stop within 30s of SIGTERM:\n%s", g.logs.String())
	}
}

// Kill sends SIGKILL and waits: no shutdown code runs.
func (g *Gateway) Kill() {
	_ = g.cmd.Process.Kill()
	<-g.done
}

// Restart starts the process again with the same configuration.
func (g *Gateway) Restart() {
	g.t.Helper()
	g.Stop()
	g.start()
}

// Logs returns everything the process wrote so far.
func (g *Gateway) Logs() string { return g.logs.String() }

// CLI runs an admin subcommand against the gateway's store.
func (g *Gateway) CLI(args ...string) (string, error) {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append(args, "--config", g.cfgPath)...)
	cmd.Env = g.environ()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("smtpgw %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// MustCLI is CLI that fails the test on error.
func (g *Gateway) MustCLI(args ...string) string {
	g.t.Helper()
	out, err := g.CLI(args...)
	if err != nil {
		g.t.Fatal(err)
	}
	return out
}

// CreateKey creates an API key with the CLI and returns the key.
func (g *Gateway) CreateKey(args ...string) string {
	g.t.Helper()
	if len(args) == 0 {
		args = []string{"--grant", "smtp/inject"}
	}
	out := g.MustCLI(append([]string{"keys", "create", "--label", "test", "--json"}, args...)...)
	var res struct {
		Results struct {
			Key string `json:"key"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Results.Key) != 40 {
		g.t.Fatalf("keys create --json: %v\n%s", err, out)
	}
	return res.Results.Key
}

// QueuedMessage is one message as `queue show --json` prints it.
type QueuedMessage struct {
	ID         string `json:"id"`
	MailFrom   string `json:"mail_from"`
	KeyID      string `json:"key_id"`
	Subaccount int64  `json:"subaccount_id"`
	Size       int    `json:"size"`
	Recipients []struct {
		Address string `json:"address"`
		State   string `json:"state"`
	} `json:"recipients"`
}

// Message reads one message from the store with the CLI.
func (g *Gateway) Message(id string) QueuedMessage {
	g.t.Helper()
	out := g.MustCLI("queue", "show", id, "--json")
	var res struct {
		Results QueuedMessage `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		g.t.Fatalf("queue show --json: %v\n%s", err, out)
	}
	return res.Results
}

// queuedAs extracts the queue id from "250 2.0.0 OK queued as <id>".
var queuedAs = regexp.MustCompile(`queued as ([0-9a-f]+)`)
