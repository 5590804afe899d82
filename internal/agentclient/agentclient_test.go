package agentclient

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/internal/peercred"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

func TestMaxMessageBytes(t *testing.T) {
	require.Equal(t, 4*attest.MaxBundleSize, MaxMessageBytes)
}

// Must show: the hand-written encoding is the schema's, both ways, as the
// generated types read and write it.
func TestMessagesMatchTheSchema(t *testing.T) {
	started := time.Date(2026, 12, 5, 17, 0, 0, 123456789, time.UTC)
	req := &AttestStepRequest{
		Step: "build", Workspace: "/ws", Products: []string{"out/a", "out/ü"}, Materials: []string{"src"},
		StartedOn: started, Command: []string{"make", "", "all"}, CallerClaims: map[string]string{"ci": "github", "run_id": "7", "e": ""},
	}
	var got agentv1.AttestStepRequest
	enc, err := req.marshal()
	require.NoError(t, err)
	require.NoError(t, proto.Unmarshal(enc, &got))
	require.True(t, proto.Equal(&agentv1.AttestStepRequest{
		Step: "build", Workspace: "/ws", Products: []string{"out/a", "out/ü"}, Materials: []string{"src"},
		StartedOn: timestamppb.New(started), Command: []string{"make", "", "all"},
		CallerClaims: map[string]string{"ci": "github", "run_id": "7", "e": ""},
	}, &got), "%v", &got)
	again, err := req.marshal()
	require.NoError(t, err)
	require.Equal(t, enc, again, "deterministic")

	var empty agentv1.AttestStepRequest
	enc, err = (&AttestStepRequest{}).marshal()
	require.NoError(t, err)
	require.NoError(t, proto.Unmarshal(enc, &empty))
	require.Nil(t, empty.StartedOn)

	var gb agentv1.GetBundleRequest
	enc, err = marshalGetBundle("inv-1", true)
	require.NoError(t, err)
	require.NoError(t, proto.Unmarshal(enc, &gb))
	require.True(t, proto.Equal(&agentv1.GetBundleRequest{InvocationId: "inv-1", Wait: true}, &gb))

	// Answers, with a field this client does not know appended.
	unknown := protowire.AppendTag(nil, 99, protowire.BytesType)
	unknown = protowire.AppendString(unknown, "from a newer agent")
	res := &agentv1.AttestStepResponse{
		Bundle: []byte(`{"b":1}`), InvocationId: "inv-1", Logged: true,
		Subjects: []*agentv1.Subject{{Name: "out/a", Sha256: "ab"}, {Name: "out/b", Sha256: "cd"}},
	}
	b, err := proto.Marshal(res)
	require.NoError(t, err)
	var r AttestStepResponse
	require.NoError(t, r.unmarshal(append(b, unknown...)))
	require.Equal(t, AttestStepResponse{
		Bundle: []byte(`{"b":1}`), InvocationID: "inv-1", Logged: true,
		Subjects: []Subject{{"out/a", "ab"}, {"out/b", "cd"}},
	}, r)

	for _, ev := range []*agentv1.AttestStepStreamResponse{
		{Event: &agentv1.AttestStepStreamResponse_Progress{Progress: &agentv1.AttestProgress{FilesDone: 1, FilesTotal: 2, BytesDone: 3, BytesTotal: 1 << 40}}},
		{Event: &agentv1.AttestStepStreamResponse_Result{Result: res}},
	} {
		b, err := proto.Marshal(ev)
		require.NoError(t, err)
		p, r, err := unmarshalStreamEvent(append(b, unknown...))
		require.NoError(t, err)
		if want := ev.GetProgress(); want != nil {
			require.Nil(t, r)
			require.Equal(t, Progress{1, 2, 3, 1 << 40}, *p)
		} else {
			require.Nil(t, p)
			require.Equal(t, "inv-1", r.InvocationID)
			require.Len(t, r.Subjects, 2)
		}
	}

	b, err = proto.Marshal(&agentv1.GetBundleResponse{Bundle: []byte("x"), Logged: true})
	require.NoError(t, err)
	var g GetBundleResponse
	require.NoError(t, g.unmarshal(b))
	require.Equal(t, GetBundleResponse{Bundle: []byte("x"), Logged: true}, g)

	// A known field of the wrong wire type, a cut message.
	bad := protowire.AppendTag(nil, 4, protowire.BytesType)
	bad = protowire.AppendString(bad, "true")
	require.ErrorIs(t, r.unmarshal(bad), errMalformed)
	require.ErrorIs(t, r.unmarshal(b[:len(b)-1]), errMalformed)
}

// fakeAgent is a WorkloadService on grpc-go, served the way hallmark-agent
// serves it.
type fakeAgent struct {
	agentv1.UnimplementedWorkloadServiceServer
	got      chan *agentv1.AttestStepRequest
	stream   []*agentv1.AttestStepStreamResponse
	unary    *agentv1.AttestStepResponse
	err      error
	block    bool
	bundleOK bool
	noStream bool // like an agent older than AttestStepStream
}

func (f *fakeAgent) AttestStep(ctx context.Context, req *agentv1.AttestStepRequest) (*agentv1.AttestStepResponse, error) {
	if f.got != nil {
		f.got <- req
	}
	if f.block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, f.err
	}
	return f.unary, nil
}

func (f *fakeAgent) AttestStepStream(req *agentv1.AttestStepRequest, s agentv1.WorkloadService_AttestStepStreamServer) error {
	if f.noStream {
		return status.Error(codes.Unimplemented, "unknown method AttestStepStream for service hallmark.agent.v1.WorkloadService")
	}
	if f.got != nil {
		f.got <- req
	}
	for _, m := range f.stream {
		if err := s.Send(m); err != nil {
			return err
		}
	}
	return f.err
}

func (f *fakeAgent) GetBundle(_ context.Context, req *agentv1.GetBundleRequest) (*agentv1.GetBundleResponse, error) {
	if !f.bundleOK || !req.GetWait() {
		return nil, status.Error(codes.NotFound, "no such invocation")
	}
	return &agentv1.GetBundleResponse{Bundle: []byte("logged:" + req.GetInvocationId()), Logged: true}, nil
}

// serve serves f behind the agent's own listener and credentials: peer
// credentials and, when this process may watch execs, the exec watch and
// its refusal of requests sent before the agent's greeting.
func serve(t *testing.T, f *fakeAgent) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := peercred.ListenConfig{Path: filepath.Join(dir, "agent.sock"), GID: -1}
	if w, err := peercred.WatchExecs(); err == nil {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done; w.Close() })
		cfg.Execs = w
	} else {
		t.Logf("without the exec watch: %v", err)
	}
	l, err := peercred.Listen(cfg)
	require.NoError(t, err)
	srv := grpc.NewServer(grpc.Creds(peercred.Credentials()), grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(1<<30))
	agentv1.RegisterWorkloadServiceServer(srv, f)
	go srv.Serve(l) //nolint:errcheck // stopped by the cleanup
	t.Cleanup(srv.Stop)
	return cfg.Path
}

func dial(t *testing.T, socket string) *Client {
	t.Helper()
	c, err := Dial(context.Background(), socket)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// Must show: the calls a step makes work against grpc-go's server behind
// the agent's listener, with flow control, large messages both ways,
// header blocks split over frames, and every status passed through
// unchanged.
func TestCallsAgainstGRPC(t *testing.T) {
	ctx := context.Background()
	result := &agentv1.AttestStepResponse{Bundle: []byte("bundle"), InvocationId: "inv-1", Subjects: []*agentv1.Subject{{Name: "P", Sha256: "00"}}}
	progress := &agentv1.AttestStepStreamResponse{Event: &agentv1.AttestStepStreamResponse_Progress{Progress: &agentv1.AttestProgress{FilesTotal: 1, BytesTotal: 5}}}

	t.Run("stream, then GetBundle on the same connection", func(t *testing.T) {
		f := &fakeAgent{got: make(chan *agentv1.AttestStepRequest, 1), bundleOK: true, stream: []*agentv1.AttestStepStreamResponse{
			progress, progress, {Event: &agentv1.AttestStepStreamResponse_Result{Result: result}},
		}}
		c := dial(t, serve(t, f))
		var seen []Progress
		res, err := c.AttestStepStream(ctx, &AttestStepRequest{Step: "build", Products: []string{"P"}}, func(p Progress) { seen = append(seen, p) })
		require.NoError(t, err)
		require.Equal(t, "inv-1", res.InvocationID)
		require.Equal(t, []Progress{{FilesTotal: 1, BytesTotal: 5}, {FilesTotal: 1, BytesTotal: 5}}, seen)
		require.Equal(t, "build", (<-f.got).GetStep())
		got, err := c.GetBundle(ctx, "inv-1", true)
		require.NoError(t, err)
		require.Equal(t, &GetBundleResponse{Bundle: []byte("logged:inv-1"), Logged: true}, got)
		_, err = c.GetBundle(ctx, "inv-1", false)
		require.Equal(t, &Error{Code: NotFound, Message: "no such invocation"}, err)
	})

	t.Run("a stream without a result", func(t *testing.T) {
		c := dial(t, serve(t, &fakeAgent{stream: []*agentv1.AttestStepStreamResponse{progress}}))
		_, err := c.AttestStepStream(ctx, &AttestStepRequest{Step: "build"}, nil)
		require.Equal(t, Internal, CodeOf(err))
		require.ErrorContains(t, err, "without a result")
	})

	t.Run("statuses and messages pass unchanged", func(t *testing.T) {
		for _, msg := range []string{
			"refused: no rule allows step build",
			"100% of 5 files: ünïcode, tab\there, newline\nthere, %41 literal",
			strings.Repeat("long message; ", 3000), // its header block spans CONTINUATION frames
		} {
			c := dial(t, serve(t, &fakeAgent{err: status.Error(codes.PermissionDenied, msg)}))
			_, err := c.AttestStep(ctx, &AttestStepRequest{Step: "build"})
			require.Equal(t, &Error{Code: PermissionDenied, Message: msg}, err)
			_, err = c.AttestStepStream(ctx, &AttestStepRequest{Step: "build"}, nil)
			require.Equal(t, &Error{Code: PermissionDenied, Message: msg}, err, "and the connection is still good")
		}
	})

	t.Run("an agent without the method", func(t *testing.T) {
		c := dial(t, serve(t, &fakeAgent{noStream: true}))
		_, err := c.AttestStepStream(ctx, &AttestStepRequest{Step: "build"}, nil)
		require.Equal(t, Unimplemented, CodeOf(err))
	})

	t.Run("large request and answer", func(t *testing.T) {
		products := make([]string, 40000) // about 2 MiB: many frames, past the agent's windows
		for i := range products {
			products[i] = strings.Repeat("p", 40) + "/" + string(rune('a'+i%26))
		}
		big := &agentv1.AttestStepResponse{Bundle: make([]byte, 20<<20), InvocationId: "big"}
		for i := range big.Bundle {
			big.Bundle[i] = byte(i)
		}
		f := &fakeAgent{got: make(chan *agentv1.AttestStepRequest, 1), unary: big}
		c := dial(t, serve(t, f))
		res, err := c.AttestStep(ctx, &AttestStepRequest{Step: "build", Products: products})
		require.NoError(t, err)
		require.Equal(t, big.Bundle, res.Bundle)
		require.Equal(t, products, (<-f.got).GetProducts())
	})

	t.Run("an answer over the limit", func(t *testing.T) {
		c := dial(t, serve(t, &fakeAgent{unary: &agentv1.AttestStepResponse{Bundle: make([]byte, MaxMessageBytes)}}))
		_, err := c.AttestStep(ctx, &AttestStepRequest{Step: "build"})
		require.Equal(t, ResourceExhausted, CodeOf(err))
		require.ErrorContains(t, err, "larger than max")
	})

	t.Run("deadline", func(t *testing.T) {
		c := dial(t, serve(t, &fakeAgent{block: true}))
		dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err := c.AttestStep(dctx, &AttestStepRequest{Step: "build"})
		require.Equal(t, DeadlineExceeded, CodeOf(err))
		// Again on the same connection: whether the agent reset the
		// stream (the connection is still good) or the client gave up
		// first (it is not used again), the call ends by its deadline.
		dctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err = c.AttestStep(dctx, &AttestStepRequest{Step: "build"})
		require.Equal(t, DeadlineExceeded, CodeOf(err))
	})

	t.Run("no agent", func(t *testing.T) {
		_, err := Dial(ctx, filepath.Join(t.TempDir(), "none.sock"))
		require.Equal(t, Unavailable, CodeOf(err))
		require.ErrorContains(t, err, "connection error")
	})

	t.Run("agent gone mid-call", func(t *testing.T) {
		dir := t.TempDir()
		l, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
		require.NoError(t, err)
		defer l.Close()
		go func() {
			conn, err := l.Accept()
			if err == nil {
				conn.Read(make([]byte, 100)) //nolint:errcheck // then gone
				conn.Close()
			}
		}()
		c := dial(t, filepath.Join(dir, "s.sock"))
		_, err = c.AttestStep(ctx, &AttestStepRequest{Step: "build"})
		require.Equal(t, Unavailable, CodeOf(err))
		require.ErrorContains(t, err, "connection error")
		require.True(t, ConnectionLost(err), "%v", err)
	})

	t.Run("only an ended connection is lost", func(t *testing.T) {
		c := dial(t, serve(t, &fakeAgent{err: status.Error(codes.Unavailable, "the log is unreachable")}))
		_, err := c.AttestStep(ctx, &AttestStepRequest{Step: "build"})
		require.Equal(t, Unavailable, CodeOf(err))
		require.False(t, ConnectionLost(err), "the agent's own answer")
		_, err = Dial(ctx, filepath.Join(t.TempDir(), "none.sock"))
		require.False(t, ConnectionLost(err), "never connected")
	})
}

func TestDecodeMessage(t *testing.T) {
	for in, want := range map[string]string{
		"plain":       "plain",
		"%25 and %0A": "% and \n",
		"%C3%BC":      "ü",
		"bad %zz %":   "bad %zz %",
		"end %4":      "end %4",
	} {
		require.Equal(t, want, decodeMessage(in), in)
	}
}

func TestGRPCTimeout(t *testing.T) {
	require.Equal(t, "1m", grpcTimeout(0))
	require.Equal(t, "600000m", grpcTimeout(10*time.Minute))
	require.Equal(t, "100000S", grpcTimeout(100000*time.Second))
	require.Equal(t, "99999999S", grpcTimeout(1e9*time.Second))
}

// Must show: a socket whose server never greets (a stopped agent: the
// kernel still queues connections; or someone else's socket) fails a call
// as unavailable within the greeting timeout, as gRPC's clients give up
// connecting, not after the call's 10 minutes.
func TestNoGreeting(t *testing.T) {
	for _, tc := range []struct {
		name  string
		serve func(conn net.Conn)
	}{
		{"a listener that accepts nothing", nil},
		{"accepts and says nothing", func(conn net.Conn) {
			io.Copy(io.Discard, conn) //nolint:errcheck // until the client goes
		}},
		{"accepts and sends PINGs only", func(conn net.Conn) {
			go io.Copy(io.Discard, conn) //nolint:errcheck // until the client goes
			for {
				if _, err := conn.Write([]byte("\x00\x00\x08\x06\x00\x00\x00\x00\x00pingping")); err != nil {
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, socket := listenUnix(t)
			if tc.serve != nil {
				go func() {
					conn, err := l.Accept()
					if err == nil {
						defer conn.Close()
						tc.serve(conn)
					}
				}()
			}
			c := dial(t, socket)
			c.greetWithin = 300 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			_, err := c.AttestStep(ctx, &AttestStepRequest{Step: "build"})
			require.Equal(t, Unavailable, CodeOf(err), "%v", err)
			require.ErrorContains(t, err, "connection error: no HTTP/2 greeting from the agent within 300ms")
			require.Less(t, time.Since(start), 30*time.Second)
			_, err = c.AttestStep(ctx, &AttestStepRequest{Step: "build"})
			require.Equal(t, Unavailable, CodeOf(err), "and the connection is not used again")
		})
	}
}

// Must show: a call given up by its caller (a signal ends the context
// just as the step's command exits) says canceled, not that no agent is
// running, as grpc-go's client did.
func TestDialCanceled(t *testing.T) {
	socket := serve(t, &fakeAgent{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Dial(ctx, socket)
	require.Equal(t, &Error{Code: Canceled, Message: "context canceled"}, err)
}

// Must show: a string that is not UTF-8 (a file name, a command's
// argument) is refused as the generated code refuses it (proto3 strings),
// before anything is sent, with the message grpc-go's client gave.
func TestInvalidUTF8Refused(t *testing.T) {
	bad := "out/\xff"
	for _, tc := range []struct {
		name  string
		field string
		req   AttestStepRequest
		gen   *agentv1.AttestStepRequest
	}{
		{"step", "step", AttestStepRequest{Step: bad}, &agentv1.AttestStepRequest{Step: bad}},
		{"workspace", "workspace", AttestStepRequest{Workspace: bad}, &agentv1.AttestStepRequest{Workspace: bad}},
		{"product", "products", AttestStepRequest{Products: []string{"ok", bad}}, &agentv1.AttestStepRequest{Products: []string{"ok", bad}}},
		{"material", "materials", AttestStepRequest{Materials: []string{bad}}, &agentv1.AttestStepRequest{Materials: []string{bad}}},
		{"command", "command", AttestStepRequest{Command: []string{"printf", bad}}, &agentv1.AttestStepRequest{Command: []string{"printf", bad}}},
		{"claim key", "caller_claims", AttestStepRequest{CallerClaims: map[string]string{bad: "v"}}, &agentv1.AttestStepRequest{CallerClaims: map[string]string{bad: "v"}}},
		{"claim value", "caller_claims", AttestStepRequest{CallerClaims: map[string]string{"ref": bad}}, &agentv1.AttestStepRequest{CallerClaims: map[string]string{"ref": bad}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, genErr := proto.Marshal(tc.gen)
			require.Error(t, genErr, "the generated code refuses it")
			f := &fakeAgent{got: make(chan *agentv1.AttestStepRequest, 2)}
			c := dial(t, serve(t, f))
			want := &Error{Code: Internal, Message: "grpc: error while marshaling: proto: field hallmark.agent.v1.AttestStepRequest." + tc.field + " contains invalid UTF-8"}
			_, err := c.AttestStep(context.Background(), &tc.req)
			require.Equal(t, want, err)
			_, err = c.AttestStepStream(context.Background(), &tc.req, nil)
			require.Equal(t, want, err)
			require.Empty(t, f.got, "nothing reached the agent")
		})
	}
	_, err := marshalGetBundle(bad, true)
	require.Equal(t, Internal, CodeOf(err))
}

// Must show: Unserved is a connection the agent ended before its
// greeting, whichever way the client learns it (its own greeting's write
// fails, EPIPE; or the read, ECONNRESET or EOF), and nothing else: not a
// greeting that never comes, not an agent that greeted and then went,
// not a connection lost under a call.
func TestUnserved(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		serve func(net.Conn)
		want  bool
	}{
		{"closed at accept", func(c net.Conn) { c.Close() }, true},
		{"closed once the client's greeting is read", func(c net.Conn) { c.Read(make([]byte, 100)); c.Close() }, true}, //nolint:errcheck // then gone
		{"greeted, then closed", func(c net.Conn) {
			time.Sleep(5 * time.Millisecond)
			c.Write([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0}) //nolint:errcheck // empty SETTINGS
			c.Close()
		}, false},
		{"no greeting", func(c net.Conn) { io.Copy(io.Discard, c) }, false}, //nolint:errcheck // until the client goes
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket := serveEach(t, tc.serve)
			for range 20 { // both orders of the agent's close and the client's write
				err := attestOnce(ctx, socket, 200*time.Millisecond)
				require.Equal(t, Unavailable, CodeOf(err), "%v", err)
				require.Equal(t, tc.want, Unserved(err), "%v", err)
				if !tc.want && tc.name == "no greeting" {
					break
				}
			}
		})
	}
	t.Run("lost under a call", func(t *testing.T) {
		c := dial(t, serve(t, &fakeAgent{block: true}))
		go func() { time.Sleep(100 * time.Millisecond); c.conn.Close() }()
		_, err := c.AttestStep(ctx, &AttestStepRequest{Step: "build"})
		require.False(t, Unserved(err), "%v", err)
	})
}

// serveEach serves every connection to a new socket with serve, until the
// test ends; it returns the socket's path.
func serveEach(t *testing.T, serve func(net.Conn)) string {
	l, socket := listenUnix(t)
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go serve(conn)
		}
	}()
	return socket
}

// attestOnce makes one AttestStep call on a new connection to socket.
func attestOnce(ctx context.Context, socket string, greetWithin time.Duration) error {
	c, err := Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close()
	c.greetWithin = greetWithin
	_, err = c.AttestStep(ctx, &AttestStepRequest{Step: "build"})
	return err
}

// Must show: ReadFirstFrame returns the agent's first frame whole, as
// golang.org/x/net/http2 wrote it, and not a byte after it; a frame cut
// short is an error, never a frame; a frame longer than the client reads
// comes back as its header alone.
func TestReadFirstFrame(t *testing.T) {
	frames := func(write func(fr *http2.Framer) error) []byte {
		var b bytes.Buffer
		require.NoError(t, write(http2.NewFramer(&b, nil)))
		return b.Bytes()
	}
	settings := frames(func(fr *http2.Framer) error {
		return fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 16})
	})
	goAway := frames(func(fr *http2.Framer) error {
		return fr.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, []byte("hallmark-agent: why"))
	})
	ping := frames(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{1}) })
	large := frames(func(fr *http2.Framer) error { return fr.WriteData(1, false, make([]byte, maxFrameSize+1)) })
	empty := frames(func(fr *http2.Framer) error { return fr.WriteSettings() })
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	for _, tc := range []struct {
		name    string
		sent    []byte
		want    []byte
		wantErr error
	}{
		{"the greeting, then more", cat(settings, ping), settings, nil},
		{"a refusal", goAway, goAway, nil},
		{"an empty SETTINGS", cat(empty, ping), empty, nil},
		{"a frame longer than the client reads", large, large[:9], nil},
		{"nothing", nil, nil, io.EOF},
		{"a header cut short", goAway[:5], nil, io.ErrUnexpectedEOF},
		{"a payload cut short", goAway[:len(goAway)-1], nil, io.ErrUnexpectedEOF},
		{"a header alone", goAway[:9], nil, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(tc.sent)
			got, err := ReadFirstFrame(r)
			require.ErrorIs(t, err, tc.wantErr)
			require.Equal(t, tc.want, got)
			if err == nil {
				require.Equal(t, len(tc.sent)-len(tc.want), r.Len(), "read nothing after the frame")
			}
		})
	}
}

// Must show: the agent's refusal of a connection at accept (a GOAWAY that
// serves no stream as its first frame, agent/refusal.go) is read whichever
// comes first, the agent's close or the client's greeting: over the
// agent's limits it is Unserved, with the agent's reason (Refused); a
// caller the agent cannot identify is Unauthenticated and not Unserved, so
// nobody tries again. A GOAWAY that is not the agent's first frame, or
// that serves a stream, is no refusal. The frames are written by
// golang.org/x/net/http2, as grpc-go writes them.
func TestRefused(t *testing.T) {
	ctx := context.Background()
	const limits = "hallmark-agent: too many connections: uid 1000 has 64 open (max_connections_per_uid = 64)"
	frames := func(write func(*http2.Framer)) []byte {
		var b bytes.Buffer
		write(http2.NewFramer(&b, nil))
		return b.Bytes()
	}
	refusal := func(code http2.ErrCode, last uint32, why string) []byte {
		return frames(func(f *http2.Framer) {
			f.WriteGoAway(last, code, []byte(why)) //nolint:errcheck // to a bytes.Buffer
		})
	}
	for _, tc := range []struct {
		name        string
		say         []byte
		wantCode    Code
		wantUnserve tristate
		wantRefused string // Refused's reason, or the message when Unauthenticated
	}{
		{"over the limits", refusal(http2.ErrCodeEnhanceYourCalm, 0, limits), Unavailable, yes, limits},
		{"unidentified", refusal(http2.ErrCodeInadequateSecurity, 0, "hallmark-agent: cannot identify the caller"), Unauthenticated, no, "hallmark-agent: cannot identify the caller"},
		{"no reason given", refusal(http2.ErrCodeEnhanceYourCalm, 0, ""), Unavailable, yes, "GOAWAY, error code 11"},
		{"control characters", refusal(http2.ErrCodeEnhanceYourCalm, 0, "a\x1b[2Jb\nc\u00e9\x7f"), Unavailable, yes, "a?[2Jb?c??"},
		{"a long reason", refusal(http2.ErrCodeEnhanceYourCalm, 0, strings.Repeat("x", 4000)), Unavailable, yes, strings.Repeat("x", maxReason)},
		// Unserved or not, by the order of the agent's close and the
		// client's greeting, as TestUnserved shows; never Refused.
		{"a stream served", refusal(http2.ErrCodeEnhanceYourCalm, 1, limits), Unavailable, eitherWay, ""},
		{"not the first frame", frames(func(f *http2.Framer) {
			f.WriteSettings()                                              //nolint:errcheck // to a bytes.Buffer
			f.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, []byte(limits)) //nolint:errcheck // as above
		}), Unavailable, eitherWay, ""},
		// The same, the connection held open: the client reads the
		// GOAWAY after its request went out.
		{"not the first frame, held open", frames(func(f *http2.Framer) {
			f.WriteSettings()                                              //nolint:errcheck // to a bytes.Buffer
			f.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, []byte(limits)) //nolint:errcheck // as above
		}), Unavailable, no, ""},
	} {
		for _, order := range []struct {
			name  string
			first func(net.Conn)
		}{
			{"before the client's greeting", func(net.Conn) {}},
			{"after the client's greeting", func(c net.Conn) { c.Read(make([]byte, 100)) }}, //nolint:errcheck // then refused
		} {
			t.Run(tc.name+"/"+order.name, func(t *testing.T) {
				socket := serveEach(t, func(c net.Conn) {
					order.first(c)
					c.Write(tc.say) //nolint:errcheck // then gone
					if strings.HasSuffix(tc.name, "held open") {
						io.Copy(io.Discard, c) //nolint:errcheck // until the client goes
					}
					c.Close()
				})
				for range 20 { // both orders of the agent's close and the client's writes
					err := attestOnce(ctx, socket, 5*time.Second)
					require.Equal(t, tc.wantCode, CodeOf(err), "%v", err)
					if tc.wantUnserve != eitherWay {
						require.Equal(t, tc.wantUnserve == yes, Unserved(err), "%v", err)
					}
					why, refused := Refused(err)
					switch {
					case tc.wantCode == Unauthenticated:
						require.Equal(t, tc.wantRefused, err.(*Error).Message)
						require.False(t, refused)
					case tc.wantRefused != "":
						require.True(t, refused, "%v", err)
						require.Equal(t, tc.wantRefused, why)
					default:
						require.False(t, refused, "%v", err)
					}
				}
			})
		}
	}
}

type tristate int

const (
	no tristate = iota
	yes
	eitherWay
)

// listenUnix listens on a unix socket in a new directory until the test
// ends; not t.TempDir(): a socket's path must fit in 108 bytes.
func listenUnix(t *testing.T) (net.Listener, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "hm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", socket)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l, socket
}
