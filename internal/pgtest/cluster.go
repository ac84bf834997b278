package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is a PostgreSQL server of a test's own, made with initdb in a
// temporary directory and run with pg_ctl on a free loopback port, so that
// fault tests can stop it, freeze it (SIGSTOP) and thaw it without
// disturbing the shared test server. It runs as the "postgres" system user
// when the test runs as root (PostgreSQL refuses to run as root).
type Cluster struct {
	t    testing.TB
	bin  string // directory of initdb, pg_ctl, postgres
	dir  string // PGDATA
	port int
	cred *syscall.Credential // nil: run as the current user
	// URL is a connection URL for database "test" of the cluster.
	URL string
}

// NewCluster creates and starts a private cluster, and registers its stop
// and removal with t.Cleanup. A missing PostgreSQL installation fails the
// test with how to install it.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	bin, err := serverBinDir()
	if err != nil {
		t.Fatalf("pgtest: %v\nInstall PostgreSQL's server: apt-get install postgresql (.ci/run does)", err)
	}
	c := &Cluster{t: t, bin: bin}
	root, err := os.MkdirTemp("", "smtpgw-pgcluster-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("pgtest: running as root needs the postgres system user (apt-get install postgresql creates it): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(root, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	c.dir = filepath.Join(root, "data")
	c.port = freePort(t)
	c.run("initdb", "-D", c.dir, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
	conf := fmt.Sprintf("\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n"+
		"max_connections = 100\nshared_buffers = 32MB\nlogging_collector = off\n", c.port, root)
	f, err := os.OpenFile(filepath.Join(c.dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(conf); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	c.Start()
	t.Cleanup(c.cleanup)
	c.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test", c.port)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres", c.port))
	if err != nil {
		t.Fatalf("pgtest: connect to private cluster: %v", err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Exec(ctx, "CREATE DATABASE test"); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	return c
}

// serverBinDir finds the newest /usr/lib/postgresql/*/bin with initdb.
func serverBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("initdb not found in /usr/lib/postgresql/*/bin nor on PATH")
}

// freePort returns a TCP port nothing listens on at the moment.
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

// run runs one of the cluster's programs as the cluster's user.
func (c *Cluster) run(prog string, args ...string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, prog), args...)
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Fatalf("pgtest: %s %s: %v\n%s", prog, strings.Join(args, " "), err, out)
	}
}

// Start starts the server and waits until it accepts connections.
func (c *Cluster) Start() {
	c.t.Helper()
	c.run("pg_ctl", "-D", c.dir, "-l", filepath.Join(filepath.Dir(c.dir), "log"), "-w", "-t", "60", "start")
}

// Stop stops the server (fast shutdown: sessions are cut).
func (c *Cluster) Stop() {
	c.t.Helper()
	c.run("pg_ctl", "-D", c.dir, "-m", "fast", "-w", "-t", "60", "stop")
}

// Freeze stops every process of the server with SIGSTOP: connections stay
// open and nothing answers, as when a database host hangs.
func (c *Cluster) Freeze() { c.signal(syscall.SIGSTOP) }

// Thaw resumes the processes Freeze stopped.
func (c *Cluster) Thaw() { c.signal(syscall.SIGCONT) }

// signal sends sig to the postmaster and all its children.
func (c *Cluster) signal(sig syscall.Signal) {
	c.t.Helper()
	pids := c.pids()
	if len(pids) == 0 {
		c.t.Fatalf("pgtest: no server process to signal")
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && err != syscall.ESRCH {
			c.t.Fatalf("pgtest: kill -%d %d: %v", sig, pid, err)
		}
	}
}

// pids returns the postmaster's pid (postmaster.pid) and its children's.
func (c *Cluster) pids() []int {
	b, err := os.ReadFile(filepath.Join(c.dir, "postmaster.pid"))
	if err != nil {
		return nil
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return nil
	}
	pids := []int{pm}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pm) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cleanup thaws (a frozen server cannot stop) and stops the server.
func (c *Cluster) cleanup() {
	if len(c.pids()) == 0 {
		return
	}
	c.signal(syscall.SIGCONT)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "pg_ctl"), "-D", c.dir, "-m", "immediate", "-w", "stop")
	cmd.Dir = "/"
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Errorf("pgtest: stop private cluster: %v\n%s", err, out)
	}
}
