package walbuf

import (
	"bufio"
	"bytes"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	_ "modernc.org/sqlite"

	"github.com/smtpgw/smtpgw/internal/disktest"
)

// TestMain runs the child of TestKilledAfterCommit or TestFullDisk when
// this binary is started as one (see runChild), else the tests.
func TestMain(m *testing.M) {
	if spec := os.Getenv("WALBUF_CHILD"); spec != "" {
		child(spec)
	}
	os.Exit(m.Run())
}

// open opens path under this VFS in WAL mode with the given synchronous
// setting and a page cache of cachePages pages (small ones make SQLite
// spill a transaction's pages to the WAL before it commits, and rewrite
// their checksums after the commit frame).
func open(t testing.TB, path, synchronous string, cachePages int) *sql.DB {
	t.Helper()
	if err := Register(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", path+"?vfs="+Name+"&_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)"+
		"&_pragma=synchronous("+synchronous+")&_pragma=cache_size("+strconv.Itoa(cachePages)+")&_pragma=cache_spill("+strconv.Itoa(cachePages)+")")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, b BLOB)`); err != nil {
		t.Fatal(err)
	}
	return db
}

// insert adds n rows of size bytes each, ids from first, in one
// transaction, and shortens the first of them at the end (so that a page
// spilled to the WAL early in the transaction is written again before it
// commits, and SQLite rewrites the checksums after the commit frame).
func insert(db *sql.DB, first, n, size int) error {
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	for i := range n {
		b := bytes.Repeat([]byte{byte(first + i)}, size)
		if _, err := tx.Exec(`INSERT INTO t (id, b) VALUES (?, ?)`, first+i, b); err != nil {
			return err
		}
	}
	if _, err := tx.Exec(`UPDATE t SET b = ? WHERE id = ?`, bytes.Repeat([]byte{byte(first)}, size/2), first); err != nil {
		return err
	}
	return tx.Commit()
}

// check verifies db's integrity and that it holds rows 0..n-1.
func check(t testing.TB, db *sql.DB, n int) {
	t.Helper()
	var ok string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&ok); err != nil || ok != "ok" {
		t.Fatalf("integrity_check: %q, %v", ok, err)
	}
	var count, sum int
	if err := db.QueryRow(`SELECT count(*), coalesce(sum(id), 0) FROM t`).Scan(&count, &sum); err != nil {
		t.Fatal(err)
	}
	if count != n || sum != n*(n-1)/2 {
		t.Fatalf("table holds %d rows (ids summing to %d), want %d (%d)", count, sum, n, n*(n-1)/2)
	}
	rows, err := db.Query(`SELECT id, b FROM t`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int
		var b []byte
		if err := rows.Scan(&id, &b); err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 || !bytes.Equal(b, bytes.Repeat([]byte{byte(id)}, len(b))) {
			t.Fatalf("row %d: %d bytes, not all %d", id, len(b), byte(id))
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}

// A commit of many pages reaches the WAL in a few large writes, not two
// per page.
func TestCoalesces(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "db"), "FULL", 2000)
	a0, w0 := asked.Load(), wrote.Load()
	if err := insert(db, 0, 100, 4000); err != nil { // about 100 pages
		t.Fatal(err)
	}
	a, w := asked.Load()-a0, wrote.Load()-w0
	if a < 200 {
		t.Fatalf("the WAL was asked for %d writes, want at least two per page (200)", a)
	}
	if w > a/20 {
		t.Fatalf("%d writes asked became %d, want at most %d", a, w, a/20)
	}
	check(t, db, 100)
}

// Another connection sees every commit as soon as it returns, synced or
// not, with transactions that spill to the WAL before they commit.
func TestCommitsVisibleToReaders(t *testing.T) {
	for _, sync := range []string{"FULL", "NORMAL"} {
		t.Run(sync, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "db")
			w := open(t, path, sync, 10)
			r := open(t, path, sync, 10)
			n := 0
			for i := range 30 {
				rows := 1 + i%7*5 // up to 31 rows of 3 KB: some spill
				if err := insert(w, n, rows, 3000); err != nil {
					t.Fatal(err)
				}
				n += rows
				check(t, r, n)
			}
		})
	}
}

// A process killed right after its commits returned loses none of them,
// whether they synced the WAL or not. The child (this test binary again)
// commits, reports each commit on stdout, and is killed with SIGKILL
// after the last; the database is then opened afresh (SQLite recovers it
// from the WAL) and checked.
func TestKilledAfterCommit(t *testing.T) {
	for _, sync := range []string{"FULL", "NORMAL"} {
		t.Run(sync, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "db")
			n, _ := runChild(t, sync, path, "")
			check(t, open(t, path, sync, 2000), n)
		})
	}
}

// When the disk fills, commits fail and nothing of them reaches the file
// later: a process killed once there is room again, after a checkpoint
// read the WAL back, recovers exactly the commits that succeeded (a failed
// commit whose frames were written after all would come back as
// committed); and commits succeed again.
func TestFullDisk(t *testing.T) {
	for _, sync := range []string{"FULL", "NORMAL"} {
		t.Run(sync, func(t *testing.T) {
			dir := disktest.Small(t, 8<<20)
			path := filepath.Join(dir, "db")
			n, failed := runChild(t, sync, path, dir)
			if failed == 0 {
				t.Fatal("no commit failed while the disk was full")
			}
			db := open(t, path, sync, 2000)
			check(t, db, n)
			if err := insert(db, n, 20, 3500); err != nil {
				t.Fatalf("a commit once the disk has room: %v", err)
			}
			check(t, db, n+20)
		})
	}
}

// runChild runs this test binary again as a child process (TestMain runs
// child in it) that commits to the database at path with the given synchronous setting (filling the file
// system at fill, if not empty, for a while), and kills it with SIGKILL
// once it is done. It returns how many rows the child committed, and how
// many of its commits failed.
func runChild(t *testing.T, sync, path, fill string) (n, failed int) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "WALBUF_CHILD="+sync+","+path+","+fill)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := false
	sc := bufio.NewScanner(out)
	for !done && sc.Scan() {
		line := sc.Text()
		if c, ok := strings.CutPrefix(line, "committed "); ok {
			n, _ = strconv.Atoi(c)
		}
		if line == "failed" {
			failed++
		}
		done = line == "done"
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if !done {
		t.Fatal("the child ended before it was done (its error is above)")
	}
	if n == 0 {
		t.Fatal("the child reported no commit")
	}
	return n, failed
}

// child commits transactions of every size, some spilling, then waits to
// be killed. With a directory to fill, it fills its file system after a
// few commits, tries some more (they must fail), frees the space and
// commits again.
func child(spec string) {
	parts := strings.SplitN(spec, ",", 3)
	sync, path, fill := parts[0], parts[1], parts[2]
	err := Register()
	var db *sql.DB
	if err == nil {
		db, err = sql.Open("sqlite", path+"?vfs="+Name+"&_pragma=journal_mode(WAL)&_pragma=synchronous("+sync+")"+
			"&_pragma=cache_size(10)&_pragma=cache_spill(10)")
	}
	if err == nil {
		db.SetMaxOpenConns(1)
		_, err = db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)`)
	}
	n := 0
	commit := func(i int) error {
		rows := 1 + i%5*8
		if err := insert(db, n, rows, 3500); err != nil {
			return err
		}
		n += rows
		fmt.Printf("committed %d\n", n)
		return nil
	}
	for i := 0; err == nil && i < 25; i++ {
		err = commit(i)
		if err == nil && fill != "" && i == 10 {
			if err = fullDisk(fill, commit); err == nil {
				// Read the WAL back (whatever was held is written
				// first), and stop there: frames of a failed commit,
				// written now, would be taken for a commit by recovery.
				_, err = db.Exec(`PRAGMA wal_checkpoint(PASSIVE)`)
				break
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
	fmt.Println("done")
	select {} // until killed
}

// fullDisk fills the file system at dir, tries commits until three have
// failed for want of room (any that succeed count as committed), and frees
// the space again.
func fullDisk(dir string, commit func(int) error) error {
	filler, err := disktest.Fill(dir)
	if err != nil {
		return err
	}
	failures := 0
	for i := 0; failures < 3; i++ {
		if i == 100 {
			return errors.New("100 commits on a full disk, and fewer than 3 failed")
		}
		err := commit(i)
		switch {
		case err == nil:
		case strings.Contains(err.Error(), "full"):
			failures++
			fmt.Println("failed")
		default:
			return fmt.Errorf("a commit on a full disk: %w", err)
		}
	}
	return os.Remove(filler)
}
