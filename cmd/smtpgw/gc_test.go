package main

import (
	"os"
	"runtime/debug"
	"testing"
)

// TestTuneGC: serve raises the collector's target to serveGCPercent, unless
// GOGC is set in the environment.
func TestTuneGC(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	saved, had := os.LookupEnv("GOGC")
	defer func() {
		if had {
			os.Setenv("GOGC", saved)
		} else {
			os.Unsetenv("GOGC")
		}
	}()

	os.Unsetenv("GOGC")
	tuneGC()
	if got := debug.SetGCPercent(100); got != serveGCPercent {
		t.Errorf("GOGC unset: GC percent %d, want %d", got, serveGCPercent)
	}
	os.Setenv("GOGC", "100")
	tuneGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC=100 set: GC percent %d, want it left at 100", got)
	}
}
