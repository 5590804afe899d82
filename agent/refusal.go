package agent

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http2"

	"github.com/hallmark-dev/hallmark/internal/peercred"
)

// maxRefusalText bounds the reason a refused connection is told.
const maxRefusalText = 512

// Reasons a connection is refused at accept, as the metric
// hallmark_agent_local_connections_refused_total and the log name them.
const (
	refusedLimits       = "limits"       // over max_connections_per_uid or max_connections
	refusedUnidentified = "unidentified" // the caller could not be identified
)

// localRefusal is how the local API refuses a connection at accept, err
// saying why (peercred.ListenConfig.Refused): the reason it is counted and
// logged under, and what the caller is told: one HTTP/2 GOAWAY frame that
// serves no stream, last stream 0 (RFC 9113, section 6.8), whose debug
// data says why.
//
//   - INADEQUATE_SECURITY: the caller's pid is not visible from the
//     agent's pid namespace. A new connection from it fails alike.
//   - ENHANCE_YOUR_CALM: any other refusal: over max_connections_per_uid
//     or max_connections, or an identification that failed otherwise
//     (the peer gone, descriptors or memory short). Nothing was
//     processed, and a new connection may pass.
//
// No SETTINGS frame comes first, so this is not a server's connection
// preface (RFC 9113, section 3.4): any HTTP/2 client takes the connection
// as failed, as when the agent closed it without a word. Preceded by an
// empty SETTINGS, grpc-go's clients took the connection as ready, then
// gone, and dialed again at once, over and over until their deadline
// (TestGRPCClientsFailAtOnceWhenRefused). hallmark-attest and hallmark
// read the GOAWAY (agentclient). The caller learns only what it could
// find out about itself, and the limits in force.
func localRefusal(lim LocalLimits, err error) (reason string, goAway []byte) {
	reason, code := refusedUnidentified, http2.ErrCodeEnhanceYourCalm
	why := "cannot identify the caller: " + strings.TrimPrefix(err.Error(), "peercred: ")
	switch {
	case errors.Is(err, peercred.ErrPidNotVisible):
		code = http2.ErrCodeInadequateSecurity
		why = "cannot identify the caller: its pid is not visible from the agent's pid namespace " +
			"(run hallmark-agent in the host's pid namespace, or the step in the agent's)"
	case errors.Is(err, peercred.ErrTooManyConns):
		reason = refusedLimits
		why = fmt.Sprintf("%s (max_connections_per_uid = %d, max_connections = %d)",
			strings.TrimPrefix(err.Error(), "peercred: "), lim.ConnectionsPerUID, lim.Connections)
	}
	if len(why) > maxRefusalText {
		why = why[:maxRefusalText]
	}
	var b bytes.Buffer
	// Writes to a bytes.Buffer; the only failure is a debug text longer
	// than a frame, which maxRefusalText rules out.
	http2.NewFramer(&b, nil).WriteGoAway(0, code, []byte("hallmark-agent: "+why)) //nolint:errcheck // as above
	return reason, b.Bytes()
}

// refusalLogEvery is how often, at most, the agent logs the connections it
// closed at accept for one reason; the metric
// hallmark_agent_local_connections_refused_total counts every one.
const refusalLogEvery = 10 * time.Second

// refusalLog logs the connections the local API closes at accept: the
// first for a reason at once, then at most one line per refusalLogEvery
// for it, which counts those not logged since.
type refusalLog struct {
	log *zap.Logger
	now func() time.Time

	mu        sync.Mutex
	last      map[string]time.Time
	notLogged map[string]int
}

func newRefusalLog(log *zap.Logger, now func() time.Time) *refusalLog {
	return &refusalLog{log: log, now: now, last: map[string]time.Time{}, notLogged: map[string]int{}}
}

func (r *refusalLog) record(reason string, err error) {
	r.mu.Lock()
	now := r.now()
	if t, ok := r.last[reason]; ok && now.Sub(t) < refusalLogEvery {
		r.notLogged[reason]++
		r.mu.Unlock()
		return
	}
	n := r.notLogged[reason]
	r.last[reason], r.notLogged[reason] = now, 0
	r.mu.Unlock()
	r.log.Warn("Closed a local API connection at accept; its caller was told why",
		zap.String(logReason, reason), zap.Error(err), zap.Int(logNotLogged, n))
}
