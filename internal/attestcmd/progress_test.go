package attestcmd

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/agentclient"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

const mib = 1 << 20

func report(filesDone, filesTotal, mibDone, mibTotal int64) agentclient.Progress {
	return agentclient.Progress{FilesDone: filesDone, FilesTotal: filesTotal, BytesDone: mibDone * mib, BytesTotal: mibTotal * mib}
}

// Must show: what the display writes, given whether stderr is a terminal,
// the mode and when reports arrive; nothing at all where it must stay
// quiet.
func TestProgressDisplay(t *testing.T) {
	// A hash of 300 MiB in 3 files, reported every 150 ms, done at 900 ms.
	slow := []struct {
		at time.Duration
		p  agentclient.Progress
	}{
		{150 * time.Millisecond, report(0, 3, 40, 300)},
		{300 * time.Millisecond, report(0, 3, 90, 300)},
		{450 * time.Millisecond, report(1, 3, 140, 300)},
		{600 * time.Millisecond, report(1, 3, 190, 300)},
		{750 * time.Millisecond, report(2, 3, 250, 300)},
		{900 * time.Millisecond, report(3, 3, 300, 300)},
	}
	// A quick one: only the last counts, at 120 ms.
	quick := slices.Clone(slow[len(slow)-1:])
	quick[0].at = 120 * time.Millisecond

	const (
		l190  = "hallmark: hashing  63% 190.0 MiB of 300.0 MiB, 1/3 files"
		l250  = "hallmark: hashing  83% 250.0 MiB of 300.0 MiB, 2/3 files"
		l40   = "hallmark: hashing  13% 40.0 MiB of 300.0 MiB, 0/3 files"
		lDone = "hallmark: hashed 300.0 MiB in 3 files"
	)
	pad := func(line string, width int) string { return line + strings.Repeat(" ", max(width-len(line), 0)) }
	for _, tc := range []struct {
		name    string
		tty     bool
		mode    progressMode
		reports int // of slow; -1 for quick
		want    string
	}{
		{"auto, not a terminal: quiet", false, progressAuto, len(slow), ""},
		{"never, terminal: quiet", true, progressNever, len(slow), ""},
		{"never, not a terminal: quiet", false, progressNever, len(slow), ""},
		{"auto, terminal, quick: quiet", true, progressAuto, -1, ""},
		{"auto, terminal, slow: one line redrawn after 500 ms, then blanked", true, progressAuto, len(slow),
			"\r" + l190 + "\r" + l250 + "\r" + pad(lDone, len(l250)) + "\r" + strings.Repeat(" ", len(lDone)) + "\r"},
		{"always, terminal, quick: shown and blanked", true, progressAlways, -1,
			"\r" + lDone + "\r" + strings.Repeat(" ", len(lDone)) + "\r"},
		{"always, not a terminal, slow: first, spaced and last lines", false, progressAlways, len(slow),
			l40 + "\n" + lDone + "\n"},
		{"always, not a terminal, quick: the last line", false, progressAlways, -1, lDone + "\n"},
		{"always, not a terminal, cut short: the last counts received", false, progressAlways, 5,
			l40 + "\n" + l250 + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				out   bytes.Buffer
				start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
				now   = start
			)
			d := newProgressDisplay(&out, tc.tty, tc.mode, func() time.Time { return now })
			reports := quick
			if tc.reports >= 0 {
				reports = slow[:tc.reports]
			}
			if d == nil {
				require.Empty(t, tc.want, "no display")
				return
			}
			for _, r := range reports {
				now = start.Add(r.at)
				d.update(r.p)
			}
			d.finish()
			require.Equal(t, tc.want, out.String())
		})
	}
}

func TestProgressLine(t *testing.T) {
	for _, tc := range []struct {
		p    agentclient.Progress
		want string
	}{
		{agentclient.Progress{FilesTotal: 1, BytesDone: 512, BytesTotal: 1024}, "hallmark: hashing  50% 512 B of 1.0 KiB, 0/1 file"},
		{agentclient.Progress{FilesDone: 1, FilesTotal: 1, BytesDone: 1536, BytesTotal: 1536}, "hallmark: hashed 1.5 KiB in 1 file"},
		{agentclient.Progress{FilesDone: 2, FilesTotal: 2}, "hallmark: hashed 0 B in 2 files"},
		{agentclient.Progress{FilesTotal: 9, BytesDone: 3 << 40, BytesTotal: 12 << 40}, "hallmark: hashing  25% 3.0 TiB of 12.0 TiB, 0/9 files"},
		// A file that grew after the walk: never past 100%.
		{agentclient.Progress{FilesDone: 0, FilesTotal: 2, BytesDone: 30, BytesTotal: 20}, "hallmark: hashing 100% 30 B of 20 B, 0/2 files"},
	} {
		require.Equal(t, tc.want, progressLine(tc.p))
	}
}

func TestProgressModeFlag(t *testing.T) {
	var m progressMode
	for _, v := range []string{"auto", "always", "never"} {
		require.NoError(t, m.Set(v))
		require.Equal(t, v, m.String())
	}
	require.ErrorContains(t, m.Set("sometimes"), "not auto, always or never")
}

// fakeStreamAgent answers AttestStepStream with canned messages, or says
// it does not know it, like an agent older than the CLI.
type fakeStreamAgent struct {
	agentv1.UnimplementedWorkloadServiceServer
	noStream bool
	unary    int
	msgs     []*agentv1.AttestStepStreamResponse
}

func (f *fakeStreamAgent) AttestStep(context.Context, *agentv1.AttestStepRequest) (*agentv1.AttestStepResponse, error) {
	f.unary++
	return &agentv1.AttestStepResponse{InvocationId: "unary"}, nil
}

func (f *fakeStreamAgent) AttestStepStream(_ *agentv1.AttestStepRequest, s agentv1.WorkloadService_AttestStepStreamServer) error {
	if f.noStream {
		return status.Error(codes.Unimplemented, "unknown method")
	}
	for _, m := range f.msgs {
		if err := s.Send(m); err != nil {
			return err
		}
	}
	return nil
}

// Must show: attestStep shows progress from the stream and returns its
// result, falls back to AttestStep on an older agent, makes the unary
// call when nothing is to be shown, and treats a stream without a result
// as an error.
func TestAttestStepCall(t *testing.T) {
	progress := func(p agentclient.Progress) *agentv1.AttestStepStreamResponse {
		return &agentv1.AttestStepStreamResponse{Event: &agentv1.AttestStepStreamResponse_Progress{Progress: &agentv1.AttestProgress{
			FilesDone: p.FilesDone, FilesTotal: p.FilesTotal, BytesDone: p.BytesDone, BytesTotal: p.BytesTotal,
		}}}
	}
	result := &agentv1.AttestStepStreamResponse{Event: &agentv1.AttestStepStreamResponse_Result{Result: &agentv1.AttestStepResponse{InvocationId: "streamed"}}}
	for _, tc := range []struct {
		name      string
		agent     *fakeStreamAgent
		display   bool
		wantID    string
		wantErr   string
		wantUnary int
		wantOut   string
	}{
		{"stream", &fakeStreamAgent{msgs: []*agentv1.AttestStepStreamResponse{progress(report(1, 1, 5, 5)), result}}, true,
			"streamed", "", 0, "hallmark: hashed 5.0 MiB in 1 file\n"},
		{"older agent", &fakeStreamAgent{noStream: true}, true, "unary", "", 1, ""},
		{"no display", &fakeStreamAgent{msgs: []*agentv1.AttestStepStreamResponse{result}}, false, "unary", "", 1, ""},
		{"no result", &fakeStreamAgent{msgs: []*agentv1.AttestStepStreamResponse{progress(report(0, 1, 0, 5))}}, true,
			"", "without a result", 0, "hallmark: hashing   0% 0 B of 5.0 MiB, 0/1 file\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket := serveUnix(t, func(s *grpc.Server) { agentv1.RegisterWorkloadServiceServer(s, tc.agent) })
			client, err := agentclient.Dial(context.Background(), socket)
			require.NoError(t, err)
			defer client.Close()
			var out bytes.Buffer
			var d *progressDisplay
			if tc.display {
				d = newProgressDisplay(&out, false, progressAlways, time.Now)
			}
			resp, err := attestStep(context.Background(), client, &agentclient.AttestStepRequest{Step: "build"}, d)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
			} else {
				require.NoError(t, err)
				require.Equal(t, tc.wantID, resp.InvocationID)
			}
			require.Equal(t, tc.wantUnary, tc.agent.unary)
			require.Equal(t, tc.wantOut, out.String())
		})
	}
}

// serveUnix serves a gRPC server on a fresh unix socket until the test ends.
func serveUnix(t *testing.T, register func(*grpc.Server), opts ...grpc.ServerOption) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	srv := grpc.NewServer(opts...)
	register(srv)
	go srv.Serve(ln) //nolint:errcheck // stopped below
	t.Cleanup(srv.Stop)
	return path
}
