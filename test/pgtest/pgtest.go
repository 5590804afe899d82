// Package pgtest runs a private PostgreSQL server for tests and
// benchmarks: initdb into a fresh temporary directory, its own free port
// on 127.0.0.1 and a unix socket in that directory, run as an unprivileged
// user when the caller is root (PostgreSQL refuses to run as root), and
// stopped (and its directory removed) at the end.
//
// A test binary shares one server: its TestMain calls Main, and each test
// gets an empty schema of its own from NewSchema. With
// HALLMARK_TEST_POSTGRES_DSN set, tests use that database instead of
// starting one (each still in a schema of its own, dropped at the end).
//
// When PostgreSQL is not installed, the tests that need it fail with a
// message that names test/scripts/install-postgres.sh, which `make test`
// runs; they are never skipped.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DSNEnv names an external database for tests instead of a private
// server.
const DSNEnv = "HALLMARK_TEST_POSTGRES_DSN"

// installHint is how to get PostgreSQL.
const installHint = "run test/scripts/install-postgres.sh (make test runs it), or set " + DSNEnv + " to a database the tests may use"

// Options tune a private server.
type Options struct {
	// Durable keeps fsync and synchronous commits on, as in production
	// (benchmarks); tests run faster without them.
	Durable bool
}

// Server is a running private PostgreSQL server.
type Server struct {
	dir  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed
	logf *os.File
	// relaunch makes the command that started the server, for Restart.
	relaunch func() *exec.Cmd
}

// BinDir finds PostgreSQL's server programs: initdb and postgres on PATH,
// or the newest /usr/lib/postgresql/VERSION/bin (Debian keeps them there).
func BinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			if _, err := os.Stat(filepath.Join(filepath.Dir(real), "postgres")); err == nil {
				return filepath.Dir(real), nil
			}
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(debianDir, "*", "bin"))
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
				return d, nil
			}
		}
	}
	return "", fmt.Errorf("pgtest: PostgreSQL not found (no initdb and postgres on PATH or in /usr/lib/postgresql/*/bin): %s", installHint)
}

// debianDir is where Debian installs PostgreSQL's versions.
var debianDir = "/usr/lib/postgresql"

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// Start initializes and starts a server in a new temporary directory.
func Start(ctx context.Context, o Options) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	// The socket's path must fit in sockaddr_un (108 bytes).
	tmp := os.TempDir()
	if len(tmp) > 60 {
		tmp = "/tmp"
	}
	dir, err := os.MkdirTemp(tmp, "hallmark-pg-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{dir: dir, done: make(chan struct{})}
	if err := s.start(ctx, bin, cred, o); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// credential is who runs PostgreSQL: nil (the caller) unless the caller
// is root, and then the postgres user (Debian's package creates it) or
// nobody.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
	}
	return nil, errors.New("pgtest: running as root and there is neither a postgres nor a nobody user to run PostgreSQL as")
}

func (s *Server) start(ctx context.Context, bin string, cred *syscall.Credential, o Options) error {
	data := filepath.Join(s.dir, "data")
	if cred != nil {
		if err := os.Chown(s.dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = s.dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	logf, err := os.Create(filepath.Join(s.dir, "postgres.log"))
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	s.logf = logf
	durable := "off"
	if o.Durable {
		durable = "on"
	}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		s.port = port
		cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", data,
			"-c", "listen_addresses=127.0.0.1", "-c", "port="+strconv.Itoa(port),
			"-c", "unix_socket_directories="+s.dir, "-c", "max_connections=200",
			"-c", "fsync="+durable, "-c", "synchronous_commit="+durable, "-c", "full_page_writes="+durable,
			"-c", "shared_buffers=64MB", "-c", "log_min_messages=warning")
		cmd.Dir = s.dir
		cmd.Stdout, cmd.Stderr = logf, logf
		// The server dies with the process that started it, even when
		// that process is killed.
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
		args, attr := cmd.Args, cmd.SysProcAttr
		s.relaunch = func() *exec.Cmd {
			c := exec.Command(args[0], args[1:]...)
			c.Dir, c.Stdout, c.Stderr, c.SysProcAttr = s.dir, logf, logf, attr
			return c
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("pgtest: start postgres: %w", err)
		}
		s.cmd = cmd
		s.done = make(chan struct{})
		go func() { s.err = cmd.Wait(); close(s.done) }()
		err = s.waitReady(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-s.done: // exited: most likely the port was taken meanwhile
			if attempt < 3 {
				continue
			}
		default:
		}
		log, _ := os.ReadFile(logf.Name())
		return fmt.Errorf("pgtest: postgres did not start: %w\n%s", err, log)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case <-s.done:
			return fmt.Errorf("postgres exited: %v", s.err)
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// DSN is the connection string for database db, over the unix socket.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", s.dir, s.port, db)
}

// CreateDatabase creates an empty database and returns its DSN.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
	}
	return s.DSN(name), nil
}

// Down stops the server (fast shutdown) and keeps its data, for Up.
func (s *Server) Down() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return errors.New("pgtest: not started")
	}
	select {
	case <-s.done:
		return nil
	default:
	}
	s.cmd.Process.Signal(syscall.SIGINT) //nolint:errcheck // it may be gone
	select {
	case <-s.done:
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("pgtest: postgres did not stop within 30s")
	}
}

// Up starts a server stopped by Down again, on the same port and data.
func (s *Server) Up(ctx context.Context) error {
	cmd := s.relaunch()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: restart postgres: %w", err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() { s.err = cmd.Wait(); close(s.done) }()
	return s.waitReady(ctx)
}

// Stop stops the server (fast shutdown) and removes its directory.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		select {
		case <-s.done:
		default:
			s.cmd.Process.Signal(syscall.SIGINT) //nolint:errcheck // it may be gone
			select {
			case <-s.done:
			case <-time.After(30 * time.Second):
				s.cmd.Process.Kill() //nolint:errcheck // last resort
				<-s.done
			}
		}
	}
	if s.logf != nil {
		s.logf.Close()
	}
	os.RemoveAll(s.dir)
}

// shared is the test binary's database: a private server's or the
// external one's.
var shared struct {
	once   sync.Once
	server *Server
	dsn    string
	err    error
}

// Main runs a test binary's tests with one PostgreSQL server for all of
// them, started on first use by NewSchema and stopped at the end:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	if shared.server != nil {
		shared.server.Stop()
	}
	os.Exit(code)
}

func sharedDSN() (string, error) {
	shared.once.Do(func() {
		if dsn := os.Getenv(DSNEnv); dsn != "" {
			shared.dsn = dsn
			return
		}
		s, err := Start(context.Background(), Options{})
		if err != nil {
			shared.err = err
			return
		}
		shared.server, shared.dsn = s, s.DSN("postgres")
	})
	return shared.dsn, shared.err
}

// NewSchema creates an empty schema in the shared database, dropped when
// the test ends, and returns a DSN whose search_path is that schema. It
// fails the test when no PostgreSQL can be had, saying how to get one.
func NewSchema(t testing.TB) string {
	t.Helper()
	dsn, err := sharedDSN()
	if err != nil {
		t.Fatalf("PostgreSQL is needed: %v", err)
	}
	b := make([]byte, 6)
	rand.Read(b) //nolint:errcheck // never fails
	schema := "t_" + hex.EncodeToString(b)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("PostgreSQL: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("PostgreSQL: create schema: %v", err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("PostgreSQL: connect: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("PostgreSQL: drop schema: %v", err)
		}
	})
	return WithParam(dsn, "search_path", schema)
}

// WithParam adds the connection parameter key=value (not quoted or
// escaped: a plain word) to a keyword/value or URL DSN.
func WithParam(dsn, key, value string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		return dsn + sep + key + "=" + value
	}
	return dsn + " " + key + "=" + value
}
