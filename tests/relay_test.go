package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/internal/logtest"
	"github.com/smtpgw/smtpgw/internal/pgtest"
)

// endMarker ends every test message body; a sink dump without it is a
// transfer that did not finish.
const endMarker = "END-OF-MESSAGE"

// sink is Postfix's smtp-sink accepting everything and dumping each
// transaction to a file.
type sink struct {
	addr string
	dir  string
}

// startSink runs smtp-sink on a free loopback port. smtp-sink binds the
// port itself, so a port taken between our probe and its bind is retried.
func startSink(t testing.TB) *sink {
	t.Helper()
	bin, err := exec.LookPath("smtp-sink")
	if err != nil {
		t.Fatalf("smtp-sink not found (%v): install Postfix: "+
			"echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections && "+
			"DEBIAN_FRONTEND=noninteractive apt-get install -y postfix", err)
	}
	// smtp-sink drops privileges to nobody before writing dumps: the
	// directory and its parents must be open to it, which t.TempDir's
	// parent (mode 0700) is not.
	dir, err := os.MkdirTemp("", "smtpgw-sink-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	for try := 0; try < 5; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-u", "nobody", "-d", filepath.Join(dir, "msg."), addr, "256")
		stderr := &logtest.Buffer{}
		cmd.Stdout, cmd.Stderr = stderr, stderr
		if err := cmd.Start(); err != nil {
			t.Fatalf("start smtp-sink: %v", err)
		}
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		if waitListening(addr, exited) {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
				if t.Failed() && stderr.String() != "" {
					t.Logf("smtp-sink output:\n%s", stderr.String())
				}
			})
			return &sink{addr: addr, dir: dir}
		}
		_ = cmd.Process.Kill()
		<-exited
		t.Logf("smtp-sink on %s did not start (%s); retrying on another port", addr, strings.TrimSpace(stderr.String()))
	}
	t.Fatal("smtp-sink did not start after 5 tries")
	return nil
}

// waitListening reports whether addr accepts connections before the
// process exits or 10 s pass.
func waitListening(addr string, exited <-chan struct{}) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.Close()
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// subjects counts completed transfers per Subject in the dumps.
func (s *sink) subjects(t testing.TB) map[string]int {
	t.Helper()
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]int)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(s.dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte(endMarker)) {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "Subject: "); ok {
				out[strings.TrimSpace(v)]++
				break
			}
		}
	}
	return out
}

// waitSubjects polls until every subject in want has arrived, failing after
// timeout (a bound for a stuck relay, not a speed assertion).
func (s *sink) waitSubjects(t testing.TB, want []string, timeout time.Duration) map[string]int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := s.subjects(t)
		missing := 0
		for _, w := range want {
			if got[w] == 0 {
				missing++
			}
		}
		if missing == 0 {
			return got
		}
		if time.Now().After(deadline) {
			var names []string
			if entries, err := os.ReadDir(s.dir); err == nil {
				for _, e := range entries {
					names = append(names, e.Name())
				}
			}
			t.Fatalf("smtp-sink: %d of %d messages missing after %v (%d dump files)", missing, len(want), timeout, len(names))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// relayTOML configures the gateway to relay everything to the sink.
func relayTOML(sinkAddr string) string { return relayTOMLConc(sinkAddr, 8) }

// relayTOMLConc is relayTOML with conc parallel connections to the sink.
func relayTOMLConc(sinkAddr string, conc int) string {
	return fmt.Sprintf(`
[relay]
mode = "smarthost"
smarthost = %q
smarthost_tls = "none"
workers = 16
smarthost_concurrency = %d
retry_initial = "200ms"
retry_max = "1s"
lease = "5s"
connect_timeout = "5s"
command_timeout = "10s"
`, sinkAddr, conc)
}

// injected is what one injection run got acknowledged.
type injected struct {
	mu       sync.Mutex
	subjects []string          // acknowledged with 250
	ids      map[string]string // subject -> queue id
}

// inject sends the messages named by subjects over `sessions` parallel
// STARTTLS+AUTH sessions to g and returns the first session error. A
// session that fails stops; the others go on.
func inject(g *Gateway, key string, subjects []string, sessions int, acked *injected) error {
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for w := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []string
			for i := w; i < len(subjects); i += sessions {
				mine = append(mine, subjects[i])
			}
			if err := injectSession(g, key, mine, acked); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// injectSession sends subjects on one connection.
func injectSession(g *Gateway, key string, subjects []string, acked *injected) error {
	c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	for _, s := range subjects {
		if err := c.Mail("app@example.com", nil); err != nil {
			return fmt.Errorf("MAIL for %s: %w", s, err)
		}
		if err := c.Rcpt("rcpt-"+s+"@example.net", nil); err != nil {
			return fmt.Errorf("RCPT for %s: %w", s, err)
		}
		w, err := c.Data()
		if err != nil {
			return fmt.Errorf("DATA for %s: %w", s, err)
		}
		body := "From: app@example.com\r\nTo: rcpt@example.net\r\nSubject: " + s + "\r\n\r\n" +
			strings.Repeat("some text of the message body\r\n", 30) + endMarker + " " + s + "\r\n"
		if _, err := w.Write([]byte(body)); err != nil {
			return fmt.Errorf("write %s: %w", s, err)
		}
		resp, err := w.CloseWithResponse()
		if err != nil {
			return fmt.Errorf("end of DATA for %s: %w", s, err)
		}
		acked.mu.Lock()
		acked.subjects = append(acked.subjects, s)
		if m := queuedAs.FindStringSubmatch(resp.StatusText); m != nil {
			if acked.ids == nil {
				acked.ids = make(map[string]string)
			}
			acked.ids[s] = m[1]
		}
		acked.mu.Unlock()
	}
	return c.Quit()
}

// logsOnFailure prints the gateway's log when the test fails.
func logsOnFailure(t testing.TB, g *Gateway) {
	t.Cleanup(func() {
		if t.Failed() {
			logs := g.Logs()
			if len(logs) > 20000 {
				logs = "...\n" + logs[len(logs)-20000:]
			}
			t.Logf("gateway log:\n%s", logs)
		}
	})
}

// subjectList returns n subjects with a prefix.
func subjectList(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

// queueStats reads recipient counts per state with the CLI.
func queueStats(t testing.TB, g *Gateway) map[string]int64 {
	t.Helper()
	var res struct {
		Results struct {
			ByState map[string]int64 `json:"recipients_by_state"`
		} `json:"results"`
	}
	out := g.MustCLI("queue", "stats", "--json")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("queue stats --json: %v\n%s", err, out)
	}
	return res.Results.ByState
}

// waitDelivered polls until n recipients are delivered and none is queued
// or deferred.
func waitDelivered(t testing.TB, g *Gateway, n int64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := queueStats(t, g)
		if s["delivered"] >= n && s["queued"] == 0 && s["deferred"] == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue not drained after %v: %v", timeout, s)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestRelayToSmtpSink(t *testing.T) {
	t.Parallel()
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			sk := startSink(t)
			g := StartGateway(t, Options{Backend: backend, TOML: relayTOML(sk.addr)})
			logsOnFailure(t, g)
			key := g.CreateKey()
			subjects := subjectList("sink-"+backend, 50)
			var acked injected
			if err := inject(g, key, subjects, 2, &acked); err != nil {
				t.Fatal(err)
			}
			sk.waitSubjects(t, subjects, 60*time.Second)
			waitDelivered(t, g, int64(len(subjects)), 30*time.Second)
			got := sk.subjects(t)
			for _, s := range subjects {
				if got[s] != 1 {
					t.Errorf("%s delivered %d times, want 1", s, got[s])
				}
			}
			id := acked.ids[subjects[0]]
			if m := g.Message(id); len(m.Recipients) != 1 || m.Recipients[0].State != "delivered" {
				t.Errorf("queue show %s: %+v, want one delivered recipient", id, m)
			}
			evs := g.MustCLI("events", "--message", id, "--json")
			if !strings.Contains(evs, `"delivery"`) || !strings.Contains(evs, `"injection"`) {
				t.Errorf("events of %s lack injection and delivery:\n%s", id, evs)
			}
			// SparkPost's fields, filled at injection and at delivery.
			var parsed struct {
				Results []map[string]any `json:"results"`
			}
			if err := json.Unmarshal([]byte(evs), &parsed); err != nil {
				t.Fatal(err)
			}
			for _, ev := range parsed.Results {
				if ev["subject"] != subjects[0] || ev["friendly_from"] != "app@example.com" || ev["msg_from"] != "app@example.com" ||
					ev["ip_address"] != "127.0.0.1" || ev["msg_size"] == nil || ev["routing_domain"] != "example.net" || ev["rcpt_type"] != "to" {
					t.Errorf("%s event lacks SparkPost's message fields: %v", ev["type"], ev)
				}
				if ev["type"] == "delivery" && (ev["num_retries"] != "0" || ev["queue_time"] == nil || ev["injection_time"] == nil) {
					t.Errorf("delivery event lacks num_retries, queue_time or injection_time: %v", ev)
				}
			}
			// The CLI pages with --limit and --cursor.
			page := g.MustCLI("events", "--type", "delivery", "--limit", "20")
			i := strings.Index(page, "--cursor ")
			if i < 0 || strings.Count(page, "delivery") != 20 {
				t.Fatalf("events --limit 20 of 50 deliveries: no cursor or not 20 rows:\n%s", page)
			}
			cursor := strings.TrimSpace(page[i+len("--cursor "):])
			rest := g.MustCLI("events", "--type", "delivery", "--limit", "100", "--cursor", cursor)
			if strings.Count(rest, "delivery") != 30 || strings.Contains(rest, "--cursor") {
				t.Errorf("second page after %s: want the other 30 deliveries and no cursor:\n%s", cursor, rest)
			}
			if logs := g.Logs(); strings.Contains(logs, key) {
				t.Error("the API key appears in the gateway's log")
			}
		})
	}
}

func TestTwoGatewaysOnePostgres(t *testing.T) {
	t.Parallel()
	sk := startSink(t)
	url := pgtest.URL(t)
	g1 := StartGateway(t, Options{Backend: "postgres", DatabaseURL: url, TOML: relayTOML(sk.addr)})
	g2 := StartGateway(t, Options{Backend: "postgres", DatabaseURL: url, TOML: relayTOML(sk.addr)})
	logsOnFailure(t, g1)
	logsOnFailure(t, g2)
	key := g1.CreateKey()
	subjects := subjectList("two", 1000)
	var acked injected
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, g := range []*Gateway{g1, g2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = inject(g, key, subjects[i*500:(i+1)*500], 4, &acked)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(acked.subjects) != len(subjects) {
		t.Fatalf("%d of %d messages acknowledged", len(acked.subjects), len(subjects))
	}
	sk.waitSubjects(t, subjects, 120*time.Second)
	waitDelivered(t, g1, int64(len(subjects)), 60*time.Second)
	got := sk.subjects(t)
	for _, s := range subjects {
		if got[s] != 1 {
			t.Errorf("%s delivered %d times, want 1", s, got[s])
		}
	}
	if len(got) != len(subjects) {
		t.Errorf("sink got %d distinct messages, want %d", len(got), len(subjects))
	}
	// Both nodes relayed: each logged deliveries of its own.
	for i, g := range []*Gateway{g1, g2} {
		if !strings.Contains(g.Logs(), "state=delivered") {
			t.Logf("gateway %d relayed nothing (the other node took all the work)", i+1)
		}
	}
}

func TestKilledGatewayLosesNothing(t *testing.T) {
	t.Parallel()
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			sk := startSink(t)
			// Two connections to the sink: relaying lags injection, so the
			// kill finds a backlog queued as well as transactions in flight.
			g := StartGateway(t, Options{Backend: backend, TOML: relayTOMLConc(sk.addr, 2)})
			logsOnFailure(t, g)
			key := g.CreateKey()
			subjects := subjectList("kill-"+backend, 400)
			var acked injected
			done := make(chan struct{})
			go func() {
				defer close(done)
				// Sessions fail when the gateway is killed: expected.
				_ = inject(g, key, subjects, 4, &acked)
			}()
			// Kill mid-batch: once relaying has visibly started.
			deadline := time.Now().Add(60 * time.Second)
			for len(sk.subjects(t)) < 40 {
				if time.Now().After(deadline) {
					t.Fatal("relay never started delivering")
				}
				time.Sleep(5 * time.Millisecond)
			}
			g.Kill()
			<-done
			acked.mu.Lock()
			ackedSubjects := append([]string(nil), acked.subjects...)
			acked.mu.Unlock()
			before := len(sk.subjects(t))
			t.Logf("killed with %d acknowledged, %d delivered", len(ackedSubjects), before)

			g.Restart()
			got := sk.waitSubjects(t, ackedSubjects, 90*time.Second)
			dups := 0
			for _, n := range got {
				if n > 1 {
					dups++
				}
			}
			// Only transactions in flight at the kill can be repeated: at
			// most smarthost_concurrency.
			if dups > 2 {
				t.Errorf("%d messages delivered twice, want at most the 2 in flight at the kill", dups)
			}
			t.Logf("after restart: %d acknowledged all delivered, %d duplicates", len(ackedSubjects), dups)
		})
	}
}
