package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockDataDir takes an exclusive, non-blocking lock on data_dir/serve.lock
// for as long as the process runs (the kernel drops it when the process
// dies, even by SIGKILL). On SQLite only one `smtpgw serve` may use a data
// directory: it is the only relay there, so at start it may take back every
// lease a previous, crashed process held. Admin commands do not take it.
func lockDataDir(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir %s: %w (create it or set data_dir / SMTPGW_DATA_DIR)", dir, err)
	}
	path := filepath.Join(dir, "serve.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another smtpgw serve is already using data_dir %s (stop it, or give this one its own data_dir; several nodes share a PostgreSQL database, not a SQLite file)", dir)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { _ = f.Close() }, nil
}
