package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/jackc/pgx/v5"

	"github.com/smtpgw/smtpgw/internal/disktest"
	"github.com/smtpgw/smtpgw/internal/pgtest"
)

// Fault tests: the database freezes, stops or runs out of disk under the
// gateway, and every reply it gave must still be true. They run with the
// rest of tests/ and alone with `make faulttest`.

// failedAs extracts the queue id from "451 4.3.0 ... (id <id>)".
var failedAs = regexp.MustCompile(`\(id ([0-9a-f]+)\)`)

// stored reports whether the gateway's store has message id.
func (g *Gateway) stored(id string) bool {
	g.t.Helper()
	out, err := g.CLI("queue", "show", id, "--json")
	if err == nil {
		return strings.Contains(out, id)
	}
	if strings.Contains(err.Error(), "not found") || strings.Contains(err.Error(), "no message") {
		return false
	}
	g.t.Fatalf("queue show %s: %v", id, err)
	return false
}

// reply is what one message got: its id (from the 250 or the 451) and the
// reply code, 0 if the connection broke without a reply.
type reply struct {
	id   string
	code int
	text string
}

// sendRecord sends one message on c and records what it was answered.
func sendRecord(c *smtp.Client, to string) reply {
	id, err := sendOne(c, to)
	if err == nil {
		return reply{id: id, code: 250}
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		r := reply{code: se.Code, text: se.Error()}
		if m := failedAs.FindStringSubmatch(se.Message); m != nil {
			r.id = m[1]
		}
		return r
	}
	return reply{text: err.Error()}
}

// checkReplies asserts that every 250 is stored and every 451 is not;
// stored says whether a message id is.
func checkReplies(t *testing.T, stored func(id string) bool, rs []reply) (ok, failed int) {
	t.Helper()
	for _, r := range rs {
		switch {
		case r.code == 250:
			ok++
			if !stored(r.id) {
				t.Errorf("message %s was answered 250 but is not stored", r.id)
			}
		case r.code == 451 && r.id != "":
			failed++
			if stored(r.id) {
				t.Errorf("message %s was answered %q but IS stored: a client retrying it sends a duplicate", r.id, r.text)
			}
		case r.code/100 == 4:
			failed++ // refused before DATA: no message id, nothing stored
		case r.code == 0:
			// No reply: the only honest answer when the outcome is unknown.
		default:
			t.Errorf("unexpected reply %d %q", r.code, r.text)
		}
	}
	return ok, failed
}

// commitWaitsForStandby makes every COMMIT from now on wait for a
// synchronous standby that does not exist (synchronous_standby_names), as
// a primary does while its synchronous replica is away. Such a COMMIT has
// committed locally and stays committed when its wait is cancelled — and
// pgx cancels the statement of a connection it gives up on, as the
// gateway's batch deadline makes it. (A slow deferred trigger, used here
// before, could be cancelled while it still ran: a race with the cancel
// after the thaw, and an honest 451 the test could not tell from a bug.)
func commitWaitsForStandby(t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	for _, q := range []string{`ALTER SYSTEM SET synchronous_standby_names = 'nobody'`, `SELECT pg_reload_conf()`} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// Before the gateway stops (cleanups run last first): its later
	// writes wait too, until the setting is gone.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Error(err)
			return
		}
		defer func() { _ = conn.Close(context.Background()) }()
		for _, q := range []string{`ALTER SYSTEM RESET synchronous_standby_names`, `SELECT pg_reload_conf()`} {
			if _, err := conn.Exec(ctx, q); err != nil {
				t.Errorf("%s: %v", q, err)
			}
		}
	})
	// Every backend applies the reload before its next statement; wait
	// until a new session sees it.
	for {
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		var v string
		err = c.QueryRow(ctx, `SHOW synchronous_standby_names`).Scan(&v)
		_ = c.Close(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if v == "nobody" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFaultFrozenPostgresCommit freezes PostgreSQL (SIGSTOP) for
// 35 s while a message's COMMIT is in progress (waiting for a synchronous
// standby): longer than the 30 s batch deadline, so the gateway never gets
// the COMMIT's answer. The transaction committed, so the client must get
// 250 — not 451, which would make it send the message again.
func TestFaultFrozenPostgresCommit(t *testing.T) {
	t.Parallel()
	pg := pgtest.NewCluster(t)
	g := StartGateway(t, Options{Backend: "postgres", DatabaseURL: pg.URL, TOML: relayNowhere})
	logsOnFailure(t, g)
	key := g.CreateKey()
	commitWaitsForStandby(t, pg.URL)

	c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
		t.Fatal(err)
	}
	got := make(chan reply, 1)
	go func() { got <- sendRecord(c, "frozen@example.net") }()
	time.Sleep(time.Second) // the batch is now in its COMMIT, waiting for the standby
	pg.Freeze()
	time.Sleep(35 * time.Second)
	pg.Thaw()
	var r reply
	select {
	case r = <-got:
	case <-time.After(3 * time.Minute):
		t.Fatal("no reply 3 minutes after the database thawed")
	}
	if r.code != 250 {
		t.Fatalf("the COMMIT completed after the thaw, but the client got %d %q", r.code, r.text)
	}
	if !g.stored(r.id) {
		t.Fatalf("message %s answered 250 is not stored", r.id)
	}
	if !strings.Contains(g.Logs(), "commit answer lost, but the transaction committed") {
		t.Errorf("the gateway did not log how it learned the outcome")
	}
}

// TestFaultFrozenPostgresUnderLoad freezes PostgreSQL for 35 s while four
// sessions send: every 250 is stored and every 451 is not.
func TestFaultFrozenPostgresUnderLoad(t *testing.T) {
	t.Parallel()
	pg := pgtest.NewCluster(t)
	g := StartGateway(t, Options{Backend: "postgres", DatabaseURL: pg.URL, TOML: relayNowhere})
	logsOnFailure(t, g)
	key := g.CreateKey()

	var (
		mu      sync.Mutex
		replies []reply
		wg      sync.WaitGroup
	)
	stop := make(chan struct{})
	for i := range 4 {
		wg.Go(func() {
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
					_ = c.Close()
					continue // a 454 while the key store is frozen
				}
				for ; ; j++ {
					r := sendRecord(c, fmt.Sprintf("s%d-%d@example.net", i, j))
					mu.Lock()
					replies = append(replies, r)
					mu.Unlock()
					if r.code != 250 {
						break // a new session after a failure, as clients do
					}
					select {
					case <-stop:
						_ = c.Close()
						return
					default:
					}
				}
				_ = c.Close()
			}
		})
	}
	time.Sleep(2 * time.Second)
	pg.Freeze()
	time.Sleep(35 * time.Second)
	pg.Thaw()
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	ids := pgMessageIDs(t, pg.URL)
	ok, failed := checkReplies(t, func(id string) bool { return ids[id] }, replies)
	t.Logf("%d replies: %d accepted, %d refused", len(replies), ok, failed)
	if ok == 0 {
		t.Fatal("no message was accepted")
	}
}

// pgMessageIDs returns the ids of every message stored in the database at url.
func pgMessageIDs(t *testing.T, url string) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	rows, err := conn.Query(ctx, `SELECT id FROM messages`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// holdSink is an SMTP server that keeps every message's DATA reply until
// release is closed: the relay target of tests that need deliveries to end
// at a chosen moment.
type holdSink struct {
	release chan struct{}
	mu      sync.Mutex
	got     int
}

func (b *holdSink) NewSession(*smtp.Conn) (smtp.Session, error) { return &holdSession{b: b}, nil }

type holdSession struct{ b *holdSink }

func (s *holdSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *holdSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *holdSession) Reset()                               {}
func (s *holdSession) Logout() error                        { return nil }
func (s *holdSession) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	<-s.b.release
	s.b.mu.Lock()
	s.b.got++
	s.b.mu.Unlock()
	return nil
}

func (b *holdSink) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.got
}

// startHoldSink starts a holdSink on loopback.
func startHoldSink(t *testing.T) (*holdSink, string) {
	t.Helper()
	b := &holdSink{release: make(chan struct{})}
	srv := smtp.NewServer(b)
	srv.Domain = "target.test"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return b, l.Addr().String()
}

// readyz returns the status code of GET /readyz.
func readyz(t *testing.T, g *Gateway) int {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + g.HTTP + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// waitReadyz polls /readyz until it answers want, failing after timeout.
func waitReadyz(t *testing.T, g *Gateway, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := readyz(t, g)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz answered %d for %s, want %d", got, timeout, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestFaultFullDiskSQLite runs a SQLite gateway on a small tmpfs and fills it
// while acknowledged messages are being relayed:
//   - a message sent while the disk is full gets 451 and is not stored;
//   - /readyz answers 503 while writes fail, and 200 again once the disk
//     has room, without any mail to prove it;
//   - the outcomes of deliveries that ended while the disk was full are
//     saved within seconds of the disk recovering, not when their 15-minute
//     lease ends, and nothing is delivered twice.
func TestFaultFullDiskSQLite(t *testing.T) {
	t.Parallel()
	sink, sinkAddr := startHoldSink(t)
	dir := disktest.Small(t, 32<<20)
	g := StartGateway(t, Options{Backend: "sqlite", DataDir: dir, TOML: fmt.Sprintf(`
[relay]
mode = "smarthost"
smarthost = %q
smarthost_tls = "none"
lease = "15m"
command_timeout = "2m"
`, sinkAddr)})
	logsOnFailure(t, g)
	key := g.CreateKey()

	c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
		t.Fatal(err)
	}
	const n = 5
	for i := range n {
		if r := sendRecord(c, fmt.Sprintf("held%d@example.net", i)); r.code != 250 {
			t.Fatalf("before the disk filled: %d %q", r.code, r.text)
		}
	}
	if code := readyz(t, g); code != 200 {
		t.Fatalf("/readyz = %d before the disk filled", code)
	}
	// The relay is now waiting for the sink's replies. Fill the disk, then
	// let the deliveries end: their outcomes cannot be saved.
	time.Sleep(time.Second)
	filler, err := disktest.Fill(dir)
	if err != nil {
		t.Fatal(err)
	}
	close(sink.release)

	var refused []reply
	for i := range 3 {
		r := sendRecord(c, fmt.Sprintf("full%d@example.net", i))
		if r.code != 451 || r.id == "" {
			t.Fatalf("a message sent while the disk is full got %d %q, want 451 with its id", r.code, r.text)
		}
		refused = append(refused, r)
	}
	waitReadyz(t, g, http.StatusServiceUnavailable, 10*time.Second)
	// Longer than a few quick retries would last.
	time.Sleep(20 * time.Second)
	if code := readyz(t, g); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d while the disk is still full", code)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	waitReadyz(t, g, http.StatusOK, 10*time.Second)
	// The outcomes are saved soon after the disk recovered.
	for {
		if queueStats(t, g)["delivered"] == n {
			break
		}
		if time.Since(freed) > 20*time.Second {
			t.Fatalf("20s after the disk recovered, the outcomes of %d deliveries are still not saved: %v", n, queueStats(t, g))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("outcomes saved %s after the disk recovered", time.Since(freed).Round(100*time.Millisecond))
	checkReplies(t, g.stored, refused)
	if r := sendRecord(c, "after@example.net"); r.code != 250 {
		// The session may have been reset by the failures: a new one.
		c2, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c2.Close() }()
		if err := c2.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
			t.Fatal(err)
		}
		if r := sendRecord(c2, "after@example.net"); r.code != 250 {
			t.Fatalf("after the disk recovered: %d %q", r.code, r.text)
		}
	}
	time.Sleep(2 * time.Second)
	if got := sink.count(); got < n || got > n+1 {
		t.Errorf("the sink received %d messages, want %d (+1 sent after recovery): a duplicate delivery", got, n)
	}
}

// TestFaultStoppedPostgres stops PostgreSQL under a running gateway: /readyz
// answers 503 and messages get 451 and are not stored; once the server is
// back, /readyz answers 200 and mail is accepted again.
func TestFaultStoppedPostgres(t *testing.T) {
	t.Parallel()
	pg := pgtest.NewCluster(t)
	g := StartGateway(t, Options{Backend: "postgres", DatabaseURL: pg.URL, TOML: relayNowhere})
	logsOnFailure(t, g)
	key := g.CreateKey()
	c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
		t.Fatal(err)
	}
	if r := sendRecord(c, "before@example.net"); r.code != 250 {
		t.Fatalf("before the stop: %d %q", r.code, r.text)
	}
	waitReadyz(t, g, http.StatusOK, 5*time.Second)

	pg.Stop()
	waitReadyz(t, g, http.StatusServiceUnavailable, 10*time.Second)
	var refused []reply
	for i := range 2 {
		r := sendRecord(c, fmt.Sprintf("stopped%d@example.net", i))
		// 451 at MAIL (the sending limits cannot be read) or at the end
		// of DATA with the message's id, which must then not be stored.
		if r.code != 451 {
			t.Fatalf("a message sent while PostgreSQL is stopped got %d %q, want 451", r.code, r.text)
		}
		refused = append(refused, r)
	}

	pg.Start()
	waitReadyz(t, g, http.StatusOK, 30*time.Second)
	ids := pgMessageIDs(t, pg.URL)
	checkReplies(t, func(id string) bool { return ids[id] }, refused)
	if r := sendRecord(c, "after@example.net"); r.code != 250 {
		t.Fatalf("after PostgreSQL came back: %d %q", r.code, r.text)
	}
}
