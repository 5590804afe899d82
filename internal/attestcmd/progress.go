package attestcmd

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/hallmark-dev/hallmark/internal/agentclient"
)

// progressMode is the value of --progress: when hashing progress shows.
type progressMode string

const (
	// progressAuto shows progress on a terminal, once hashing has taken
	// progressDelay, and nothing anywhere else.
	progressAuto progressMode = "auto"
	// progressAlways shows it from the start: redrawn on a terminal, as
	// plain lines (at most one every plainEvery, and the last) elsewhere.
	progressAlways progressMode = "always"
	progressNever  progressMode = "never"
)

func (m *progressMode) String() string { return string(*m) }
func (m *progressMode) Type() string   { return "auto|always|never" }
func (m *progressMode) Set(s string) error {
	switch v := progressMode(s); v {
	case progressAuto, progressAlways, progressNever:
		*m = v
		return nil
	}
	return fmt.Errorf("%q is not auto, always or never", s)
}

// Timings of the display. The agent reports at most every 150 ms.
const (
	// progressDelay is how long hashing goes unreported in auto mode:
	// quick attestations, the common case, print nothing.
	progressDelay = 500 * time.Millisecond
	// plainEvery spaces the lines written when the output is not a
	// terminal, so that a CI log stays readable.
	plainEvery = 2 * time.Second
)

// progressDisplay shows the agent's progress reports on one line of a
// terminal, rewritten in place with a carriage return (no escape
// sequences), or as plain lines elsewhere.
type progressDisplay struct {
	w     io.Writer
	tty   bool
	delay time.Duration
	now   func() time.Time
	start time.Time

	width   int       // of the line on the terminal, 0 when none
	printed time.Time // when the last plain line was written
	last    *agentclient.Progress
	lastOut bool // last was written
}

// newProgressDisplay returns how progress shows on w in mode, tty saying
// whether w is a terminal, or nil when it does not show at all: never, or
// auto when w is no terminal. The clock starts now.
func newProgressDisplay(w io.Writer, tty bool, mode progressMode, now func() time.Time) *progressDisplay {
	d := &progressDisplay{w: w, tty: tty, now: now, start: now()}
	switch {
	case mode == progressNever, mode == progressAuto && !tty:
		return nil
	case mode == progressAuto:
		d.delay = progressDelay
	}
	return d
}

// update shows p, if it is time to.
func (d *progressDisplay) update(p agentclient.Progress) {
	now := d.now()
	d.last, d.lastOut = &p, false
	complete := p.FilesDone >= p.FilesTotal && p.BytesDone >= p.BytesTotal
	switch {
	case now.Sub(d.start) < d.delay:
		return
	case d.tty:
		line := progressLine(p)
		pad := max(d.width-len(line), 0)
		fmt.Fprintf(d.w, "\r%s%s", line, strings.Repeat(" ", pad))
		d.width = len(line)
	case complete || d.printed.IsZero() || now.Sub(d.printed) >= plainEvery:
		fmt.Fprintln(d.w, progressLine(p))
		d.printed = now
	default:
		return
	}
	d.lastOut = true
}

// finish leaves the terminal's line blank for what is written next; on
// other outputs, it writes the last counts received if they were held
// back.
func (d *progressDisplay) finish() {
	switch {
	case d.tty && d.width > 0:
		fmt.Fprintf(d.w, "\r%s\r", strings.Repeat(" ", d.width))
		d.width = 0
	case !d.tty && d.last != nil && !d.lastOut && !d.printed.IsZero():
		fmt.Fprintln(d.w, progressLine(*d.last))
		d.lastOut = true
	}
}

// progressLine is one report, short enough for an 80-column terminal.
func progressLine(p agentclient.Progress) string {
	files := "files"
	if p.FilesTotal == 1 {
		files = "file"
	}
	if p.FilesDone >= p.FilesTotal && p.BytesDone >= p.BytesTotal {
		return fmt.Sprintf("hallmark: hashed %s in %d %s", bytesIEC(p.BytesTotal), p.FilesTotal, files)
	}
	pct := 100
	if t := p.BytesTotal; t > 0 {
		pct = int(min(p.BytesDone, t) * 100 / t)
	}
	return fmt.Sprintf("hallmark: hashing %3d%% %s of %s, %d/%d %s",
		pct, bytesIEC(p.BytesDone), bytesIEC(p.BytesTotal), p.FilesDone, p.FilesTotal, files)
}

// bytesIEC formats n bytes with a binary prefix: 999 B, 1.5 KiB, 300.0 MiB.
func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
