package outbox

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// crashChildEnv, when set, makes TestKilledMidCompaction the process it
// kills: it writes to the outbox in the directory the variable names.
const crashChildEnv = "HALLMARK_OUTBOX_CRASH_CHILD"

// crashItem is the item with id as the crash child puts it: large enough
// that the file passes its 64 KiB compaction threshold every few dozen
// items.
func crashItem(id string) Item {
	return Item{
		ID:          id,
		Bundle:      bytes.Repeat([]byte("bundle-"+id+";"), 1500/(len(id)+8)+1),
		Envelope:    bytes.Repeat([]byte("env-"+id+";"), 600/(len(id)+5)+1),
		Certificate: []byte("cert-" + id),
	}
}

// crashLogged is what the crash child records as id's log entry.
func crashLogged(id string) []byte { return []byte(`{"logIndex":"` + id + `"}`) }

// checkSettled requires it, reopened after a crash, to be in the state
// its acknowledged settlement gave it (settled: "logged", "refused"),
// pending if none was asked for, and pending or the state asked for
// (settling) if the settlement was not acknowledged; where prefixes the
// messages.
func checkSettled(t *testing.T, where string, it Item, settling, settled string) {
	t.Helper()
	id, kind := it.ID, settled
	if kind == "" && it.State != Pending {
		kind = settling // asked for, not acknowledged: it may have taken effect
		require.NotEmpty(t, kind, "%s: %s is %v and was never asked to be settled", where, id, it.State)
	}
	switch kind {
	case "logged":
		require.Equal(t, Logged, it.State, "%s: %s was settled logged", where, id)
		require.Equal(t, crashLogged(id), it.Logged, "%s: %s", where, id)
	case "refused":
		require.Equal(t, Refused, it.State, "%s: %s was settled refused", where, id)
		require.Equal(t, "refused "+id, it.Reason, "%s: %s", where, id)
	default:
		require.Equal(t, Pending, it.State, "%s: %s", where, id)
	}
}

// crashTargets are where TestKilledMidCompaction's rounds kill, in turn:
// at a random moment (""), then at each step of a compaction, the last
// one under o.mu.
var crashTargets = slices.Concat([]string{""}, compactionSteps, []string{"swapping"})

// A process killed (SIGKILL) at any moment, and in particular while a
// compaction in the background copies, catches up or swaps the file,
// loses nothing it acknowledged. A child process (this test binary again)
// puts and settles items from eight writers, printing each
// acknowledgement and the items each compaction expires (retention is
// short, so that compactions keep dropping records and moving the
// others); the test kills it, reopens the outbox (with a retention that
// expires nothing) and checks:
//
//   - Open succeeds, moves no record aside as damaged (a write cut short
//     is a torn tail, not damage) and removes the compaction file a kill
//     left (some kill must have left one);
//   - every item whose put was acknowledged is there, whole, unless a
//     compaction said it expired it (which ones retention drops is
//     TestCompactionKeepsLiveDropsExpired's, with a fake clock); only
//     items asked to be settled expire, and some must in the background;
//   - every item is in the state its acknowledged settlement gave it,
//     pending if none was asked for, and pending or the state asked for
//     if the settlement was not acknowledged;
//   - each step of a compaction (copying, copied, catching up, swapping)
//     was the one the child had last reported when some kill was sent.
//
// A kill loses nothing the kernel holds, so this checks the file protocol
// under process crashes, not what an fsync guards against (power loss).
func TestKilledMidCompaction(t *testing.T) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("starts and kills 25 processes")
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	dir := privateDir(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	const rounds = 25
	landed := map[string]int{} // the step the child had last reported at each kill
	said := newChildSaid()     // over all rounds
	tmpLeft := 0               // kills that left a compaction's file for Open to remove
	expiredLater := 0          // "expiring" lines from compactions in the background
	for round := range rounds {
		cmd := exec.Command(exe, "-test.run=^TestKilledMidCompaction$", "-test.v=false")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("HALLMARK_OUTBOX_CRASH_ROUND=%d", round))
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		// Never written to: the child ends when it reads EOF, that is
		// when this process has ended, however it ended.
		_, err = cmd.StdinPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())

		// Kill at a random moment, or as soon as a compaction reports
		// the round's step, once the child has run for a random while
		// (the child goes on for a few microseconds before the signal
		// lands: at that step, or just past it).
		target := crashTargets[round%len(crashTargets)]
		after := time.Duration(rng.IntN(100_000)) * time.Microsecond
		lines := make(chan string, 1024)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 64<<10), 64<<10)
			// Each line is one write of less than PIPE_BUF, so a kill
			// leaves it whole or unwritten; a last line without its
			// newline would be output cut short, and is dropped.
			sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
				if atEOF && bytes.IndexByte(data, '\n') < 0 {
					return len(data), nil, nil
				}
				return bufio.ScanLines(data, atEOF)
			})
			for sc.Scan() {
				lines <- sc.Text()
			}
			if err := sc.Err(); err != nil {
				lines <- "unreadable: " + err.Error()
			}
		}()
		// A round that fails leaves no child behind, nor the reader.
		t.Cleanup(func() {
			cmd.Process.Kill()
			for range lines {
			}
			cmd.Wait()
		})
		var (
			started time.Time
			step    string // the compaction step under way, "" between compactions
			kill    = time.NewTimer(time.Hour)
			killed  bool
		)
		deadline := time.After(30 * time.Second)
	read:
		for {
			select {
			case <-deadline:
				t.Fatalf("round %d: no kill within 30s (the child wrote too slowly or never compacted)", round)
			case <-kill.C:
				require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
				killed = true
				landed[cmp.Or(step, "between compactions")]++
			case line, ok := <-lines:
				if !ok {
					break read
				}
				// Every line was written before the kill, even those
				// read after it: all count.
				fields := strings.SplitN(line, " ", 3)
				switch fields[0] {
				case "ready":
					started = time.Now()
					if target == "" {
						kill.Reset(after)
					}
				case "step":
					step = strings.TrimPrefix(line, "step ")
				case "swapped":
					step = ""
				case "put":
					said.acked[fields[1]] = true
				case "settling":
					for _, id := range strings.Fields(fields[2]) {
						said.settling[id] = fields[1]
					}
				case "expiring":
					for _, id := range strings.Fields(line)[1:] { // fields splits in 3 at most
						said.expired[id] = true
					}
					if !started.IsZero() {
						expiredLater++
					}
				case "settled":
					for _, id := range strings.Fields(fields[2]) {
						said.settled[id] = fields[1]
					}
				default:
					t.Fatalf("round %d: the child said %q", round, line)
				}
				if !killed && target != "" && step == target && time.Since(started) > after/4 {
					require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
					killed = true
					landed[step]++
				}
			}
		}
		err = cmd.Wait()
		var exit *exec.ExitError
		require.ErrorAs(t, err, &exit, "round %d: the child must be killed, not end", round)
		require.Equal(t, syscall.SIGKILL, exit.Sys().(syscall.WaitStatus).Signal(), "round %d", round)

		// A kill mid-compaction leaves its file: Open removes it (its
		// own rewrite replaces it), and reads only the outbox's.
		tmp := filepath.Join(dir, "outbox.log.tmp")
		if _, err := os.Stat(tmp); err == nil {
			tmpLeft++
		}
		o, err := Open(dir, Options{CompactAt: 64 << 10, Retention: longRetention})
		require.NoError(t, err, "round %d: reopen after the kill", round)
		require.Empty(t, o.Damaged(), "round %d: a kill damaged a record", round)
		_, err = os.Stat(tmp)
		require.ErrorIs(t, err, os.ErrNotExist, "round %d: a compaction's file left behind", round)
		checkAfterKill(t, o, fmt.Sprintf("round %d", round), said)
		require.NoError(t, o.Close())
	}
	t.Logf("kills by the compaction step last reported: %v (%d left a compaction's file); %d puts acknowledged, %d settlements, %d items expired (%d expiring lines from compactions in the background)", landed, tmpLeft, len(said.acked), len(said.settled), len(said.expired), expiredLater)
	require.NotZero(t, tmpLeft, "no kill left a compaction's file: Open's removing it is untested")
	require.NotZero(t, expiredLater, "no compaction in the background expired an item: dropping them is untested")
	for _, s := range crashTargets[1:] {
		require.NotZero(t, landed[s], "no kill landed while a compaction was at %q: the test no longer tests that", s)
	}
}

// longRetention is the retention the test reopens the outbox with
// after a kill, and the crash child opens it with: long enough that Open
// expires nothing, so that every item gone was dropped by a compaction
// that said so.
const longRetention = 24 * time.Hour

// childSaid is what the killed crash children reported, by item ID.
type childSaid struct {
	acked    map[string]bool   // puts acknowledged
	settling map[string]string // "logged" or "refused", asked for
	settled  map[string]string // the same, acknowledged
	expired  map[string]bool   // dropped by a compaction as past retention
}

func newChildSaid() childSaid {
	return childSaid{acked: map[string]bool{}, settling: map[string]string{}, settled: map[string]string{}, expired: map[string]bool{}}
}

// checkAfterKill checks the reopened outbox against what the killed
// processes said (where names the crash in messages).
func checkAfterKill(t *testing.T, o *Outbox, where string, said childSaid) {
	t.Helper()
	acked, settling, settled, expired := said.acked, said.settling, said.settled, said.expired
	all := snapshot(t, o)
	for id, it := range all {
		want := crashItem(id)
		require.Equal(t, want.Bundle, it.Bundle, "%s: %s", where, id)
		require.Equal(t, want.Envelope, it.Envelope, "%s: %s", where, id)
		require.Equal(t, want.Certificate, it.Certificate, "%s: %s", where, id)
		require.False(t, expired[id] && it.State == Pending, "%s: a compaction expired %s, which is pending", where, id)
		checkSettled(t, where, it, settling[id], settled[id])
	}
	for id := range acked {
		if _, ok := all[id]; !ok && !expired[id] {
			require.Failf(t, "an acknowledged item is gone", "%s: %s was acknowledged (settlement asked for: %q, acknowledged: %q), no compaction expired it, and it is gone",
				where, id, settling[id], settled[id])
		}
	}
	for id := range expired {
		require.NotEmpty(t, settling[id], "%s: a compaction expired %s, which was never asked to be settled", where, id)
	}
}

// crashChild is the process TestKilledMidCompaction kills: eight writers
// put items and settle them, half logged and half refused, in batches,
// printing each acknowledgement ("put ID", "settled logged|refused
// IDS..."), each settlement before it is asked for ("settling KIND
// IDS..."), each step of a compaction in the background ("step S", and
// "swapped" once it has ended) and the items a compaction drops as past
// retention, when it begins ("expiring IDS..."). It stops only when
// killed, when its stdin ends (the test's process is gone), or after a
// minute.
func crashChild(dir string) {
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(4)
	}()
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(os.Stdout, format+"\n", args...)
	}
	// The compaction's log says when it has ended.
	hook := zap.Hooks(func(e zapcore.Entry) error {
		if e.Message == "Compacted the outbox" || strings.HasPrefix(e.Message, "Compacting the outbox failed") {
			say("swapped")
		}
		return nil
	})
	// Open expires nothing (it would say nothing of it). Compactions
	// expire what was settled 200 ms before (10 ms in odd rounds) and say
	// which: one right away, as Open's would, then those in the
	// background. The outbox keeps time in whole seconds (an item
	// expires once its second, plus retention, has passed), and a round
	// lasts about 100 ms before its kill: the child's clock runs 50 times
	// fast, so that items settled early in a round expire in the
	// compactions later in it. At the real pace few rounds crossed a
	// second, and CI saw runs of 25 rounds where none expired an item in
	// the background. It starts a second past the latest item the file
	// holds (earlier children stamped theirs ahead of real time), so that
	// what earlier rounds settled expires too, as it did at the real
	// pace, and the file does not grow round after round.
	o, err := Open(dir, Options{CompactAt: 64 << 10, Retention: longRetention, Log: zap.New(zapcore.NewNopCore(), hook)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(2)
	}
	round := os.Getenv("HALLMARK_OUTBOX_CRASH_ROUND")
	o.mu.Lock()
	start, base := time.Now(), time.Now()
	for _, sl := range o.items {
		if after := time.Unix(sl.Created+1, 0); after.After(base) {
			base = after
		}
	}
	o.opts.Now = func() time.Time { return base.Add(50 * time.Since(start)) }
	o.opts.Retention = 200 * time.Millisecond
	if n, _ := strconv.Atoi(round); n%2 == 1 {
		o.opts.Retention = 10 * time.Millisecond
	}
	o.pause = func(step string) { say("step %s", step) }
	o.expiring = func(ids []string) {
		for chunk := range slices.Chunk(ids, 100) { // lines of less than PIPE_BUF
			say("expiring %s", strings.Join(chunk, " "))
		}
	}
	err = o.rewrite()
	o.mu.Unlock()
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child: compact:", err)
		os.Exit(2)
	}
	say("ready")
	for w := range 8 {
		go func() {
			var batch []string
			for k := 0; ; k++ {
				id := fmt.Sprintf("r%s-w%d-%d", round, w, k)
				if err := o.Put(crashItem(id)); err != nil {
					fmt.Fprintln(os.Stderr, "crash child: put:", err)
					os.Exit(2)
				}
				say("put %s", id)
				if batch = append(batch, id); len(batch) < 4 {
					continue
				}
				kind, ss := "logged", make([]Settlement, len(batch))
				if k%8 == 7 {
					kind = "refused"
				}
				for i, id := range batch {
					ss[i] = Settlement{ID: id, Logged: crashLogged(id)}
					if kind == "refused" {
						ss[i] = Settlement{ID: id, Reason: "refused " + id}
					}
				}
				ids := strings.Join(batch, " ")
				say("settling %s %s", kind, ids)
				if err := o.Settle(ss); err != nil {
					fmt.Fprintln(os.Stderr, "crash child: settle:", err)
					os.Exit(2)
				}
				say("settled %s %s", kind, ids)
				batch = batch[:0]
			}
		}()
	}
	time.Sleep(time.Minute)
	fmt.Fprintln(os.Stderr, "crash child: not killed within a minute")
	os.Exit(3)
}

// The file a compaction renames over the outbox is whole at the rename: a
// crash right after it (the file copied as the rename left it, then
// opened) loses nothing acknowledged, including what was appended after
// the compaction's last catch-up round, which only the swap itself
// copies. TestKilledMidCompaction's kills land in that moment only by
// chance; this looks at it every time.
func TestCrashRightAfterCompactionRename(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{CompactAt: 8 << 10})
	require.NoError(t, err)
	defer o.Close()
	inside, release := pauseAt(o, "catching up")
	defer release()
	var (
		renamed []byte           // the outbox's file right after the rename
		want    map[string]State // every item acknowledged by then
	)
	o.mu.Lock()
	o.rename = func(from, to string) error {
		if err := os.Rename(from, to); err != nil || renamed != nil {
			return err
		}
		// Under o.mu with no write in flight: o.items is every write
		// acknowledged.
		b, err := os.ReadFile(to)
		if err != nil {
			return err
		}
		renamed, want = b, map[string]State{}
		for id, sl := range o.items {
			want[id] = sl.State
		}
		return nil
	}
	o.mu.Unlock()

	require.NoError(t, o.Put(item("p0")))
	untilInside(t, inside, func(i int) error {
		id := fmt.Sprint("s", i)
		if err := o.Put(item(id)); err != nil {
			return err
		}
		return o.MarkLogged(id, []byte(`{"logIndex":"`+id+`"}`))
	})
	// After the first catch-up round looked, before the swap: these are
	// in the last tail.
	require.NoError(t, o.MarkLogged("p0", []byte(`{"logIndex":"p0"}`)))
	require.NoError(t, o.Put(item("n0")))
	require.NoError(t, o.Put(item("n1")))
	require.NoError(t, o.MarkRefused("n1", "refused n1"))
	release()
	o.mu.Lock()
	waitCompacted(o)
	o.mu.Unlock()
	require.Zero(t, o.CompactionFailures())
	require.NotNil(t, renamed, "no compaction renamed its file")
	require.Equal(t, Logged, want["p0"])
	require.Equal(t, Pending, want["n0"])
	require.Equal(t, Refused, want["n1"])

	crashed := privateDir(t)
	require.NoError(t, os.WriteFile(filepath.Join(crashed, "outbox.log"), renamed, 0o600))
	c, err := Open(crashed, Options{})
	require.NoError(t, err)
	defer c.Close()
	require.Empty(t, c.Damaged())
	_, torn := c.Torn()
	require.False(t, torn, "the renamed file ends in a record cut short")
	got := snapshot(t, c)
	for id, state := range want {
		it, ok := got[id]
		require.True(t, ok, "%s was acknowledged before the rename and is not in the renamed file", id)
		require.Equal(t, state, it.State, id)
		require.Equal(t, item(id).Bundle, it.Bundle, id)
	}
	require.Len(t, got, len(want))
}
