package main

import (
	"slices"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/config"
)

// TestRestartNeeded: a reload names the changed settings that apply only
// after a restart, and none that it applied (relay.Reload takes
// in_flow_delay and disable_chunking with the other relay settings).
func TestRestartNeeded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		change func(*config.Config)
		want   []string
	}{
		{"nothing", func(*config.Config) {}, nil},
		{"relay.mode", func(c *config.Config) { c.Relay.Mode = config.ModeSmarthost }, nil},
		{"relay.in_flow_delay", func(c *config.Config) { c.Relay.InFlowDelay = config.Duration{Duration: 2 * time.Second} }, nil},
		{"relay.disable_chunking", func(c *config.Config) { c.Relay.DisableChunking = true }, nil},
		{"relay.workers", func(c *config.Config) { c.Relay.Workers = 7 }, []string{"relay.workers"}},
		{"two", func(c *config.Config) { c.Relay.Workers, c.Relay.Lease.Duration = 7, time.Hour },
			[]string{"relay.workers", "relay.lease"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := config.Default()
			next := config.Default()
			tc.change(next)
			if got := restartNeeded(old, next); !slices.Equal(got, tc.want) {
				t.Errorf("restartNeeded: %q, want %q", got, tc.want)
			}
		})
	}
}
