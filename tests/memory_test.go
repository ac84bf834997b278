package tests

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// procStatusKB reads a "VmRSS"/"VmHWM" field of /proc/PID/status, in KiB.
func procStatusKB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/status (the memory test needs Linux): %v", pid, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("parse %s %q: %v", field, v, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// bigMessage is a message of about size bytes in 76-character lines.
func bigMessage(subject string, size int) []byte {
	var b bytes.Buffer
	b.Grow(size + 200)
	fmt.Fprintf(&b, "From: app@example.com\r\nTo: rcpt@example.net\r\nSubject: %s\r\n\r\n", subject)
	line := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/", 2)[:76] + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()
}

// sendBig sends one message on its own STARTTLS+AUTH session.
func sendBig(g *Gateway, key, rcpt string, msg []byte) error {
	c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	if err := c.SendMail("app@example.com", []string{rcpt}, bytes.NewReader(msg)); err != nil {
		return fmt.Errorf("send to %s: %w", rcpt, err)
	}
	return c.Quit()
}

// TestConcurrentLargeMessagesMemory is issue 8's memory promise: a message
// is held at most once in memory, so 8 concurrent 19 MB messages raise the
// gateway's peak RSS (VmHWM) by at most 1.3 times the bytes in flight.
func TestConcurrentLargeMessagesMemory(t *testing.T) {
	const (
		n    = 8
		size = 19 << 20
	)
	// The relay on hold (the default): what is measured is the SMTP side
	// and the store, not the relay's deliveries, whose bodies are bounded
	// by relay.workers.
	g := StartGateway(t, Options{Backend: "sqlite", TOML: "[relay]\nmode = \"hold\"\n"})
	logsOnFailure(t, g)
	key := g.CreateKey()
	pid := g.cmd.Process.Pid

	// Warm up: one small message, so that lazily set-up parts (TLS, the
	// store's statements, the committer) are in the baseline.
	if err := sendBig(g, key, "warm@example.net", bigMessage("warm", 64<<10)); err != nil {
		t.Fatal(err)
	}
	before := procStatusKB(t, pid, "VmRSS")

	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = bigMessage(fmt.Sprintf("big %d", i), size)
	}
	var inflight int64
	for _, m := range msgs {
		inflight += int64(len(m))
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, m := range msgs {
		wg.Go(func() {
			if err := sendBig(g, key, fmt.Sprintf("big%d@example.net", i), m); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	peak := procStatusKB(t, pid, "VmHWM")

	rise := (peak - before) << 10
	t.Logf("RSS before %d MiB, peak %d MiB: rise %.1f MiB for %.1f MiB in flight (%.2fx)",
		before>>10, peak>>10, float64(rise)/(1<<20), float64(inflight)/(1<<20), float64(rise)/float64(inflight))
	if limit := inflight * 13 / 10; rise > limit {
		t.Errorf("peak RSS rose by %d bytes for %d bytes in flight: more than 1.3x (%d)", rise, inflight, limit)
	}
}
