package tests

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestBenchCommand runs `smtpgw bench` against a running gateway, as the
// benchmarks in docs/benchmarks.md do, and checks that every message it
// reports as sent is in the queue.
func TestBenchCommand(t *testing.T) {
	t.Parallel()
	g := StartGateway(t, Options{Backend: "sqlite", TOML: relayTOML("127.0.0.1:1")})
	key := g.CreateKey()
	// The key goes in a file, not on the command line where ps shows it.
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := g.MustCLI("bench", "--addr", g.Submission, "--key-file", keyFile, "--conns", "4", "--messages", "40",
		"--size", "2048", "--insecure-skip-verify")
	m := regexp.MustCompile(`sent=(\d+) failed=(\d+) .*msgs_per_s=(\d+)`).FindStringSubmatch(out)
	if m == nil || m[1] != "40" || m[2] != "0" {
		t.Fatalf("bench output: %s", out)
	}
	stats := queueStats(t, g)
	var total int64
	for _, n := range stats {
		total += n
	}
	if total != 40 {
		t.Fatalf("queue holds %d recipients after bench sent 40: %v", total, stats)
	}
}

// TestHTTPAPI drives the SparkPost-shaped API of a running gateway: a key
// with api_keys/manage lists keys and creates one, whose key is returned
// once and then works for SMTP AUTH; the key itself never shows in a list.
func TestHTTPAPI(t *testing.T) {
	t.Parallel()
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			g := StartGateway(t, Options{Backend: backend})
			admin := g.CreateKey("--grant", "api_keys/manage")
			base := "http://" + g.HTTP + "/api/v1/api-keys"

			req, _ := http.NewRequest("POST", base, strings.NewReader(`{"label":"from-api","grants":["smtp/inject"]}`))
			req.Header.Set("Authorization", admin)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var created struct {
				Results struct {
					ID, Key string
				} `json:"results"`
			}
			err = json.NewDecoder(resp.Body).Decode(&created)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || len(created.Results.Key) != 40 {
				t.Fatalf("POST api-keys: %d %v %+v", resp.StatusCode, err, created)
			}

			req, _ = http.NewRequest("GET", base, nil)
			req.Header.Set("Authorization", admin)
			resp, err = http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var listed struct {
				Results []map[string]any `json:"results"`
			}
			err = json.NewDecoder(resp.Body).Decode(&listed)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || len(listed.Results) != 2 {
				t.Fatalf("GET api-keys: %d %v %v", resp.StatusCode, err, listed)
			}
			for _, k := range listed.Results {
				if _, ok := k["key"]; ok {
					t.Fatalf("a listed key carries its key: %v", k)
				}
			}

			req, _ = http.NewRequest("GET", base, nil)
			req.Header.Set("Authorization", created.Results.Key) // smtp/inject only
			resp, err = http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("GET api-keys with an smtp/inject key: %d, want 403", resp.StatusCode)
			}
			if strings.Contains(g.Logs(), created.Results.Key) || strings.Contains(g.Logs(), admin) {
				t.Fatal("a key appears in the gateway's log")
			}
		})
	}
}
