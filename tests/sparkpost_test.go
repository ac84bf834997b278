package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// The end-to-end tests with SparkPost's official Node client (the
// `sparkpost` npm package, pinned in tests/sparkpost/package.json) run
// node scripts against a real gateway: tests/sparkpost/run.js CASE runs
// tests/sparkpost/cases/CASE.js with the client pointed at the gateway's
// HTTP listener (origin http://127.0.0.1:PORT) and prints one JSON line.

// sparkpostDir holds package.json, run.js and cases/.
const sparkpostDir = "sparkpost"

var (
	nodeOnce sync.Once
	nodeErr  error
)

// needNodeClient fails the test unless node, npm and the installed client
// are there. It runs `npm ci` once when node_modules is missing (.ci/run
// installs it beforehand).
func needNodeClient(t testing.TB) {
	t.Helper()
	nodeOnce.Do(func() {
		for _, tool := range []string{"node", "npm"} {
			if _, err := exec.LookPath(tool); err != nil {
				nodeErr = fmt.Errorf("%s not found (%v): install Node.js and npm (apt-get install -y nodejs npm; .ci/run does)", tool, err)
				return
			}
		}
		if _, err := os.Stat(filepath.Join(sparkpostDir, "node_modules", "sparkpost", "package.json")); err == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = sparkpostDir
		if out, err := cmd.CombinedOutput(); err != nil {
			nodeErr = fmt.Errorf("npm ci in tests/sparkpost: %v\n%s\nrun it by hand (it needs the npm registry)", err, out)
		}
	})
	if nodeErr != nil {
		t.Fatal(nodeErr)
	}
}

// spResult is what run.js prints.
type spResult struct {
	OK      bool            `json:"ok"`
	Result  json.RawMessage `json:"result"`
	Status  int             `json:"status"`
	Errors  json.RawMessage `json:"errors"`
	Message string          `json:"message"`
}

// SparkPost runs case name with args (JSON-encoded) as the client of key.
// It returns what the script printed; a request the gateway refused is
// OK == false with its status and errors, not an error.
func (g *Gateway) SparkPost(key, name string, args any) (spResult, error) {
	g.t.Helper()
	needNodeClient(g.t)
	a, err := json.Marshal(args)
	if err != nil {
		return spResult{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "run.js", name, string(a))
	cmd.Dir = sparkpostDir
	cmd.Env = append(os.Environ(), "SMTPGW_ORIGIN=http://"+g.HTTP, "SMTPGW_KEY="+key)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	runErr := cmd.Run()
	var res spResult
	line := strings.TrimSpace(out.String())
	if i := strings.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:]
	}
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		return res, fmt.Errorf("node run.js %s: %v (%v)\nstdout: %s\nstderr: %s", name, runErr, err, out.String(), errb.String())
	}
	return res, nil
}

// MustSparkPost runs a case that must succeed and decodes its result into out.
func (g *Gateway) MustSparkPost(key, name string, args, out any) {
	g.t.Helper()
	res, err := g.SparkPost(key, name, args)
	if err != nil {
		g.t.Fatal(err)
	}
	if !res.OK {
		g.t.Fatalf("sparkpost case %s %v: %d %s %s", name, args, res.Status, res.Message, res.Errors)
	}
	if out != nil {
		if err := json.Unmarshal(res.Result, out); err != nil {
			g.t.Fatalf("sparkpost case %s: result %s: %v", name, res.Result, err)
		}
	}
}

// sendMsys injects one message to rcpt with an X-MSYS-API campaign id and
// returns its queue id.
func sendMsys(t testing.TB, g *Gateway, key, rcpt, campaign, subject string) string {
	t.Helper()
	c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
		t.Fatalf("auth: %v", err)
	}
	if err := c.Mail("app@example.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("From: News <news@example.com>\r\nTo: %s\r\nSubject: %s\r\nX-MSYS-API: {\"campaign_id\": %q}\r\n\r\nhello\r\n",
		rcpt, subject, campaign)
	if _, err := w.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatalf("end of DATA: %v", err)
	}
	id := resp.StatusText[strings.LastIndexByte(resp.StatusText, ' ')+1:]
	return id
}

// spPage is one page as cases/events.js reports it.
type spPage struct {
	TotalCount int64 `json:"total_count"`
	Events     []struct {
		Type       string `json:"type"`
		EventID    string `json:"event_id"`
		Recipient  string `json:"rcpt_to"`
		CampaignID string `json:"campaign_id"`
		MessageID  string `json:"message_id"`
		Subject    string `json:"subject"`
	} `json:"events"`
	Next *string `json:"next"`
}

// TestSparkPostClientEvents: events.searchMessage of SparkPost's Node
// client filters by recipients and campaign_ids and pages with the cursor
// of links.next, on both stores; messageEvents.search reads the old path.
func TestSparkPostClientEvents(t *testing.T) {
	t.Parallel()
	needNodeClient(t)
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			g := StartGateway(t, Options{Backend: backend, TOML: "\n[relay]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.1:9\"\nsmarthost_tls = \"none\"\n"})
			logsOnFailure(t, g)
			key := g.CreateKey("--grant", "smtp/inject", "--grant", "message_events/view")
			var spring []string
			for i := range 7 {
				spring = append(spring, sendMsys(t, g, key, fmt.Sprintf("r%d@example.net", i), "spring", fmt.Sprintf("spring %d", i)))
			}
			sendMsys(t, g, key, "r0@example.net", "fall", "fall 0")
			sendMsys(t, g, key, "other@example.net", "fall", "fall 1")

			var pages []spPage
			g.MustSparkPost(key, "events", map[string]any{"params": map[string]any{
				"events": []string{"injection"}, "campaign_ids": []string{"spring"}, "per_page": 3}}, &pages)
			if len(pages) != 3 {
				t.Fatalf("campaign spring, 3 per page: %d pages, want 3: %+v", len(pages), pages)
			}
			seen := map[string]int{}
			for i, p := range pages {
				if p.TotalCount != 7 {
					t.Errorf("page %d: total_count %d, want 7", i, p.TotalCount)
				}
				if (p.Next == nil) != (i == 2) {
					t.Errorf("page %d: links.next %v", i, p.Next)
				}
				for _, e := range p.Events {
					seen[e.MessageID]++
					if e.CampaignID != "spring" || e.Type != "injection" || !strings.HasPrefix(e.Subject, "spring ") {
						t.Errorf("page %d: %+v", i, e)
					}
				}
			}
			for _, id := range spring {
				if seen[id] != 1 {
					t.Errorf("message %s seen %d times over the pages, want 1", id, seen[id])
				}
			}

			g.MustSparkPost(key, "events", map[string]any{"params": map[string]any{
				"events": "injection", "recipients": []string{"r0@example.net"}}}, &pages)
			if len(pages) != 1 || pages[0].TotalCount != 2 || len(pages[0].Events) != 2 ||
				pages[0].Events[0].Subject != "fall 0" || pages[0].Events[1].Subject != "spring 0" {
				t.Errorf("recipients=r0: %+v, want fall 0 then spring 0", pages)
			}
			g.MustSparkPost(key, "events", map[string]any{"params": map[string]any{
				"events": "injection", "recipients": "r0@example.net,other@example.net", "campaign_ids": "fall"}}, &pages)
			if len(pages) != 1 || pages[0].TotalCount != 2 {
				t.Errorf("recipients r0,other and campaign fall: %+v, want 2 events", pages)
			}

			var old struct {
				TotalCount int64    `json:"total_count"`
				Types      []string `json:"types"`
			}
			g.MustSparkPost(key, "message_events", map[string]any{"params": map[string]any{"events": "injection"}}, &old)
			if old.TotalCount != 9 || len(old.Types) != 9 {
				t.Errorf("messageEvents.search: %+v, want 9 injections", old)
			}

			// A filter smtpgw cannot apply is refused, with SparkPost's error shape.
			res, err := g.SparkPost(key, "events", map[string]any{"params": map[string]any{"bounce_classes": "10"}})
			if err != nil {
				t.Fatal(err)
			}
			if res.OK || res.Status != 400 || !strings.Contains(string(res.Errors), "bounce_classes") {
				t.Errorf("bounce_classes: %+v, want a 400 naming the parameter", res)
			}
		})
	}
}
