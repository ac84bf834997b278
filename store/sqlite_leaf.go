package store

import "math"

// Message bodies and SQLite's leaf pages (issue 12).
//
// A row too large for its table's leaf page keeps part of itself on the
// leaf and the rest on a chain of overflow pages. How much stays on the
// leaf follows from the row's size alone (the database file format,
// https://www.sqlite.org/fileformat2.html#ovflpgs): on pages of U usable
// bytes, K = M + (P−M) mod (U−4) bytes of a P-byte row, or M when K would
// pass U−35, with M = (U−12)·32/255 − 23 (489 on 4 KiB pages). A 10 KiB
// message kept about 2 KiB on its leaf, so it had a leaf page nearly to
// itself; every message wrote a page of its own to the WAL and the
// database, and dropping its body once delivered rewrote that page again,
// which then stayed nearly empty until the message was pruned.
//
// So a body of up to padMax whose row would keep more than half a page on
// the leaf is stored with zeros after it, just enough for SQLite to keep only M there
// and the rest, zeros included, on one more overflow page than before:
// about eight rows then share a leaf page, which a batch of messages, and
// later their body drops, write once between them. The body's length is
// messages.size, and every query that reads a body takes its first size
// bytes (substr(body, 1, size)). A row that keeps half a page or less
// shares its leaf already, and one more overflow page would cost more
// than it saves.

// sqliteLeafPad returns how many zero bytes to append to the blob of a
// row of payload bytes, on pages of usable bytes, so that SQLite keeps the
// least of it on its table leaf page: 0 when the row would keep half a
// page or less there (or fits whole), or when usable is unknown (0).
func sqliteLeafPad(payload, usable int) int {
	if usable < 480 || payload <= 0 {
		return 0
	}
	maxLocal := usable - 35
	minLocal := (usable-12)*32/255 - 23
	if payload <= maxLocal {
		return 0 // on the leaf whole
	}
	per := usable - 4 // payload bytes per overflow page
	r := (payload - minLocal) % per
	if local := minLocal + r; local > maxLocal || local <= usable/2-40 {
		return 0 // the least already, or a leaf shared with another row
	}
	// The remainders that keep minLocal on the leaf are lo..per-1; aim
	// at their middle, so that a size computed a little wrong (it is
	// not: TestSQLiteRecordSize) would still land among them.
	lo := maxLocal - minLocal + 1
	return (lo+per-1)/2 - r
}

// sqliteRecordSize returns the size of a row of vals in SQLite's record
// format (a header of serial types, then the values), for the types the
// hot path binds; ok is false for any other.
func sqliteRecordSize(vals ...any) (size int, ok bool) {
	hdr, body := 0, 0
	for _, v := range vals {
		t, n, ok := sqliteSerial(v)
		if !ok {
			return 0, false
		}
		hdr += uvarintLen(t)
		body += n
	}
	// The header's length counts the varint that holds it.
	for n := 1; n <= 9; n++ {
		if uvarintLen(uint64(hdr+n)) == n {
			return hdr + n + body, true
		}
	}
	return 0, false
}

// sqliteSerial returns the serial type of v and the bytes its value takes.
func sqliteSerial(v any) (typ uint64, n int, ok bool) {
	switch v := v.(type) {
	case nil:
		return 0, 0, true
	case bool:
		if v {
			return 9, 0, true
		}
		return 8, 0, true
	case int:
		return sqliteIntSerial(int64(v))
	case int64:
		return sqliteIntSerial(v)
	case string:
		return uint64(2*len(v) + 13), len(v), true
	case []byte:
		return uint64(2*len(v) + 12), len(v), true
	}
	return 0, 0, false
}

// sqliteIntSerial is sqliteSerial for an integer (schema format 4: 0 and 1
// take no bytes).
func sqliteIntSerial(v int64) (uint64, int, bool) {
	switch {
	case v == 0:
		return 8, 0, true
	case v == 1:
		return 9, 0, true
	case v >= math.MinInt8 && v <= math.MaxInt8:
		return 1, 1, true
	case v >= math.MinInt16 && v <= math.MaxInt16:
		return 2, 2, true
	case v >= -1<<23 && v < 1<<23:
		return 3, 3, true
	case v >= math.MinInt32 && v <= math.MaxInt32:
		return 4, 4, true
	case v >= -1<<47 && v < 1<<47:
		return 5, 6, true
	}
	return 6, 8, true
}

// uvarintLen is the length of v as an SQLite varint: 7 bits a byte, and a
// ninth byte of 8 bits.
func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 && n < 9 {
		v >>= 7
		n++
	}
	return n
}

// padMax is the largest body padded: a larger one spans at least 64
// overflow pages, beside which its leaf page hardly counts, and its copy
// would.
const padMax = 256 << 10

// padBody returns body followed by the zeros sqliteLeafPad asks for a
// messages row of args (the insert's values, body among them), in the
// writer's buffer, or body itself when none are needed. Only the writer
// calls it, and the driver copies the value before the insert returns.
func (s *sqliteStore) padBody(body []byte, args []any) []byte {
	if len(body) > padMax {
		return body
	}
	size, ok := sqliteRecordSize(args...)
	if !ok {
		return body
	}
	pad := sqliteLeafPad(size, s.usable)
	if pad == 0 {
		return body
	}
	n := len(body) + pad
	if cap(s.pad) < n {
		s.pad = make([]byte, n, padMax+s.usable)
	}
	b := s.pad[:n]
	copy(b, body)
	clear(b[len(body):])
	return b
}
