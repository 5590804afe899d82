package agentclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
)

// HTTP/2 (RFC 9113) as gRPC uses it ("gRPC over HTTP2",
// https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md), for one
// call at a time on a unix socket.

const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Frame types (RFC 9113, section 6).
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePushPromise  = 0x5
	framePing         = 0x6
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8
	frameContinuation = 0x9
)

// Frame flags.
const (
	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20
)

// Settings (RFC 9113, section 6.5.2).
const (
	settingHeaderTableSize   = 0x1
	settingEnablePush        = 0x2
	settingInitialWindowSize = 0x4
	settingMaxFrameSize      = 0x5
)

const (
	// maxFrameSize is the largest frame this client reads: the default
	// of SETTINGS_MAX_FRAME_SIZE, which it does not raise.
	maxFrameSize = 16384
	// maxWindow is the largest flow-control window (2^31-1); this
	// client grants it to the stream and the connection at once and
	// again whenever replenishAfter bytes were consumed, so the agent
	// never waits on it.
	maxWindow      = 1<<31 - 1
	replenishAfter = 1 << 30
	defaultWindow  = 65535
	// maxHeaderBlock bounds a response's header block (with its
	// CONTINUATION frames); maxHeaderString one header's value.
	maxHeaderBlock  = 1 << 20
	maxHeaderString = 64 << 10
)

// GreetingTimeout bounds the wait for the agent's greeting (its SETTINGS),
// as gRPC's clients bound connecting (20 s): a stopped agent, or a socket
// nobody serves, still has connections queued by the kernel and says
// nothing. The agent itself greets within its handshake timeout (10 s) or
// closes the connection.
const GreetingTimeout = 20 * time.Second

// MaxMessageBytes bounds one message received: an answer holds a bundle
// (at most attest.MaxBundleSize) and the list of its subjects, about as
// large again. TestMaxMessageBytes ties it to attest.MaxBundleSize.
const MaxMessageBytes = 4 * (16 << 20)

// Client is one connection to hallmark-agent's workload API: what a build
// step needs of it (AttestStepStream, AttestStep, GetBundle), one call at
// a time. It speaks gRPC over HTTP/2 itself, with nothing of grpc-go's
// runtime, so that a step's CLI is cheap to start and connect (make bench,
// figure fresh_cli_cpu_per_step).
// It sends no request before the agent's greeting, as the agent demands
// (internal/peercred: a request queued before the connection was watched
// is refused). Not safe for concurrent use.
type Client struct {
	conn  conn
	r     *bufio.Reader
	w     *bufio.Writer
	hdr   [9]byte
	frame []byte // the payload of the frame read last, reused

	enc    *hpack.Encoder
	encBuf bytes.Buffer
	dec    *hpack.Decoder

	greeted      bool // the agent's SETTINGS were read
	framesRead   int  // frames read whole, to tell the connection's first ones
	cut          bool // a read failed inside a frame: what follows is not at a frame's start
	greetWithin  time.Duration
	nextStream   uint32 // the next stream to open
	goAway       bool   // the agent said GOAWAY: no new streams
	refusedWith  []byte // the payload of a GOAWAY that was the agent's first frame and served no stream (refusal)
	maxSendFrame int
	initWindow   int64 // the agent's SETTINGS_INITIAL_WINDOW_SIZE
	connWindow   int64 // what the connection lets this client send
	connConsumed int64 // received since the connection's window was last replenished
	err          error // a connection-level failure: every later call fails with it

	block       []byte // a header block being read, until END_HEADERS
	blockStream uint32 // its stream, 0 when none is being read
	blockES     bool   // its HEADERS frame ended the stream
}

// Dial connects to the agent's socket (DialSocket) and sends this
// client's greeting.
func Dial(ctx context.Context, socket string) (*Client, error) {
	f, err := DialSocket(ctx, socket)
	switch {
	case ctx.Err() != nil:
		if f != nil {
			f.Close()
		}
		return nil, ctxError(ctx.Err()) // canceled, not a missing agent
	case err != nil:
		return nil, connError("dial unix %s: %v", socket, err)
	}
	c, err := newClient(ctx, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return c, nil
}

// DialSocket connects to the agent's socket. While the agent's queue of
// connections to accept is full (EAGAIN) it retries for up to 10 s: a
// burst of other connections, which the agent closes at once when over
// their uid's limit, must not fail a step. The full CLI's gRPC client
// dials through it too (net.FileConn).
func DialSocket(ctx context.Context, socket string) (*os.File, error) {
	deadline := time.Now().Add(10 * time.Second)
	for wait := time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		f, err := dialUnix(socket)
		if err == nil || !errors.Is(err, syscall.EAGAIN) || time.Now().After(deadline) {
			return f, err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// dialUnix connects to a unix stream socket without package net, whose
// resolver links C's (and its start-up cost) into the binary: the
// connection is an *os.File on a non-blocking socket, which the runtime's
// poller serves with deadlines like a net.Conn. A connect to a unix socket
// completes at once or fails; it is never in progress.
func dialUnix(path string) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("connect", err)
	}
	return os.NewFile(uintptr(fd), "unix:"+path), nil
}

// conn is the connection: an *os.File on a socket, or a net.Conn in tests.
type conn interface {
	io.ReadWriteCloser
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
}

// newClient sends this client's greeting on conn; ctx bounds reading the
// agent's refusal, should it have closed conn at once.
func newClient(ctx context.Context, conn conn) (*Client, error) {
	c := &Client{
		conn:         conn,
		r:            bufio.NewReader(conn),
		w:            bufio.NewWriter(conn),
		nextStream:   1,
		greetWithin:  GreetingTimeout,
		maxSendFrame: maxFrameSize,
		initWindow:   defaultWindow,
		connWindow:   defaultWindow,
	}
	c.enc = hpack.NewEncoder(&c.encBuf)
	c.dec = hpack.NewDecoder(4096, nil)
	c.dec.SetMaxStringLength(maxHeaderString)

	// The greeting: the preface, SETTINGS and the connection's window.
	// The agent accepts these before its own greeting and nothing else.
	c.w.WriteString(clientPreface)
	var s []byte
	s = appendSetting(s, settingEnablePush, 0)
	s = appendSetting(s, settingInitialWindowSize, maxWindow)
	c.writeFrame(frameSettings, 0, 0, s)
	c.writeWindowUpdate(0, maxWindow-defaultWindow)
	if err := c.w.Flush(); err != nil {
		// The agent closed it at once, after saying why (refusal) or not.
		if r := c.refusal(ctx); r != nil {
			return nil, r
		}
		e := lostError("%v", err)
		e.unserved = true
		return nil, e
	}
	return c, nil
}

// errCodeInadequateSecurity is the GOAWAY error code (RFC 9113, section 7)
// of the agent's final refusals.
const errCodeInadequateSecurity = 0xc

// refusalWait bounds the read of the agent's refusal, which is there
// already when the agent closed the connection.
const refusalWait = time.Second

// refusal returns the agent's refusal of this connection at accept, if
// that is how it ended: the agent's first frame is then a GOAWAY that
// serves no stream, with why in its debug data (agent/refusal.go). Called
// once the connection failed, it reads that frame if it was not read yet:
// the agent closed the connection after writing it, so it is there at once.
//
// ENHANCE_YOUR_CALM (the agent's connection limits) is Unserved: nothing
// was processed, and a new connection may pass once others close.
// INADEQUATE_SECURITY (the agent cannot identify this process) is
// Unauthenticated, final: a new connection fails alike.
func (c *Client) refusal(ctx context.Context) *Error {
	if c.framesRead == 0 && !c.cut {
		d := time.Now().Add(refusalWait)
		if dl, ok := ctx.Deadline(); ok && dl.Before(d) {
			d = dl
		}
		c.conn.SetReadDeadline(d)           //nolint:errcheck // the read fails then, and there is no refusal
		c.readFrame(nil)                    //nolint:errcheck // a refusal, or none
		c.conn.SetReadDeadline(time.Time{}) //nolint:errcheck // as above
	}
	// The client opens no stream before the agent's greeting, nor after a
	// GOAWAY: nothing was sent but the client's own greeting.
	if c.refusedWith == nil || c.nextStream != 1 {
		return nil
	}
	why, final := refusalReason(binary.BigEndian.Uint32(c.refusedWith[4:8]), c.refusedWith[8:])
	if final {
		return &Error{Code: Unauthenticated, Message: why}
	}
	// Nothing was processed: a new connection may pass.
	e := lostError("the agent refused the connection: %s", why)
	e.unserved = true
	e.refused = why
	return e
}

// refusalReason is what a refusal's GOAWAY says: its debug data, shown
// safely, and whether it is final (INADEQUATE_SECURITY: a new connection
// from the same process meets it alike) or not (ENHANCE_YOUR_CALM, the
// agent's limits, and any other code).
func refusalReason(code uint32, debug []byte) (why string, final bool) {
	why = printable(debug)
	if why == "" {
		why = fmt.Sprintf("GOAWAY, error code %d", code)
	}
	return why, code == errCodeInadequateSecurity
}

// ParseRefusal reads the agent's refusal of a connection at accept from
// the first bytes the agent sent on it: a whole GOAWAY frame that serves
// no stream (agent/refusal.go). For clients other than Client, such as
// grpc-go's, which only say that the first frame was not SETTINGS.
func ParseRefusal(b []byte) (why string, final, ok bool) {
	if len(b) < 9+8 || b[3] != frameGoAway || binary.BigEndian.Uint32(b[5:9])&(1<<31-1) != 0 {
		return "", false, false
	}
	n := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
	if n < 8 || n > maxFrameSize || len(b) < 9+n || binary.BigEndian.Uint32(b[9:13])&(1<<31-1) != 0 {
		return "", false, false
	}
	why, final = refusalReason(binary.BigEndian.Uint32(b[13:17]), b[17:9+n])
	return why, final, true
}

// ReadFirstFrame reads the first frame an agent sends on a connection,
// whole, and nothing after it: its greeting (SETTINGS) or its refusal at
// accept (a GOAWAY, which ParseRefusal reads). It never returns a frame
// cut short. A frame longer than this client reads (maxFrameSize) is
// returned as its 9-byte header alone, for the caller's HTTP/2 client to
// refuse. For clients other than Client, which reads its frames itself.
func ReadFirstFrame(r io.Reader) ([]byte, error) {
	b := make([]byte, 9, 9+64)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	n := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
	if n > maxFrameSize {
		return b, nil
	}
	b = append(b, make([]byte, n)...)
	if _, err := io.ReadFull(r, b[9:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the header was read: a frame cut short
		}
		return nil, err
	}
	return b, nil
}

// maxReason bounds the agent's reason as the client shows it.
const maxReason = 1024

// printable is at most maxReason bytes of b, every byte other than
// printable ASCII replaced: what the agent says goes to the step's
// terminal.
func printable(b []byte) string {
	if len(b) > maxReason {
		b = b[:maxReason]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, string(b))
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// AttestStepStream calls WorkloadService.AttestStepStream: progress
// reports go to progress as they come, and the result is returned.
func (c *Client) AttestStepStream(ctx context.Context, req *AttestStepRequest, progress func(Progress)) (*AttestStepResponse, error) {
	b, err := req.marshal()
	if err != nil {
		return nil, err
	}
	var res *AttestStepResponse
	err = c.call(ctx, "AttestStepStream", b, func(msg []byte) error {
		p, r, err := unmarshalStreamEvent(msg)
		switch {
		case err != nil:
			return err
		case r != nil:
			res = r
		case p != nil && progress != nil:
			progress(*p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if res == nil {
		return nil, &Error{Code: Internal, Message: "the agent ended the stream without a result"}
	}
	return res, nil
}

// AttestStep calls WorkloadService.AttestStep.
func (c *Client) AttestStep(ctx context.Context, req *AttestStepRequest) (*AttestStepResponse, error) {
	b, err := req.marshal()
	if err != nil {
		return nil, err
	}
	var res *AttestStepResponse
	err = c.unary(ctx, "AttestStep", b, func(msg []byte) error {
		res = new(AttestStepResponse)
		return res.unmarshal(msg)
	})
	return res, err
}

// GetBundle calls WorkloadService.GetBundle.
func (c *Client) GetBundle(ctx context.Context, invocationID string, wait bool) (*GetBundleResponse, error) {
	b, err := marshalGetBundle(invocationID, wait)
	if err != nil {
		return nil, err
	}
	var res *GetBundleResponse
	err = c.unary(ctx, "GetBundle", b, func(msg []byte) error {
		res = new(GetBundleResponse)
		return res.unmarshal(msg)
	})
	return res, err
}

// Identify calls WorkloadService.WhoAmI and drops its answer: the agent
// identifies this process as it would for an attestation, and keeps what
// a watching attestor (SPIRE's subscription) answered for the rest of the
// connection (agent/localapi.go, identify). A step's client calls it
// while the step's command runs, so that the attestation after finds that
// answer ready.
func (c *Client) Identify(ctx context.Context) error {
	return c.unary(ctx, "WhoAmI", nil, func([]byte) error { return nil })
}

// Idle reports whether the connection is up with nothing from the agent
// waiting to be read. After a small call such as Identify's, the agent
// (grpc-go) sends nothing but a GOAWAY (it closes idle connections, and
// all of them when it stops) or the connection's end: its flow-control
// frames for the request come before its answer. So a connection Idle
// reports true of was, an instant before, still one a new call could be
// made on; one Idle reports false of should be closed unused.
func (c *Client) Idle() bool {
	if c.err != nil || c.goAway || c.r.Buffered() > 0 {
		return false
	}
	rc, err := c.rawConn()
	if err != nil {
		return false
	}
	var ready bool
	var perr error
	if err := rc.Control(func(fd uintptr) { ready, perr = readable(fd) }); err != nil {
		return false
	}
	return perr == nil && !ready
}

// AwaitAgent waits, between calls, until the agent sends something or
// ends the connection, and returns nil then, having read nothing; or until
// ctx ends, and returns its error, the connection as it was. Between
// calls the agent sends a GOAWAY or nothing; a caller holding an idle
// connection closes it when AwaitAgent returns nil.
func (c *Client) AwaitAgent(ctx context.Context) error {
	if c.err != nil {
		return c.err
	}
	if c.r.Buffered() > 0 {
		return nil
	}
	rc, err := c.rawConn()
	if err != nil {
		return err
	}
	interrupted := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetReadDeadline(time.Unix(1, 0)) //nolint:errcheck // a closed connection ends the wait anyway
		close(interrupted)
	})
	err = rc.Read(func(fd uintptr) bool {
		ready, err := readable(fd)
		return err != nil || ready
	})
	if !stop() {
		<-interrupted
		c.conn.SetReadDeadline(time.Time{}) //nolint:errcheck // as above
		return ctx.Err()
	}
	return err
}

// rawConn is the connection's socket, for polling it without reading.
func (c *Client) rawConn() (syscall.RawConn, error) {
	sc, ok := c.conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("agentclient: the connection is not a socket")
	}
	return sc.SyscallConn()
}

// readable reports, without waiting, whether the socket fd has something
// to read or its peer has closed it.
func readable(fd uintptr) (bool, error) {
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}, 0)
		if err != unix.EINTR {
			return n > 0, err
		}
	}
}

// unary makes a call that answers with exactly one message.
func (c *Client) unary(ctx context.Context, method string, req []byte, decode func([]byte) error) error {
	n := 0
	err := c.call(ctx, method, req, func(msg []byte) error {
		if n++; n > 1 {
			return &Error{Code: Internal, Message: "the agent answered a unary call with more than one message"}
		}
		return decode(msg)
	})
	if err == nil && n == 0 {
		err = &Error{Code: Internal, Message: "the agent answered a unary call with no message"}
	}
	return err
}

// call makes one call of method with the encoded message req, handing each
// message of the answer to onMsg, and returns the call's status.
func (c *Client) call(ctx context.Context, method string, req []byte, onMsg func([]byte) error) (err error) {
	if c.err != nil {
		return c.err
	}
	// The context's end interrupts reads and writes by the connection's
	// deadline.
	if d, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(d) //nolint:errcheck // a closed connection fails the call anyway
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) }) //nolint:errcheck // as above
	defer func() {
		if !stop() {
			// The context ended: the connection's state is unknown.
			c.err = ctxError(ctx.Err())
			if err != nil {
				err = c.err
			}
		}
		c.conn.SetDeadline(time.Time{}) //nolint:errcheck // as above
	}()
	s, err := c.open(ctx, method)
	if err != nil {
		return c.fail(ctx, err)
	}
	if err := c.send(s, req); err != nil {
		return c.fail(ctx, err)
	}
	for !s.done {
		if err := c.readFrame(s); err != nil {
			return c.fail(ctx, err)
		}
		for {
			msg, ok, err := s.next()
			if err != nil {
				return c.resetStream(ctx, s, err)
			}
			if !ok {
				break
			}
			if err := onMsg(msg); err != nil {
				var e *Error
				if !errors.As(err, &e) {
					err = &Error{Code: Internal, Message: "decoding the agent's answer: " + err.Error()}
				}
				return c.resetStream(ctx, s, err)
			}
		}
	}
	if s.status.Code == OK && len(s.buf) > 0 {
		return &Error{Code: Internal, Message: "the agent's answer ended inside a message"}
	}
	if s.status.Code == Canceled {
		// The agent cancels a call whose grpc-timeout passed (grpc-go
		// resets it with CANCEL); as grpc-go's client does, such a call
		// failed by its deadline.
		if d, ok := ctx.Deadline(); ok && !d.After(time.Now()) {
			return &Error{Code: DeadlineExceeded, Message: "context deadline exceeded"}
		}
	}
	if s.status.Code != OK {
		return s.status
	}
	return nil
}

// fail ends the connection after err, which later calls also return.
func (c *Client) fail(ctx context.Context, err error) error {
	e, isErr := err.(*Error)
	switch {
	case ctx.Err() != nil:
		err = ctxError(ctx.Err())
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = ctxError(context.DeadlineExceeded)
	case isErr && !e.lost:
		// The agent's answer, or not HTTP/2 as the agent speaks it.
	default:
		// The connection ended, or reading or writing it failed: the
		// agent may have closed it at accept, saying why.
		if r := c.refusal(ctx); r != nil {
			err = r
		} else if !isErr {
			err = lostError("%v", err)
		}
	}
	c.err = err
	c.conn.Close()
	return err
}

// resetStream abandons stream s (RST_STREAM CANCEL) after err.
func (c *Client) resetStream(ctx context.Context, s *stream, err error) error {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], 0x8) // CANCEL
	c.writeFrame(frameRSTStream, 0, s.id, b[:])
	if ferr := c.w.Flush(); ferr != nil {
		c.fail(ctx, ferr) //nolint:errcheck // err says what went wrong first
	}
	return err
}

func ctxError(err error) *Error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Code: DeadlineExceeded, Message: "context deadline exceeded"}
	}
	return &Error{Code: Canceled, Message: "context canceled"}
}

// stream is one call's state.
type stream struct {
	id         uint32
	sendWindow int64
	consumed   int64 // received since its window was last replenished

	headers bool   // response headers were read
	buf     []byte // received message bytes not yet handed out
	status  *Error // the call's status, from trailers or a reset
	done    bool
}

// next returns the next whole message in s.buf.
func (s *stream) next() ([]byte, bool, error) {
	if len(s.buf) < 5 {
		return nil, false, nil
	}
	if s.buf[0] != 0 {
		return nil, false, &Error{Code: Internal, Message: "the agent sent a compressed message, which this client did not ask for"}
	}
	n := binary.BigEndian.Uint32(s.buf[1:5])
	if n > MaxMessageBytes {
		return nil, false, &Error{Code: ResourceExhausted, Message: fmt.Sprintf("received message larger than max (%d vs. %d)", n, MaxMessageBytes)}
	}
	if len(s.buf) < 5+int(n) {
		return nil, false, nil
	}
	msg := s.buf[5 : 5+n]
	s.buf = s.buf[5+n:]
	if len(s.buf) == 0 {
		s.buf = nil // the next message gets its own array; msg keeps this one
	}
	return msg, true, nil
}

// open waits for the agent's greeting and opens a stream for method.
func (c *Client) open(ctx context.Context, method string) (*stream, error) {
	if !c.greeted {
		if err := c.awaitGreeting(); err != nil {
			if c.greeted {
				// Greeted, then acknowledging the greeting failed: the
				// agent did answer; not Unserved, whatever the timing.
				return nil, err
			}
			return nil, beforeGreeting(err)
		}
	}
	if c.goAway || c.nextStream > 1<<31-1 {
		return nil, lostError("the agent is closing the connection")
	}
	s := &stream{id: c.nextStream, sendWindow: c.initWindow}
	c.nextStream += 2

	c.encBuf.Reset()
	for _, f := range [][2]string{
		{":method", "POST"},
		{":scheme", "http"},
		{":path", "/hallmark.agent.v1.WorkloadService/" + method},
		{":authority", "localhost"},
		{"content-type", "application/grpc"},
		{"te", "trailers"},
		{"user-agent", "hallmark-agentclient"},
	} {
		c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}) //nolint:errcheck // writes to a bytes.Buffer
	}
	if d, ok := ctx.Deadline(); ok {
		c.enc.WriteField(hpack.HeaderField{Name: "grpc-timeout", Value: grpcTimeout(time.Until(d))}) //nolint:errcheck // as above
	}
	block := c.encBuf.Bytes()
	typ := byte(frameHeaders)
	for {
		n := min(len(block), c.maxSendFrame)
		var flags byte
		if n == len(block) {
			flags = flagEndHeaders
		}
		c.writeFrame(typ, flags, s.id, block[:n])
		block, typ = block[n:], frameContinuation
		if len(block) == 0 {
			return s, nil
		}
	}
}

// beforeGreeting marks err, the failure to read the agent's greeting,
// as Unserved when the connection ended (closed or reset by the agent,
// for whatever reason: its limits, a peer it cannot identify, its stop);
// a timeout or a context's end is left to fail (fail turns a context's
// end into its code before the caller sees err).
func beforeGreeting(err error) error {
	if e, ok := err.(*Error); ok {
		e.unserved = e.lost
		return e
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	e := lostError("%v", err)
	e.unserved = true
	return e
}

// awaitGreeting reads frames until the agent's SETTINGS, for at most
// c.greetWithin.
func (c *Client) awaitGreeting() error {
	var late atomic.Bool
	t := time.AfterFunc(c.greetWithin, func() {
		late.Store(true)
		c.conn.SetReadDeadline(time.Unix(1, 0)) //nolint:errcheck // the call fails anyway
	})
	var err error
	for !c.greeted && err == nil {
		err = c.readFrame(nil)
	}
	if !t.Stop() || late.Load() {
		// The read deadline may be in the past now: the call fails and
		// takes the connection with it.
		return connError("no HTTP/2 greeting from the agent within %v", c.greetWithin)
	}
	return err
}

// send sends the message req on s and ends the stream, within the flow
// control windows the agent grants.
func (c *Client) send(s *stream, req []byte) error {
	msg := make([]byte, 5+len(req))
	binary.BigEndian.PutUint32(msg[1:5], uint32(len(req)))
	copy(msg[5:], req)
	for len(msg) > 0 {
		for min(c.connWindow, s.sendWindow) <= 0 {
			if err := c.w.Flush(); err != nil {
				return err
			}
			if err := c.readFrame(s); err != nil {
				return err
			}
			if s.done {
				return nil // answered (an error) before reading the request
			}
		}
		n := int(min(int64(len(msg)), int64(c.maxSendFrame), c.connWindow, s.sendWindow))
		var flags byte
		if n == len(msg) {
			flags = flagEndStream
		}
		c.writeFrame(frameData, flags, s.id, msg[:n])
		c.connWindow -= int64(n)
		s.sendWindow -= int64(n)
		msg = msg[n:]
	}
	return c.w.Flush()
}

// readFrame reads one frame and acts on it; s is the open stream, if any.
func (c *Client) readFrame(s *stream) error {
	if _, err := io.ReadFull(c.r, c.hdr[:]); err != nil {
		c.cut = c.cut || err != io.EOF // io.EOF: nothing of a frame was read
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return lostError("the agent closed the connection")
		}
		return err
	}
	length := int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
	typ, flags := c.hdr[3], c.hdr[4]
	id := binary.BigEndian.Uint32(c.hdr[5:9]) & (1<<31 - 1)
	if length > maxFrameSize {
		return connError("a frame of %d bytes, more than %d", length, maxFrameSize)
	}
	if c.frame == nil {
		c.frame = make([]byte, maxFrameSize)
	}
	payload := c.frame[:length]
	if _, err := io.ReadFull(c.r, payload); err != nil {
		c.cut = true
		return lostError("reading a frame: %v", err)
	}
	c.framesRead++
	mine := s != nil && id == s.id && !s.done
	if (c.blockStream != 0) != (typ == frameContinuation) || (typ == frameContinuation && id != c.blockStream) {
		return connError("header block out of order")
	}
	switch typ {
	case frameSettings:
		if id != 0 || length%6 != 0 {
			return connError("malformed SETTINGS frame")
		}
		if flags&flagAck != 0 {
			return nil
		}
		if err := c.settings(s, payload); err != nil {
			return err
		}
		c.writeFrame(frameSettings, flagAck, 0, nil)
		c.greeted = true
		return c.w.Flush()
	case framePing:
		if id != 0 || length != 8 {
			return connError("malformed PING frame")
		}
		if flags&flagAck == 0 {
			c.writeFrame(framePing, flagAck, 0, payload)
			return c.w.Flush()
		}
	case frameGoAway:
		if id != 0 || length < 8 {
			return connError("malformed GOAWAY frame")
		}
		last := binary.BigEndian.Uint32(payload[:4]) & (1<<31 - 1) // the last stream it will serve
		if c.framesRead == 1 && last == 0 {
			c.refusedWith = append([]byte(nil), payload...) // payload is reused
		}
		c.goAway = true
		if s != nil && !s.done && s.id > last {
			return lostError("the agent is closing the connection (GOAWAY, error code %d)", binary.BigEndian.Uint32(payload[4:8]))
		}
	case frameWindowUpdate:
		if length != 4 {
			return connError("malformed WINDOW_UPDATE frame")
		}
		inc := int64(binary.BigEndian.Uint32(payload) & (1<<31 - 1))
		switch {
		case id == 0:
			c.connWindow += inc
		case mine:
			s.sendWindow += inc
		}
	case frameRSTStream:
		if length != 4 {
			return connError("malformed RST_STREAM frame")
		}
		if mine {
			s.done = true
			if s.status == nil {
				s.status = resetStatus(binary.BigEndian.Uint32(payload))
			}
		}
	case framePushPromise:
		return connError("the agent sent PUSH_PROMISE, which this client disabled")
	case frameData:
		if err := c.consume(length, id, s); err != nil {
			return err
		}
		data, err := unpad(flags, payload)
		if err != nil {
			return err
		}
		if !mine {
			return nil
		}
		if !s.headers {
			return connError("DATA before the response's headers")
		}
		if len(s.buf)+len(data) > 5+MaxMessageBytes {
			// next refuses the message by its length before this.
			return connError("more than a message's worth of data")
		}
		s.buf = append(s.buf, data...)
		if flags&flagEndStream != 0 {
			s.done = true
			if s.status == nil {
				s.status = &Error{Code: Internal, Message: "server closed the stream without sending trailers"}
			}
		}
	case frameHeaders:
		frag, err := unpad(flags, payload)
		if err != nil {
			return err
		}
		if flags&flagPriority != 0 {
			if len(frag) < 5 {
				return connError("malformed HEADERS frame")
			}
			frag = frag[5:]
		}
		return c.headerFragment(s, id, frag, flags&flagEndHeaders != 0, flags&flagEndStream != 0, true)
	case frameContinuation:
		return c.headerFragment(s, id, payload, flags&flagEndHeaders != 0, false, false)
	}
	return nil
}

// settings applies the agent's SETTINGS.
func (c *Client) settings(s *stream, p []byte) error {
	for ; len(p) >= 6; p = p[6:] {
		v := binary.BigEndian.Uint32(p[2:6])
		switch binary.BigEndian.Uint16(p[:2]) {
		case settingHeaderTableSize:
			c.enc.SetMaxDynamicTableSizeLimit(v)
		case settingInitialWindowSize:
			if v > maxWindow {
				return connError("SETTINGS_INITIAL_WINDOW_SIZE %d", v)
			}
			if s != nil {
				s.sendWindow += int64(v) - c.initWindow
			}
			c.initWindow = int64(v)
		case settingMaxFrameSize:
			if v < maxFrameSize || v > 1<<24-1 {
				return connError("SETTINGS_MAX_FRAME_SIZE %d", v)
			}
			c.maxSendFrame = int(v)
		}
	}
	return nil
}

// consume accounts for n received bytes of DATA on stream id and gives
// the windows back once replenishAfter bytes were used.
func (c *Client) consume(n int, id uint32, s *stream) error {
	c.connConsumed += int64(n)
	if c.connConsumed >= replenishAfter {
		c.writeWindowUpdate(0, uint32(c.connConsumed))
		c.connConsumed = 0
	}
	if s != nil && id == s.id && !s.done {
		s.consumed += int64(n)
		if s.consumed >= replenishAfter {
			c.writeWindowUpdate(s.id, uint32(s.consumed))
			s.consumed = 0
		}
	}
	return c.w.Flush()
}

// headerFragment gathers a header block and, at its end, decodes it: the
// decoder's table must see every block, whatever its stream. A block
// split over frames continues in CONTINUATION frames of its stream and
// nothing else comes between them (RFC 9113, section 6.10).
func (c *Client) headerFragment(s *stream, id uint32, frag []byte, end, endStream, first bool) error {
	if first {
		c.block, c.blockStream, c.blockES = c.block[:0], id, endStream
	}
	if len(c.block)+len(frag) > maxHeaderBlock {
		return connError("a header block of more than %d bytes", maxHeaderBlock)
	}
	c.block = append(c.block, frag...)
	if !end {
		return nil
	}
	c.blockStream = 0
	fields, err := c.dec.DecodeFull(c.block)
	if err != nil {
		return connError("decoding headers: %v", err)
	}
	if s == nil || id != s.id || s.done {
		return nil // another stream's, none of this client's
	}
	return s.headerBlock(fields, c.blockES)
}

// headerBlock acts on a decoded header block of s: the response's headers,
// its trailers, or both at once (Trailers-Only).
func (s *stream) headerBlock(fields []hpack.HeaderField, endStream bool) error {
	get := func(name string) (string, bool) {
		for _, f := range fields {
			if f.Name == name {
				return f.Value, true
			}
		}
		return "", false
	}
	if !s.headers {
		s.headers = true
		st, _ := get(":status")
		code, err := strconv.Atoi(st)
		if err != nil {
			return connError("response without a valid :status")
		}
		if code != 200 {
			s.done = true
			s.status = &Error{Code: httpStatusCode(code), Message: fmt.Sprintf("unexpected HTTP status code received from server: %d", code)}
			return nil
		}
		if ct, _ := get("content-type"); !strings.HasPrefix(ct, "application/grpc") {
			s.done = true
			s.status = &Error{Code: Unknown, Message: fmt.Sprintf("unexpected content-type %q", ct)}
			return nil
		}
		if !endStream {
			return nil
		}
	} else if !endStream {
		return connError("a second header block that does not end the stream")
	}
	s.done = true
	gs, ok := get("grpc-status")
	if !ok {
		s.status = &Error{Code: Internal, Message: "the agent's trailers have no grpc-status"}
		return nil
	}
	code, err := strconv.ParseUint(gs, 10, 32)
	if err != nil {
		s.status = &Error{Code: Internal, Message: fmt.Sprintf("malformed grpc-status %q", gs)}
		return nil
	}
	msg, _ := get("grpc-message")
	s.status = &Error{Code: Code(code), Message: decodeMessage(msg)}
	return nil
}

func resetStatus(code uint32) *Error {
	msg := fmt.Sprintf("stream terminated by RST_STREAM with error code: %d", code)
	switch code {
	case 0x7: // REFUSED_STREAM
		return &Error{Code: Unavailable, Message: msg}
	case 0x8: // CANCEL
		return &Error{Code: Canceled, Message: msg}
	case 0xb: // ENHANCE_YOUR_CALM
		return &Error{Code: ResourceExhausted, Message: msg}
	}
	return &Error{Code: Internal, Message: msg}
}

// unpad removes a PADDED frame's padding.
func unpad(flags byte, p []byte) ([]byte, error) {
	if flags&flagPadded == 0 {
		return p, nil
	}
	if len(p) < 1 || int(p[0]) > len(p)-1 {
		return nil, connError("malformed padding")
	}
	return p[1 : len(p)-int(p[0])], nil
}

func (c *Client) writeFrame(typ, flags byte, id uint32, p []byte) {
	var h [9]byte
	h[0], h[1], h[2] = byte(len(p)>>16), byte(len(p)>>8), byte(len(p))
	h[3], h[4] = typ, flags
	binary.BigEndian.PutUint32(h[5:], id)
	c.w.Write(h[:]) //nolint:errcheck // a bufio.Writer's error returns at Flush
	c.w.Write(p)    //nolint:errcheck // as above
}

func (c *Client) writeWindowUpdate(id, inc uint32) {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], inc)
	c.writeFrame(frameWindowUpdate, 0, id, b[:])
}

func appendSetting(b []byte, id uint16, v uint32) []byte {
	b = binary.BigEndian.AppendUint16(b, id)
	return binary.BigEndian.AppendUint32(b, v)
}

// grpcTimeout encodes d as gRPC's grpc-timeout: at most 8 digits and a
// unit, rounded up, so that the call ends by this client's deadline
// rather than by the agent's cancelling it a little earlier.
func grpcTimeout(d time.Duration) string {
	d = max(d, time.Millisecond)
	if ms := (d + time.Millisecond - 1) / time.Millisecond; ms < 1e8 {
		return strconv.FormatInt(int64(ms), 10) + "m"
	}
	return strconv.FormatInt(min(int64((d+time.Second-1)/time.Second), 1e8-1), 10) + "S"
}

// IsSocket reports whether path names a unix socket.
func IsSocket(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}
