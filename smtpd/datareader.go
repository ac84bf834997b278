package smtpd

import (
	"bufio"
	"bytes"
	"io"
	"reflect"
	"sync/atomic"
	"unsafe"

	"github.com/emersion/go-smtp"
)

// A faster DATA reader, a workaround for go-smtp's.
//
// go-smtp (data.go, v0.25.1) undoes DATA's dot-stuffing and finds the
// <CRLF>.<CRLF> end with a state machine that takes every byte of a
// message through its own bufio.Reader.ReadByte call: a fifth of the
// gateway's CPU with 10 KiB messages (docs/benchmarks.md). A bulk rewrite
// is proposed upstream (emersion/go-smtp#312) and not released; we do
// not fork the library. fastDataReader runs the same state machine over
// the bytes that bufio.Reader already holds, copying runs of line content
// with one copy, and keeps its state in go-smtp's own reader: go-smtp sees
// exactly what its reader would have left (the end found, the size limit
// used up), and so does every byte after the end (the next pipelined
// command). It reaches go-smtp's unexported fields through unsafe, so it
// is used only when the reader's type has exactly the fields it was
// written for (checked by reflection, then cached); any other go-smtp
// reads as before. TestFastDataLayout fails if an upgrade loses the fast
// path, and TestFastDataGoSMTPVersion if go-smtp changes at all: its
// reader may keep its fields and change what it does.

// dataReaderLayout describes go-smtp's dataReader, as far as we use it:
// its type and the offsets of its fields, found by name and type.
type dataReaderLayout struct {
	typ      reflect.Type // *smtp.dataReader
	offR     uintptr      // r *bufio.Reader
	offState uintptr      // state int
	offLim   uintptr      // limited bool
	offN     uintptr      // n int64
}

// dataLayout caches the layout learnt from go-smtp's DATA reader.
var dataLayout atomic.Pointer[dataReaderLayout]

// The states of go-smtp's machine, in its order (data.go).
const (
	dsBeginLine = iota // beginning of line; initial state
	dsDot              // read . at beginning of line
	dsDotCR            // read .\r at beginning of line
	dsCR               // read \r (possibly at end of line)
	dsData             // reading data in middle of line
	dsEOF              // reached .\r\n end marker line
)

// learnDataLayout checks t against the dataReader of go-smtp v0.25.1:
//
//	type dataReader struct {
//		r       *bufio.Reader
//		state   int
//		limited bool
//		n       int64
//	}
func learnDataLayout(t reflect.Type) *dataReaderLayout {
	if t.Kind() != reflect.Pointer {
		return nil
	}
	st := t.Elem()
	if st.Kind() != reflect.Struct || st.Name() != "dataReader" ||
		st.PkgPath() != reflect.TypeOf(smtp.SMTPError{}).PkgPath() || st.NumField() != 4 {
		return nil
	}
	want := []struct {
		name string
		typ  reflect.Type
	}{
		{"r", reflect.TypeOf((*bufio.Reader)(nil))},
		{"state", reflect.TypeOf(0)},
		{"limited", reflect.TypeOf(false)},
		{"n", reflect.TypeOf(int64(0))},
	}
	offs := make([]uintptr, len(want))
	for i, w := range want {
		f, ok := st.FieldByName(w.name)
		if !ok || f.Type != w.typ {
			return nil
		}
		offs[i] = f.Offset
	}
	return &dataReaderLayout{typ: t, offR: offs[0], offState: offs[1], offLim: offs[2], offN: offs[3]}
}

// fastData returns a faster reader with the same behaviour as r, which
// go-smtp passed to Data, or r itself when it is not go-smtp's DATA
// reader (BDAT's is already fast) or its layout is not the one known.
func fastData(r io.Reader) io.Reader {
	t := reflect.TypeOf(r)
	l := dataLayout.Load()
	if l == nil || l.typ != t {
		// Not learnt yet, or another reader (BDAT's): learnDataLayout
		// rejects anything else at its first checks.
		if l = learnDataLayout(t); l == nil {
			return r
		}
		dataLayout.Store(l)
	}
	p := reflect.ValueOf(r).UnsafePointer()
	f := &fastDataReader{
		state:   (*int)(unsafe.Add(p, l.offState)),
		limited: (*bool)(unsafe.Add(p, l.offLim)),
		n:       (*int64)(unsafe.Add(p, l.offN)),
	}
	f.r = *(**bufio.Reader)(unsafe.Add(p, l.offR))
	if f.r == nil {
		return r
	}
	return f
}

// fastDataReader is go-smtp's dataReader.Read over bufio.Reader's buffer.
// Its pointers point into go-smtp's reader (and keep it alive).
type fastDataReader struct {
	r       *bufio.Reader // the connection's reader
	state   *int          // the machine's state (dsBeginLine...)
	limited *bool         // whether n applies (go-smtp clears it to drain)
	n       *int64        // bytes left under MaxMessageBytes
}

// Read behaves as go-smtp's dataReader.Read: the same bytes out, the same
// bytes consumed from the connection, the same errors.
func (f *fastDataReader) Read(b []byte) (n int, err error) {
	if *f.limited {
		if *f.n <= 0 {
			return 0, smtp.ErrDataTooLarge
		}
		if int64(len(b)) > *f.n {
			b = b[:*f.n]
		}
	}
	state := *f.state
	for n < len(b) && state != dsEOF {
		if f.r.Buffered() == 0 {
			if _, err = f.r.Peek(1); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				break
			}
		}
		in, _ := f.r.Peek(f.r.Buffered()) // never an error: no more than is buffered
		var used int
		n, used, state = scanData(b, n, in, state)
		if _, err = f.r.Discard(used); err != nil {
			break
		}
	}
	*f.state = state
	if err == nil && state == dsEOF {
		err = io.EOF
	}
	if *f.limited {
		*f.n -= int64(n)
	}
	return n, err
}

// scanData runs go-smtp's machine over in from state, appending to b[n:]
// until b is full or the end is reached. It returns the new n, how many
// bytes of in it consumed and the new state.
func scanData(b []byte, n int, in []byte, state int) (int, int, int) {
	i := 0
	for i < len(in) && n < len(b) && state != dsEOF {
		if state == dsData {
			// Inside a line: copy up to the next CR in one go.
			run := in[i:min(len(in), i+len(b)-n)]
			if j := bytes.IndexByte(run, '\r'); j >= 0 {
				run = run[:j]
			}
			if len(run) > 0 {
				n += copy(b[n:], run)
				i += len(run)
				continue
			}
		}
		c := in[i]
		i++
		switch state {
		case dsBeginLine:
			if c == '.' {
				state = dsDot
				continue
			}
			if c == '\r' {
				state = dsCR
				break
			}
			state = dsData
		case dsDot:
			if c == '\r' {
				state = dsDotCR
				continue
			}
			state = dsData
		case dsDotCR:
			if c == '\n' {
				state = dsEOF
				continue
			}
			state = dsData
		case dsCR:
			if c == '\n' {
				state = dsBeginLine
				break
			}
			state = dsData
		case dsData:
			if c == '\r' {
				state = dsCR
			}
		}
		b[n] = c
		n++
	}
	return n, i, state
}
