package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/net/http2"

	"github.com/hallmark-dev/hallmark/internal/peercred"
)

// Must show: what the local API writes to a connection it closes at accept
// is, as golang.org/x/net/http2 reads it, an HTTP/2 server preface (an
// empty SETTINGS frame) and a GOAWAY that serves no stream, its code
// telling a refusal that may pass later (the limits) from one that will
// not, its debug data why, bounded.
func TestLocalRefusal(t *testing.T) {
	lim := LocalLimits{ConnectionsPerUID: 64, Connections: 1024}
	long := errors.New(strings.Repeat("x", 4096))
	for _, tc := range []struct {
		name     string
		err      error
		wantCode http2.ErrCode
		want     string
	}{
		{"a uid over its limit", fmt.Errorf("%w: uid 1000 has 64 open, the most one uid may", peercred.ErrTooManyConns), http2.ErrCodeEnhanceYourCalm,
			"hallmark-agent: too many connections: uid 1000 has 64 open, the most one uid may (max_connections_per_uid = 64, max_connections = 1024)"},
		{"a pid not visible", fmt.Errorf("%w (uid 1000, pid 0 here)", peercred.ErrPidNotVisible), http2.ErrCodeInadequateSecurity,
			"hallmark-agent: cannot identify the caller: its pid is not visible from the agent's pid namespace (run hallmark-agent in the host's pid namespace, or the step in the agent's)"},
		{"another failure", errors.New("peercred: identify pid 7: open /proc/7/stat: no such file or directory"), http2.ErrCodeInadequateSecurity,
			"hallmark-agent: cannot identify the caller: identify pid 7: open /proc/7/stat: no such file or directory"},
		{"a long reason", long, http2.ErrCodeInadequateSecurity,
			"hallmark-agent: " + ("cannot identify the caller: " + long.Error())[:maxRefusalText]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fr := http2.NewFramer(nil, bytes.NewReader(localRefusal(lim)(tc.err)))
			f, err := fr.ReadFrame()
			require.NoError(t, err)
			settings, ok := f.(*http2.SettingsFrame)
			require.True(t, ok, "first frame %v", f)
			require.False(t, settings.IsAck())
			require.Zero(t, settings.NumSettings())
			f, err = fr.ReadFrame()
			require.NoError(t, err)
			goAway, ok := f.(*http2.GoAwayFrame)
			require.True(t, ok, "second frame %v", f)
			require.Zero(t, goAway.LastStreamID, "no stream served")
			require.Equal(t, tc.wantCode, goAway.ErrCode)
			require.Equal(t, tc.want, string(goAway.DebugData()))
			_, err = fr.ReadFrame()
			require.ErrorIs(t, err, io.EOF, "nothing after")
		})
	}
}

// Must show: the refusals are logged, the first of a reason at once, then
// at most one line every refusalLogEvery for it, which counts the ones
// not logged since; reasons are counted apart.
func TestRefusalLog(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	now := time.Unix(1_700_000_000, 0)
	r := newRefusalLog(zap.New(core), func() time.Time { return now })
	limits := fmt.Errorf("%w: uid 1000 has 64 open", peercred.ErrTooManyConns)
	gone := errors.New("peercred: identify pid 7: gone")

	type line struct {
		reason    string
		notLogged int64
	}
	seen := func() []line {
		var got []line
		for _, e := range logs.TakeAll() {
			f := e.ContextMap()
			got = append(got, line{f[logReason].(string), f[logNotLogged].(int64)})
		}
		return got
	}
	r.record("limits", limits)
	r.record("limits", limits)
	r.record("unidentified", gone)
	require.Equal(t, []line{{"limits", 0}, {"unidentified", 0}}, seen())
	now = now.Add(refusalLogEvery - time.Nanosecond)
	r.record("limits", limits)
	require.Empty(t, seen())
	now = now.Add(time.Nanosecond)
	r.record("limits", limits)
	r.record("unidentified", gone)
	require.Equal(t, []line{{"limits", 2}, {"unidentified", 0}}, seen())
}
