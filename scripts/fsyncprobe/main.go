// Command fsyncprobe measures how long the disk under a directory takes to
// make a write durable: it appends a block to a file and fsyncs it, again
// and again, and prints the distribution of the fsync times. A durable
// server cannot answer faster than its disk syncs, and on a virtual disk
// the worst fsync (a stall of the host's storage) is what a p99 at a paced
// rate shows; see docs/benchmarks.md.
//
//	go run ./scripts/fsyncprobe -dir /tmp -duration 20s
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"
)

func main() {
	dir := flag.String("dir", os.TempDir(), "directory on the disk to measure")
	d := flag.Duration("duration", 20*time.Second, "how long to measure")
	size := flag.Int("size", 64<<10, "bytes written before each fsync")
	flag.Parse()
	if err := run(*dir, *d, *size); err != nil {
		fmt.Fprintln(os.Stderr, "fsyncprobe:", err)
		os.Exit(1)
	}
}

func run(dir string, d time.Duration, size int) error {
	times, err := probe(dir, d, size)
	if err != nil {
		return err
	}
	abs, _ := filepath.Abs(dir)
	fmt.Printf("fsyncprobe: dir=%s size=%d %s\n", abs, size, summary(times))
	return nil
}

// probe appends size bytes to a file in dir and fsyncs it for d, and
// returns how long each fsync took.
func probe(dir string, d time.Duration, size int) ([]time.Duration, error) {
	f, err := os.CreateTemp(dir, "fsyncprobe-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, size)
	var times []time.Duration
	for end := time.Now().Add(d); time.Now().Before(end); {
		if _, err := f.Write(buf); err != nil {
			return nil, err
		}
		t := time.Now()
		if err := f.Sync(); err != nil {
			return nil, err
		}
		times = append(times, time.Since(t))
		// Keep the file small: the disk, not the file's growth, is measured.
		if len(times)%256 == 0 {
			if err := f.Truncate(0); err != nil {
				return nil, err
			}
			if _, err := f.Seek(0, 0); err != nil {
				return nil, err
			}
		}
	}
	if len(times) == 0 {
		return nil, fmt.Errorf("no fsync completed in %s", d)
	}
	return times, nil
}

// summary describes fsync times: their count, quantiles, the slowest, and
// how many took over 25 ms and over 100 ms.
func summary(times []time.Duration) string {
	times = slices.Sorted(slices.Values(times))
	at := func(q float64) time.Duration { return times[min(len(times)-1, int(q*float64(len(times))))] }
	over := func(l time.Duration) int {
		return len(times) - sort.Search(len(times), func(i int) bool { return times[i] > l })
	}
	r := func(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
	return fmt.Sprintf("fsyncs=%d p50=%s p99=%s p999=%s max=%s over_25ms=%d over_100ms=%d",
		len(times), r(at(0.50)), r(at(0.99)), r(at(0.999)), r(times[len(times)-1]),
		over(25*time.Millisecond), over(100*time.Millisecond))
}
