package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestHealth: a failed write makes check fail until a write (the probe or
// a real one) commits; a write refused for one item's sake changes nothing.
func TestHealth(t *testing.T) {
	ctx := context.Background()
	var h health
	probes := 0
	failing := func(context.Context) error { probes++; return errors.New("disk full") }
	working := func(context.Context) error { probes++; return nil }

	if err := h.check(ctx, failing); err != nil || probes != 0 {
		t.Fatalf("healthy store: check = %v after %d probes, want nil without probing", err, probes)
	}
	h.observe(fmt.Errorf("enqueue: %w", ErrExists))
	if err := h.check(ctx, failing); err != nil {
		t.Fatalf("a duplicate id made the store unready: %v", err)
	}
	h.observe(fmt.Errorf("write batch: %w: disk full", ErrUnavailable))
	if err := h.check(ctx, failing); err == nil || probes != 1 {
		t.Fatalf("after a failed write and a failed probe: check = %v, %d probes", err, probes)
	}
	// Within probeInterval the last result stands without a new probe.
	if err := h.check(ctx, working); err == nil || probes != 1 {
		t.Fatalf("second check within probeInterval: %v, %d probes", err, probes)
	}
	h.lastProbe = time.Now().Add(-probeInterval)
	if err := h.check(ctx, working); err != nil || probes != 2 {
		t.Fatalf("probe write committed, check = %v after %d probes", err, probes)
	}
	// A real commit also ends the failure.
	h.observe(fmt.Errorf("%w: unknown", ErrOutcomeUnknown))
	h.observe(nil)
	if err := h.check(ctx, failing); err != nil {
		t.Fatalf("after a committed write: %v", err)
	}
}
