//go:build unix

package smtpd

import (
	"os"
	"syscall"
)

// mapping is a read-only view of part of a file: region is what was
// mapped (from a page boundary), data the part asked for.
type mapping struct{ region, data []byte }

// mapFile maps bytes [start, end) of f read-only. Pages are read from the
// page cache as they are touched, so the mapping costs resident memory only
// for what the reader copies.
func mapFile(f *os.File, start, end int64) (mapping, error) {
	page := int64(os.Getpagesize())
	off := start / page * page
	region, err := syscall.Mmap(int(f.Fd()), off, int(end-off), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return mapping{}, err
	}
	return mapping{region: region, data: region[start-off:]}, nil
}

func unmap(region []byte) {
	_ = syscall.Munmap(region)
}
