// Package walbuf registers a SQLite VFS that is the platform's default VFS
// but for one thing: the frames a transaction appends to a write-ahead log
// reach the file in a few large writes, not two per page.
//
// SQLite writes a WAL frame as two calls, its 24-byte header and then its
// page, so a commit of n pages costs 2n write system calls. Under this VFS
// the writes a WAL file receives are gathered while each continues the last,
// and handed to the default VFS, in calls of at most maxWrite bytes, when:
//   - the page of a commit frame (one whose header gives a database size)
//     has been added: the commit's frames are in the file before SQLite
//     goes on to sync it or to publish the commit in the WAL index, exactly
//     as without the buffer, synced or not;
//   - a write does not continue the gathered ones (it is written after
//     them, in order), or they reach maxBuffer;
//   - anything else is asked of the file: a read, a sync, its size, a
//     truncation, a file control, its close.
//
// After a commit frame, until the next append, writes go straight to the
// file: that is where SQLite rewrites the checksums of frames it wrote
// earlier in the same transaction, after the commit frame and, when the
// transaction does not sync, with nothing after them to flush them.
//
// A write that fails is reported by the call that made it, and what it did
// not write stays gathered, to be written before anything else reaches the
// file (SQLite ignores what some calls return). But when the write of a
// commit fails, the commit fails and SQLite rolls the transaction back: its
// gathered frames are dropped, since written later, commit frame and all,
// recovery would take them for a commit.
//
// So what is in the file, and when, is what the default VFS would have put
// there at every point where SQLite or another connection can look: before
// a sync, before a read, before the commit is visible to readers. A process
// killed while frames are gathered loses frames of a transaction that had
// not committed, which SQLite's recovery ignores. Every other file (the
// database, its shared memory, journals) is the default VFS's own.
package walbuf

import (
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"unsafe"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"
)

// Name is the VFS's name, for the "vfs" parameter of a database name.
const Name = "smtpgw-walbuf"

const (
	frameHeader = 24      // bytes in a WAL frame's header
	maxBuffer   = 1 << 20 // gathered bytes that are written at once
	// maxWrite is the most the default VFS writes in one call: it takes
	// the length of a write modulo 128 KiB (seekAndWriteFd in os_unix.c).
	maxWrite = 120 << 10
)

var (
	once   sync.Once
	regErr error

	base        uintptr // the default VFS
	baseSize    uintptr // its file struct, rounded up to a pointer
	baseMethods uintptr // the io methods of its WAL files
	vfs         sqlite3.Tsqlite3_vfs
	methods     sqlite3.Tsqlite3_io_methods

	mu      sync.Mutex // guards baseMethods and methods as the first WAL file sets them
	files   sync.Map   // handle -> *walFile
	handles atomic.Uintptr

	// What WAL files were asked to write, and what they did write: calls.
	asked, wrote atomic.Int64
)

// Register registers the VFS (once; later calls return the first result).
func Register() error {
	once.Do(func() { regErr = register() })
	return regErr
}

func register() error {
	tls := libc.NewTLS()
	defer tls.Close()
	base = sqlite3.Xsqlite3_vfs_find(tls, 0)
	if base == 0 {
		return errors.New("walbuf: SQLite has no default VFS")
	}
	b := (*sqlite3.Tsqlite3_vfs)(ptr(base))
	vfs = *b
	vfs.FpNext = 0
	baseSize = (uintptr(b.FszOsFile) + 7) &^ 7
	vfs.FszOsFile = int32(baseSize + unsafe.Sizeof(ext{}))
	name, err := libc.CString(Name) // never freed: SQLite keeps the VFS
	if err != nil {
		return err
	}
	vfs.FzName = name
	vfs.FxOpen = fp(xOpen)
	if rc := sqlite3.Xsqlite3_vfs_register(tls, uintptr(unsafe.Pointer(&vfs)), 0); rc != sqlite3.SQLITE_OK {
		return errors.New("walbuf: register the VFS: " + libc.GoString(sqlite3.Xsqlite3_errstr(tls, rc)))
	}
	return nil
}

// ext follows the default VFS's file struct in each file this VFS opens.
type ext struct {
	methods uintptr // the default VFS's io methods for the file, when wrapped
	handle  uintptr // key of the file's walFile in files
}

// walFile is the gathered writes of one open WAL file.
type walFile struct {
	buf         []byte
	off         int64 // file offset of buf[0]
	commitNext  bool  // the last write was a commit frame's header
	afterCommit bool  // a commit frame was written; nothing appended since
	commitEnd   int64 // end of that commit frame
}

// fp is a Go function as a C function pointer of modernc's SQLite.
func fp(f any) uintptr {
	type iface [2]uintptr
	return (*iface)(unsafe.Pointer(&f))[1]
}

// cfunc is the C function pointer p of modernc's SQLite as a Go function
// of type F (its C signature).
func cfunc[F any](p uintptr) F { return *(*F)(unsafe.Pointer(&p)) }

// ptr turns an address SQLite gave us into a pointer.
func ptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

func extOf(pFile uintptr) *ext { return (*ext)(unsafe.Add(ptr(pFile), baseSize)) }

func fileOf(pFile uintptr) *walFile {
	w, _ := files.Load(extOf(pFile).handle)
	return w.(*walFile)
}

func baseIO(pFile uintptr) *sqlite3.Tsqlite3_io_methods {
	return (*sqlite3.Tsqlite3_io_methods)(ptr(extOf(pFile).methods))
}

func xOpen(tls *libc.TLS, pVfs, zName, pFile uintptr, flags int32, pOutFlags uintptr) int32 {
	open := cfunc[func(*libc.TLS, uintptr, uintptr, uintptr, int32, uintptr) int32]((*sqlite3.Tsqlite3_vfs)(ptr(base)).FxOpen)
	*extOf(pFile) = ext{}
	rc := open(tls, base, zName, pFile, flags, pOutFlags)
	if rc != sqlite3.SQLITE_OK || flags&sqlite3.SQLITE_OPEN_WAL == 0 {
		return rc
	}
	f := (*sqlite3.Tsqlite3_file)(ptr(pFile))
	if f.FpMethods == 0 || !wrap(f.FpMethods) {
		return rc
	}
	h := handles.Add(1)
	files.Store(h, &walFile{})
	*extOf(pFile) = ext{methods: f.FpMethods, handle: h}
	f.FpMethods = uintptr(unsafe.Pointer(&methods))
	return rc
}

// wrap reports whether WAL files with io methods m are wrapped: those of
// the first WAL file opened are (the default VFS gives every file of a
// kind the same), others are left alone.
func wrap(m uintptr) bool {
	mu.Lock()
	defer mu.Unlock()
	if baseMethods == 0 {
		baseMethods = m
		methods = *(*sqlite3.Tsqlite3_io_methods)(ptr(m))
		methods.FxClose = fp(xClose)
		methods.FxRead = fp(xRead)
		methods.FxWrite = fp(xWrite)
		methods.FxTruncate = fp(xTruncate)
		methods.FxSync = fp(xSync)
		methods.FxFileSize = fp(xFileSize)
		methods.FxFileControl = fp(xFileControl)
	}
	return m == baseMethods
}

// flush writes what is gathered, in calls of at most maxWrite bytes. What a
// failed call did not write stays gathered, to be written first by the
// next call on the file: a failure is reported by the call that met it,
// and nothing gathered is dropped (SQLite ignores what some calls return,
// file controls among them).
func flush(tls *libc.TLS, pFile uintptr, w *walFile) int32 {
	done := 0
	for done < len(w.buf) {
		n := min(len(w.buf)-done, maxWrite)
		if rc := write(tls, pFile, unsafe.Pointer(&w.buf[done]), int32(n), w.off+int64(done)); rc != sqlite3.SQLITE_OK {
			w.buf = w.buf[:copy(w.buf, w.buf[done:])]
			w.off += int64(done)
			return rc
		}
		done += n
	}
	w.buf = w.buf[:0]
	return sqlite3.SQLITE_OK
}

func write(tls *libc.TLS, pFile uintptr, p unsafe.Pointer, n int32, off int64) int32 {
	wrote.Add(1)
	f := cfunc[func(*libc.TLS, uintptr, uintptr, int32, int64) int32](baseIO(pFile).FxWrite)
	return f(tls, pFile, uintptr(p), n, off)
}

func xWrite(tls *libc.TLS, pFile, zBuf uintptr, iAmt int32, iOfst int64) int32 {
	asked.Add(1)
	w := fileOf(pFile)
	if w.afterCommit && iOfst > 0 && iOfst < w.commitEnd {
		// A rewrite of a frame of the transaction just committed.
		if rc := flush(tls, pFile, w); rc != sqlite3.SQLITE_OK {
			return rc
		}
		return write(tls, pFile, ptr(zBuf), iAmt, iOfst)
	}
	w.afterCommit = false
	if len(w.buf) > 0 && iOfst != w.off+int64(len(w.buf)) {
		if rc := flush(tls, pFile, w); rc != sqlite3.SQLITE_OK {
			return rc
		}
	}
	if len(w.buf) == 0 {
		w.off = iOfst
	}
	src := unsafe.Slice((*byte)(ptr(zBuf)), iAmt)
	w.buf = append(w.buf, src...)
	commit := w.commitNext
	w.commitNext = iAmt == frameHeader && binary.BigEndian.Uint32(src[4:8]) != 0
	if commit {
		if rc := flush(tls, pFile, w); rc != sqlite3.SQLITE_OK {
			// The commit fails and SQLite rolls the transaction back:
			// its frames, commit frame included, must never reach the
			// file, where recovery would take them for a commit.
			w.buf = w.buf[:0]
			return rc
		}
		w.afterCommit, w.commitEnd = true, iOfst+int64(iAmt)
		return sqlite3.SQLITE_OK
	}
	if len(w.buf) >= maxBuffer {
		return flush(tls, pFile, w)
	}
	return sqlite3.SQLITE_OK
}

// xClose writes what is gathered and closes the file. Only frames of a
// transaction that did not commit can still be gathered here (a commit
// writes its own), so a failure loses nothing recovery would keep.
func xClose(tls *libc.TLS, pFile uintptr) int32 {
	e := *extOf(pFile)
	w := fileOf(pFile)
	rc := flush(tls, pFile, w)
	f := cfunc[func(*libc.TLS, uintptr) int32](baseIO(pFile).FxClose)
	if crc := f(tls, pFile); rc == sqlite3.SQLITE_OK {
		rc = crc
	}
	files.Delete(e.handle)
	return rc
}

func xRead(tls *libc.TLS, pFile, zBuf uintptr, iAmt int32, iOfst int64) int32 {
	if rc := flush(tls, pFile, fileOf(pFile)); rc != sqlite3.SQLITE_OK {
		return rc
	}
	return cfunc[func(*libc.TLS, uintptr, uintptr, int32, int64) int32](baseIO(pFile).FxRead)(tls, pFile, zBuf, iAmt, iOfst)
}

func xTruncate(tls *libc.TLS, pFile uintptr, size int64) int32 {
	w := fileOf(pFile)
	if rc := flush(tls, pFile, w); rc != sqlite3.SQLITE_OK {
		return rc
	}
	w.afterCommit = false
	return cfunc[func(*libc.TLS, uintptr, int64) int32](baseIO(pFile).FxTruncate)(tls, pFile, size)
}

func xSync(tls *libc.TLS, pFile uintptr, flags int32) int32 {
	if rc := flush(tls, pFile, fileOf(pFile)); rc != sqlite3.SQLITE_OK {
		return rc
	}
	return cfunc[func(*libc.TLS, uintptr, int32) int32](baseIO(pFile).FxSync)(tls, pFile, flags)
}

func xFileSize(tls *libc.TLS, pFile, pSize uintptr) int32 {
	if rc := flush(tls, pFile, fileOf(pFile)); rc != sqlite3.SQLITE_OK {
		return rc
	}
	return cfunc[func(*libc.TLS, uintptr, uintptr) int32](baseIO(pFile).FxFileSize)(tls, pFile, pSize)
}

func xFileControl(tls *libc.TLS, pFile uintptr, op int32, pArg uintptr) int32 {
	if rc := flush(tls, pFile, fileOf(pFile)); rc != sqlite3.SQLITE_OK {
		return rc
	}
	return cfunc[func(*libc.TLS, uintptr, int32, uintptr) int32](baseIO(pFile).FxFileControl)(tls, pFile, op, pArg)
}
