package main

import (
	"testing"
	"time"
)

// TestSummary: quantiles, the slowest and the counts over 25 and 100 ms of
// a known set of fsync times, given in no order.
func TestSummary(t *testing.T) {
	var times []time.Duration
	for i := range 1000 {
		times = append(times, time.Duration(1000-i)*time.Microsecond) // 1 ms down to 1 µs
	}
	times = append(times, 30*time.Millisecond, 600*time.Millisecond)
	got := summary(times)
	want := "fsyncs=1002 p50=502µs p99=992µs p999=30ms max=600ms over_25ms=2 over_100ms=1"
	if got != want {
		t.Errorf("summary:\n got %s\nwant %s", got, want)
	}
}

// TestProbe: a short probe of a real directory times some fsyncs, and a
// directory that does not exist is an error.
func TestProbe(t *testing.T) {
	times, err := probe(t.TempDir(), 50*time.Millisecond, 4096)
	if err != nil || len(times) == 0 {
		t.Fatalf("probe: %d fsyncs, %v; want some", len(times), err)
	}
	for _, d := range times {
		if d <= 0 {
			t.Fatalf("an fsync took %s", d)
		}
	}
	if _, err := probe(t.TempDir()+"/missing", time.Millisecond, 4096); err == nil {
		t.Error("probe of a missing directory: no error")
	}
}
