package smtpd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// A message is held at most once while it is received and stored. Up to
// spoolMemMax bytes it lives in one heap buffer; beyond that it goes to an
// unlinked file in DataDir/spool, written as it arrives, and the store gets
// it as a read-only mapping of that file, so resident memory grows only by
// the pages the store's own copy touches. In both cases the data sits after
// spoolReserve free bytes, so that the rewritten header (X-MSYS-API removed,
// Received:, Message-ID:, Date: added) is written in place right before the
// body: the body is never copied to prepend a header.
//
// Every byte held counts against the server's in-flight budget
// (Config.MaxInflightBytes), reserved as it arrives and released when the
// message is stored or refused.

const (
	// spoolReserve is the room before the data for header growth: the
	// fields we add are well under it (trace names are truncated).
	spoolReserve = 8 << 10
	// spoolMemMax is how much of a message is kept in memory before the
	// message moves to a spool file.
	spoolMemMax = 1 << 20
	// spoolMemInitial is the first buffer of a message without SIZE=.
	spoolMemInitial = 32 << 10
	// budgetStep is the granularity of in-flight budget reservations.
	budgetStep = 64 << 10
)

// errNoBudget marks a message refused because the in-flight budget is used
// up (452 4.3.1); errSpool a spool file that could not be written (disk
// full), answered the same.
var (
	errNoBudget = errors.New("in-flight message budget used up")
	errSpool    = errors.New("spool file")
)

// budget is the server-wide count of message bytes in flight.
type budget struct {
	max   int64
	used  atomic.Int64
	gauge prometheus.Gauge
}

// reserve takes n bytes of the budget, or reports false if they do not fit.
func (b *budget) reserve(n int64) bool {
	for {
		u := b.used.Load()
		if u+n > b.max {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			b.gauge.Add(float64(n))
			return true
		}
	}
}

// release gives back n reserved bytes.
func (b *budget) release(n int64) {
	if n > 0 {
		b.used.Add(-n)
		b.gauge.Sub(float64(n))
	}
}

// exhausted reports whether not even one budget step is left.
func (b *budget) exhausted() bool {
	return b.used.Load()+budgetStep > b.max
}

// spool holds one message as it arrives. Not safe for concurrent use.
type spool struct {
	dir      string  // where spool files go
	budget   *budget // reserved counts against it
	reserved int64   // budget held by this message
	mem      []byte  // spoolReserve free bytes, then the data; nil once in f
	f        *os.File
	n        int64  // data bytes held
	mapped   []byte // mapping of f returned by message; unmapped by release
}

// newSpool starts a message holding reserved bytes of b already (a MAIL
// SIZE= reservation); sizeHint is SIZE= or 0.
func newSpool(dir string, b *budget, reserved, sizeHint int64) *spool {
	capacity := int64(spoolMemInitial)
	if sizeHint > 0 {
		// Room for a few bare line ends made CRLF.
		capacity = min(sizeHint+sizeHint/64+64, spoolMemMax)
	}
	return &spool{dir: dir, budget: b, reserved: reserved, mem: make([]byte, spoolReserve, spoolReserve+capacity)}
}

// Write appends message data, reserving budget for it first.
func (s *spool) Write(p []byte) (int, error) {
	if need := s.n + int64(len(p)) - s.reserved; need > 0 {
		step := (need + budgetStep - 1) / budgetStep * budgetStep
		if !s.budget.reserve(step) {
			return 0, errNoBudget
		}
		s.reserved += step
	}
	if s.f == nil && s.n+int64(len(p)) > spoolMemMax {
		if err := s.toFile(); err != nil {
			return 0, err
		}
	}
	if s.f != nil {
		if _, err := s.f.Write(p); err != nil {
			return 0, fmt.Errorf("%w: write: %w", errSpool, err)
		}
	} else {
		s.mem = append(s.mem, p...)
	}
	s.n += int64(len(p))
	return len(p), nil
}

// toFile moves the data held in memory to a new, already unlinked spool
// file, positioned for the next write.
func (s *spool) toFile() error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("%w: %w", errSpool, err)
	}
	f, err := os.CreateTemp(s.dir, "msg-*")
	if err != nil {
		return fmt.Errorf("%w: %w", errSpool, err)
	}
	// Unlinked at once: nothing is left behind by a crash.
	if err := os.Remove(f.Name()); err != nil {
		_ = f.Close()
		return fmt.Errorf("%w: %w", errSpool, err)
	}
	if _, err := f.WriteAt(s.mem[spoolReserve:], spoolReserve); err != nil {
		_ = f.Close()
		return fmt.Errorf("%w: write: %w", errSpool, err)
	}
	if _, err := f.Seek(spoolReserve+s.n, 0); err != nil {
		_ = f.Close()
		return fmt.Errorf("%w: seek: %w", errSpool, err)
	}
	s.f, s.mem = f, nil
	return nil
}

// head returns the first n data bytes (n <= what was written). In memory
// it is a view, from a file a copy.
func (s *spool) head(n int64) ([]byte, error) {
	if s.f == nil {
		return s.mem[spoolReserve : spoolReserve+n], nil
	}
	b := make([]byte, n)
	if _, err := s.f.ReadAt(b, spoolReserve); err != nil {
		return nil, fmt.Errorf("%w: read header: %w", errSpool, err)
	}
	return b, nil
}

// message returns the stored form of the message: header followed by the
// data after its first hdrLen bytes (the header as received), contiguous,
// without copying the body. It is valid until release.
func (s *spool) message(header []byte, hdrLen int64) ([]byte, error) {
	start := spoolReserve + hdrLen - int64(len(header))
	if start < 0 {
		return nil, fmt.Errorf("header grew by more than %d bytes", spoolReserve)
	}
	end := spoolReserve + s.n
	if s.f == nil {
		copy(s.mem[start:], header)
		return s.mem[start:end], nil
	}
	if _, err := s.f.WriteAt(header, start); err != nil {
		return nil, fmt.Errorf("%w: write header: %w", errSpool, err)
	}
	m, err := mapFile(s.f, start, end)
	if err != nil {
		return nil, fmt.Errorf("%w: map: %w", errSpool, err)
	}
	s.mapped = m.region
	return m.data, nil
}

// inMemory reports whether the message is held in heap memory (not in a
// file): release then only forgets it, and a body returned by message
// stays valid for whoever keeps it.
func (s *spool) inMemory() bool { return s.f == nil }

// release frees everything the message holds: memory, mapping, file and
// budget. Nothing returned by message may be used afterwards.
func (s *spool) release() {
	if s.mapped != nil {
		unmap(s.mapped)
		s.mapped = nil
	}
	if s.f != nil {
		_ = s.f.Close()
		s.f = nil
	}
	s.mem = nil
	s.budget.release(s.reserved)
	s.reserved = 0
}

// spoolDir is where a server's spool files go.
func spoolDir(dataDir string) string {
	if dataDir == "" {
		return filepath.Join(os.TempDir(), "smtpgw-spool")
	}
	return filepath.Join(dataDir, "spool")
}
