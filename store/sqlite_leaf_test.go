package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// TestSQLiteRecordSize compares sqliteRecordSize with the payload SQLite
// itself gives each row (dbstat's mx_payload of a table holding one row),
// for every serial type the hot path binds.
func TestSQLiteRecordSize(t *testing.T) {
	t.Parallel()
	db, err := sql.Open("sqlite", t.TempDir()+"/record.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if _, err := db.Exec(`CREATE TABLE r (a TEXT, b BLOB, c INTEGER, d TEXT, e INTEGER)`); err != nil {
		t.Fatal(err)
	}
	var ints []any
	for _, v := range []int64{0, 1, -1, 2, 127, 128, -128, -129, 32767, 32768, -32768, -32769,
		1<<23 - 1, 1 << 23, -1 << 23, -1<<23 - 1, math.MaxInt32, math.MaxInt32 + 1, math.MinInt32, math.MinInt32 - 1,
		1<<47 - 1, 1 << 47, -1 << 47, -1<<47 - 1, math.MaxInt64, math.MinInt64, time.Now().UnixMicro()} {
		ints = append(ints, v)
	}
	ints = append(ints, 0, 1, 300, true, false)
	texts := []any{nil, "", "a", strings.Repeat("x", 56), strings.Repeat("x", 57), strings.Repeat("é", 100), strings.Repeat("y", 9000)}
	blobs := []any{[]byte{}, []byte("z"), make([]byte, 57), make([]byte, 8000), make([]byte, 70000)}
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(vs []any) any { return vs[rng.IntN(len(vs))] }
	for i := range 300 {
		row := []any{pick(texts), pick(blobs), pick(ints), pick(texts), pick(ints)}
		if i < len(ints) {
			row[2] = ints[i]
		}
		want, ok := sqliteRecordSize(row...)
		if !ok {
			t.Fatalf("row %d: no size", i)
		}
		if _, err := db.Exec(`DELETE FROM r`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`INSERT INTO r VALUES (?, ?, ?, ?, ?)`, row...); err != nil {
			t.Fatal(err)
		}
		var got int
		if err := db.QueryRow(`SELECT max(mx_payload) FROM dbstat WHERE name = 'r'`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("row %d (%s): SQLite's payload %d bytes, sqliteRecordSize %d", i, describe(row), got, want)
		}
	}
	if _, ok := sqliteRecordSize(1.5); ok {
		t.Error("sqliteRecordSize of a float64: ok; want false (not a type the hot path binds)")
	}
}

// describe shortens a row for a failure message.
func describe(row []any) string {
	var b strings.Builder
	for _, v := range row {
		switch v := v.(type) {
		case string:
			fmt.Fprintf(&b, "text(%d) ", len(v))
		case []byte:
			fmt.Fprintf(&b, "blob(%d) ", len(v))
		default:
			fmt.Fprintf(&b, "%v ", v)
		}
	}
	return b.String()
}

// TestSQLiteLeafPad checks the arithmetic of sqliteLeafPad on 4 KiB and
// 64 KiB pages: a row that would keep more than half a page on its leaf
// keeps the least there after padding, on one more overflow page; any
// other row is not padded.
func TestSQLiteLeafPad(t *testing.T) {
	t.Parallel()
	for _, usable := range []int{4096, 65536} {
		maxLocal, minLocal, per := usable-35, (usable-12)*32/255-23, usable-4
		local := func(p int) int {
			if p <= maxLocal {
				return p
			}
			if k := minLocal + (p-minLocal)%per; k <= maxLocal {
				return k
			}
			return minLocal
		}
		pages := func(p int) int { return (p - local(p) + per - 1) / per }
		padded := 0
		for p := 1; p < 5*usable; p++ {
			pad := sqliteLeafPad(p, usable)
			if p <= maxLocal || local(p) <= usable/2-40 || local(p) == minLocal {
				if pad != 0 {
					t.Fatalf("U=%d P=%d: pad %d for a row that keeps %d bytes on its leaf", usable, p, pad, local(p))
				}
				continue
			}
			padded++
			if got := local(p + pad); got != minLocal {
				t.Fatalf("U=%d P=%d: pad %d leaves %d bytes on the leaf, want %d", usable, p, pad, got, minLocal)
			}
			if pages(p+pad) != pages(p)+1 {
				t.Fatalf("U=%d P=%d: pad %d takes %d overflow pages instead of %d+1", usable, p, pad, pages(p+pad), pages(p))
			}
		}
		if padded == 0 {
			t.Fatalf("U=%d: no row padded", usable)
		}
	}
	if got := sqliteLeafPad(10000, 0); got != 0 {
		t.Errorf("unknown page size: pad %d, want 0", got)
	}
}

// TestSQLiteLeafPadding enqueues messages of many sizes and checks that
// SQLite keeps on the messages table's leaf pages what the file format
// gives each row with its padding (the least, 489 bytes, for every row that
// would keep more than half a page there), and that every way of reading
// a body gives back the body, not the padding.
func TestSQLiteLeafPadding(t *testing.T) {
	t.Parallel()
	e := openEnv(t, "sqlite")
	s := e.s.(*sqliteStore)
	ctx := ctxT(t)
	if s.usable != 4096 {
		t.Fatalf("usable page bytes %d, want 4096", s.usable)
	}
	// On 4 KiB pages: what a row of p bytes keeps on its leaf.
	local := func(p int) int {
		if p <= 4061 {
			return p
		}
		if k := 489 + (p-489)%4092; k <= 4061 {
			return k
		}
		return 489
	}
	rng := rand.New(rand.NewPCG(3, 4))
	bodies := map[string][]byte{}
	wantOnLeaf, padded := 0, 0
	for i := range 150 {
		m := newMsg(1 + i%3)
		m.MailFrom = strings.Repeat("s", rng.IntN(200)) + "@example.net"
		if i%4 == 0 {
			m.MsysAPI = json.RawMessage(fmt.Sprintf(`{"campaign_id":"c%d","metadata":{"k":"%s"}}`, i, strings.Repeat("m", rng.IntN(900))))
		}
		m.Info.Subject = strings.Repeat("subject ", rng.IntN(30))
		size := 2000 + rng.IntN(60000)
		if i%50 == 0 {
			size = padMax + 1 + rng.IntN(8000) // not padded
		}
		body := make([]byte, size)
		for j := range body {
			body[j] = 'a' + byte(rng.IntN(26))
		}
		m.Body = body
		bodies[m.ID] = body
		mustEnqueue(t, s, m)
		// The row as Enqueue wrote it (it fills in the time and more).
		row, err := sqliteMessageRow(m)
		if err != nil {
			t.Fatal(err)
		}
		p, ok := sqliteRecordSize(row...)
		if !ok {
			t.Fatal("no record size")
		}
		if pad := sqliteLeafPad(p, s.usable); pad > 0 && len(body) <= padMax {
			padded++
			p += pad
			if local(p) != 489 {
				t.Fatalf("padded row keeps %d bytes on its leaf", local(p))
			}
		}
		wantOnLeaf += local(p)
	}
	if padded < len(bodies)/4 {
		t.Fatalf("%d of %d rows padded; the test wants more", padded, len(bodies))
	}
	var cells, onLeaf int
	if err := s.r.QueryRowContext(ctx, `SELECT sum(ncell), sum(payload) FROM dbstat
		WHERE name = 'messages' AND pagetype = 'leaf'`).Scan(&cells, &onLeaf); err != nil {
		t.Fatal(err)
	}
	if cells != len(bodies) || onLeaf != wantOnLeaf {
		t.Errorf("messages' leaf pages hold %d rows with %d payload bytes; want %d rows with %d",
			cells, onLeaf, len(bodies), wantOnLeaf)
	}

	for id, want := range bodies {
		got, err := s.MessageBody(ctx, id)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("MessageBody(%s): %d bytes, %v; want the %d stored", id, len(got), err, len(want))
		}
		m, err := s.GetMessage(ctx, id)
		if err != nil || !bytes.Equal(m.Body, want) || m.Size != int64(len(want)) {
			t.Fatalf("GetMessage(%s): body of %d bytes, size %d, %v; want %d", id, len(m.Body), m.Size, err, len(want))
		}
	}
	cs, err := s.ClaimDue(ctx, "w", ClaimOptions{Limit: 1000, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Size > claimBodyMax {
			continue // read with MessageBody, above
		}
		if !bytes.Equal(c.Body, bodies[c.MessageID]) {
			t.Fatalf("claimed body of %s: %d bytes; want the %d stored", c.MessageID, len(c.Body), len(bodies[c.MessageID]))
		}
	}
	// Once delivered, a body is dropped as before.
	finishEach(t, s, "w", cs, StateDelivered)
	for id := range bodies {
		if got, err := s.MessageBody(context.Background(), id); err != nil || len(got) != 0 {
			t.Fatalf("MessageBody(%s) after delivery: %d bytes, %v; want none", id, len(got), err)
		}
	}
}
