//go:build !unix

package smtpd

import "os"

// mapping holds a file's bytes; without mmap they are read into memory.
type mapping struct{ region, data []byte }

func mapFile(f *os.File, start, end int64) (mapping, error) {
	b := make([]byte, end-start)
	if _, err := f.ReadAt(b, start); err != nil {
		return mapping{}, err
	}
	return mapping{region: b, data: b}, nil
}

func unmap([]byte) {}
