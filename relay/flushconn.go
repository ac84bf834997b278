package relay

import (
	"bufio"
	"net"
)

// flushConn batches what go-smtp's client writes to a relay target.
//
// go-smtp's client flushes after every command and writes DATA through a
// 4 KiB buffer, so a 10 KiB message took four or five write system calls
// (and as many TLS records) on top of one per command. flushConn holds
// writes in a 64 KiB buffer and sends them when the client next reads —
// it always reads a reply after writing a command (QUIT too) or the end of
// the message — or when the buffer fills. A message goes out in one write.
// A write error shows up at the next read, where go-smtp reports the
// connection as failed either way. Close is the connection's own (it may
// be called from another goroutine to abort a delivery, so it must not
// touch the buffer). (go-smtp cannot be
// told to pipeline; we do not fork it.)
type flushConn struct {
	net.Conn
	w *bufio.Writer
}

func newFlushConn(c net.Conn) *flushConn {
	fc := &flushConn{Conn: c}
	fc.w = bufio.NewWriterSize(writerOnly{c}, 64<<10)
	return fc
}

// writerOnly hides every method of the connection but Write from
// bufio.Writer (which would otherwise use ReadFrom).
type writerOnly struct{ c net.Conn }

func (w writerOnly) Write(p []byte) (int, error) { return w.c.Write(p) }

// Write buffers p.
func (c *flushConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// Read sends what is buffered, then reads.
func (c *flushConn) Read(p []byte) (int, error) {
	if c.w.Buffered() > 0 {
		if err := c.w.Flush(); err != nil {
			return 0, err
		}
	}
	return c.Conn.Read(p)
}
