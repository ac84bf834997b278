package smtpd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/emersion/go-smtp"
)

// maxLineBytes is the longest line of a message, not counting its line
// end: twice RFC 5321's 1000 octets with CRLF (§4.5.3.1.6), as go-smtp
// had it.
const maxLineBytes = 2000

// msgReader copies a message from go-smtp's DATA/BDAT reader (dot-stuffing
// already undone) into a spool, in one pass:
//
//   - line ends become CRLF: a bare CR or LF is made CRLF (normalize) or
//     refuses the message (reject), so what is stored, relayed and signed
//     is canonical and "\r.\r\n" can never end the message at the next hop;
//   - lines over maxLineBytes, a header block over maxHeader and bytes over
//     the in-flight budget refuse the message;
//   - the end of the header block (the first empty line) is found.
//
// A refused message is still read to its end, so that the client gets one
// reply and the session goes on; from the first refusal nothing more is
// kept.
type msgReader struct {
	sp         *spool
	reject     bool   // bare CR/LF refuses the message
	maxHeader  int64  // largest header block
	onProgress func() // called for every read that returned data

	err      error // first refusal
	prevCR   bool  // the last input byte was a CR not yet resolved
	line     int   // bytes in the current line so far
	inHeader bool
	hdrLen   int64 // bytes of the header block, its empty line included
	out      []byte
}

// msgBufs are a msgReader's scratch buffers, reused from message to
// message (96 KiB each time was most of a session's garbage).
type msgBufs struct {
	in  [32 << 10]byte
	out []byte
}

var readBufs = sync.Pool{New: func() any { return &msgBufs{out: make([]byte, 0, 64<<10)} }}

// read reads r to its end. It returns the size of the header block, or the
// first refusal once r is drained, or the read error that cut it short.
func (m *msgReader) read(r io.Reader) (int64, error) {
	m.inHeader = true
	bufs := readBufs.Get().(*msgBufs)
	defer readBufs.Put(bufs)
	m.out = bufs.out[:0]
	defer func() { m.out = nil }()
	buf := bufs.in[:]
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if m.onProgress != nil {
				m.onProgress()
			}
			m.process(buf[:n])
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if errors.Is(err, smtp.ErrDataTooLarge) {
				// go-smtp reads the rest of the data itself.
				return 0, fmt.Errorf("read message: %w", ErrTooBig)
			}
			return 0, fmt.Errorf("read message: %w: %w", errClientRead, err)
		}
	}
	if m.prevCR {
		m.prevCR = false
		m.bare()
		m.endLine()
	} else if m.line > 0 {
		// BDAT data need not end with a line end: the stored form does.
		m.endLine()
	}
	m.flush()
	if m.err != nil {
		return 0, m.err
	}
	if m.inHeader {
		m.hdrLen = m.sp.n
	}
	return m.hdrLen, nil
}

// process handles input bytes.
func (m *msgReader) process(p []byte) {
	for len(p) > 0 {
		if m.prevCR {
			m.prevCR = false
			if p[0] == '\n' {
				p = p[1:]
			} else {
				m.bare()
			}
			m.endLine()
			continue
		}
		// The text up to the next CR or LF.
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			i = len(p)
		}
		if j := bytes.IndexByte(p[:i], '\r'); j >= 0 {
			i = j
		}
		if i > 0 {
			m.text(p[:i])
			p = p[i:]
			continue
		}
		if p[0] == '\r' {
			m.prevCR = true
		} else {
			m.bare()
			m.endLine()
		}
		p = p[1:]
	}
}

// text adds line content without line ends.
func (m *msgReader) text(p []byte) {
	m.line += len(p)
	if m.line > maxLineBytes {
		m.refuse(fmt.Errorf("a line of over %d bytes: %w", maxLineBytes, ErrLineTooLong))
	}
	m.emit(p)
	if m.inHeader && m.sp.n+int64(len(m.out)) > m.maxHeader {
		m.refuse(fmt.Errorf("header over %d bytes: %w", m.maxHeader, ErrHeaderTooBig))
	}
}

// bare records a bare CR or LF, about to be made CRLF.
func (m *msgReader) bare() {
	if m.reject {
		m.refuse(fmt.Errorf("bare CR or LF in the message: %w", ErrBareLineEnding))
	}
}

// endLine ends the current line with CRLF.
func (m *msgReader) endLine() {
	empty := m.line == 0
	m.line = 0
	m.emit([]byte("\r\n"))
	if m.inHeader && empty {
		m.inHeader = false
		m.hdrLen = m.sp.n + int64(len(m.out))
	}
}

func (m *msgReader) emit(p []byte) {
	if m.err != nil {
		return
	}
	if len(m.out)+len(p) > cap(m.out) {
		m.flush()
		if len(p) > cap(m.out) {
			m.write(p)
			return
		}
	}
	m.out = append(m.out, p...)
}

func (m *msgReader) flush() {
	if len(m.out) > 0 {
		m.write(m.out)
		m.out = m.out[:0]
	}
}

func (m *msgReader) write(p []byte) {
	if m.err != nil {
		return
	}
	if _, err := m.sp.Write(p); err != nil {
		m.refuse(fmt.Errorf("spool message: %w", err))
	}
}

// refuse records the first reason to refuse the message and stops keeping
// it.
func (m *msgReader) refuse(err error) {
	if m.err == nil {
		m.err = err
		m.out = m.out[:0]
		m.sp.release()
	}
}
