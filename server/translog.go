package server

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/tsa"
	"github.com/hallmark-dev/hallmark/plugins/store"
)

// Defaults of the appender.
const (
	DefaultLogMaxBatch  = 1024
	DefaultLogBatchWait = 2 * time.Millisecond
)

// TransparencyLogConfig configures a TransparencyLog.
type TransparencyLogConfig struct {
	Store Store
	// Key signs checkpoints; KeyCreated is when it was made (the start of
	// its validity in the trusted root), taken down to the whole second:
	// timestamps are whole seconds, so a start within a second would
	// refuse what is signed in the rest of it.
	Key        ed25519.PrivateKey
	KeyCreated time.Time
	// Origin is the checkpoint origin; see docs/log.md.
	Origin string
	// TSA timestamps every accepted signature (RFC 3161).
	TSA *tsa.Signer
	Log *zap.Logger
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
	// MaxBatch bounds the entries of one append transaction (one
	// submission of more is still committed whole).
	MaxBatch int
	// BatchWait is how long the appender collects submissions after the
	// first one of a batch.
	BatchWait time.Duration
}

// TransparencyLog is hallmark-server's append-only log: an RFC 6962 Merkle
// tree over entry bodies (attest/tlog), kept in a Store, with a signed
// checkpoint for every appended batch. One appender goroutine (Run) owns
// the tree; submitters queue entries to it and wait for the batch that
// carries them to commit.
type TransparencyLog struct {
	store   Store
	key     ed25519.PrivateKey
	pub     ed25519.PublicKey
	created time.Time
	origin  string
	logID   []byte
	tsa     *tsa.Signer
	issuers *issuerStates
	now     func() time.Time
	log     *zap.Logger
	metrics *logMetrics

	maxBatch  int
	batchWait time.Duration
	reqs      chan *appendRequest
	stopped   chan struct{} // closed when Run returns
	stopOnce  sync.Once

	// tree is the compact range [0, size): touched only by the appender
	// (and by NewTransparencyLog before it starts).
	tree *compact.Range

	headMu sync.RWMutex
	head   logHead

	cas       caRecords
	admission atomic.Pointer[admission]
	certs     *certCache
	// reloadMu serializes submissions' re-reads of the store;
	// reloadStarted is when the last one began.
	reloadMu      sync.Mutex
	reloadStarted time.Time
}

// logHead is the latest committed tree.
type logHead struct {
	size uint64
	root []byte
	note []byte // signed checkpoint
}

var rangeFactory = &compact.RangeFactory{Hash: tlog.Hasher.HashChildren}

// errLogStopped: the appender is gone (the server is stopping).
var errLogStopped = errors.New("the transparency log is stopping")

// NewTransparencyLog opens the log kept in cfg.Store: it checks that the
// latest checkpoint verifies with cfg.Key and cfg.Origin and that the
// stored tree hashes to it, or starts an empty log with a checkpoint of
// size 0. Run must be running for Submit to make progress.
func NewTransparencyLog(ctx context.Context, cfg TransparencyLogConfig) (*TransparencyLog, error) {
	if cfg.Store == nil {
		return nil, errors.New("transparency log: no store")
	}
	if len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("transparency log: no Ed25519 key")
	}
	if err := validOrigin(cfg.Origin); err != nil {
		return nil, fmt.Errorf("transparency log: %w", err)
	}
	if cfg.TSA == nil {
		return nil, errors.New("transparency log: no timestamp authority")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultLogMaxBatch
	}
	if cfg.BatchWait <= 0 {
		cfg.BatchWait = DefaultLogBatchWait
	}
	pub := cfg.Key.Public().(ed25519.PublicKey)
	logID := tlog.KeyID(cfg.Origin, pub)
	l := &TransparencyLog{
		store: cfg.Store, key: cfg.Key, pub: pub, created: cfg.KeyCreated.Truncate(time.Second), origin: cfg.Origin, logID: logID,
		tsa: cfg.TSA, now: cfg.Now, log: cfg.Log, metrics: newLogMetrics(cfg.TSA),
		maxBatch: cfg.MaxBatch, batchWait: cfg.BatchWait,
		reqs: make(chan *appendRequest, 1024), stopped: make(chan struct{}),
		certs: newCertCache(), cas: caRecords{known: make(map[string]bool)},
	}
	if err := l.loadTree(ctx); err != nil {
		return nil, err
	}
	states, err := cfg.Store.IssuerStates(ctx)
	if err != nil {
		return nil, fmt.Errorf("transparency log: issuer states: %w", err)
	}
	l.issuers = newIssuerStates(states)
	if err := l.loadCAs(ctx); err != nil {
		return nil, fmt.Errorf("transparency log: signing CAs: %w", err)
	}
	l.metrics.size.Set(float64(l.head.size))
	return l, nil
}

// loadTree restores the tree from the store, or starts it.
func (l *TransparencyLog) loadTree(ctx context.Context) error {
	cp, err := l.store.LatestCheckpoint(ctx)
	if errors.Is(err, store.ErrNotFound) {
		root := tlog.Hasher.EmptyRoot()
		note, err := tlog.SignCheckpoint(tlog.Checkpoint{Origin: l.origin, Size: 0, Root: root}, l.key)
		if err != nil {
			return fmt.Errorf("transparency log: sign checkpoint: %w", err)
		}
		if err := l.store.AppendBatch(ctx, store.Batch{Checkpoint: store.Checkpoint{Size: 0, Note: note}}); err != nil {
			return fmt.Errorf("transparency log: start: %w", err)
		}
		l.tree = rangeFactory.NewEmptyRange(0)
		l.setHead(logHead{size: 0, root: root, note: note})
		return nil
	}
	if err != nil {
		return fmt.Errorf("transparency log: %w", err)
	}
	c, err := tlog.OpenCheckpoint(cp.Note, l.origin, l.pub)
	if err != nil {
		return fmt.Errorf("transparency log: the latest checkpoint does not verify with this log key and origin %q (was the key or the origin changed?): %w", l.origin, err)
	}
	if c.Size != cp.Size {
		return fmt.Errorf("transparency log: checkpoint stored for size %d says %d", cp.Size, c.Size)
	}
	ids := compact.RangeNodes(0, c.Size, nil)
	hashes, err := l.store.Nodes(ctx, storeIDs(ids))
	if err != nil {
		return fmt.Errorf("transparency log: load tree: %w", err)
	}
	tree, err := rangeFactory.NewRange(0, c.Size, hashes)
	if err != nil {
		return fmt.Errorf("transparency log: load tree: %w", err)
	}
	root, err := rootOf(tree)
	if err != nil {
		return fmt.Errorf("transparency log: load tree: %w", err)
	}
	if !bytes.Equal(root, c.Root) {
		return fmt.Errorf("transparency log: the stored tree of size %d does not hash to its checkpoint's root", c.Size)
	}
	l.tree = tree
	l.setHead(logHead{size: c.Size, root: c.Root, note: cp.Note})
	return nil
}

// storedHead is the head of the store's latest checkpoint, which may be
// ahead of this log's own when another server shares the store.
func (l *TransparencyLog) storedHead(ctx context.Context) (logHead, error) {
	cp, err := l.store.LatestCheckpoint(ctx)
	if err != nil {
		return logHead{}, err
	}
	c, err := tlog.OpenCheckpoint(cp.Note, l.origin, l.pub)
	if err != nil {
		return logHead{}, err
	}
	return logHead{size: c.Size, root: c.Root, note: cp.Note}, nil
}

// refreshHead publishes the store's latest checkpoint when it is ahead of
// this log's (another server appended), so that /log/checkpoint and
// proofs keep up. The appender's tree catches up at its next append.
func (l *TransparencyLog) refreshHead(ctx context.Context) error {
	h, err := l.storedHead(ctx)
	if err != nil {
		return err
	}
	l.headMu.Lock()
	defer l.headMu.Unlock()
	if h.size > l.head.size {
		l.head = h
		l.metrics.size.Set(float64(h.size))
	}
	return nil
}

func (l *TransparencyLog) setHead(h logHead) {
	l.headMu.Lock()
	defer l.headMu.Unlock()
	l.head = h
}

func rootOf(r *compact.Range) ([]byte, error) {
	if r.End() == 0 {
		return tlog.Hasher.EmptyRoot(), nil
	}
	return r.GetRootHash(nil)
}

// validOrigin checks a checkpoint origin: a signed-note key name (no
// spaces, no '+') without a URL scheme or a trailing '/', since the
// trusted root's baseUrl is "https://" followed by it and verifiers take
// the baseUrl without scheme and trailing '/' as the origin.
func validOrigin(o string) error {
	if o == "" {
		return errors.New("log origin is empty")
	}
	for _, r := range o {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("log origin %q must be a lowercase host name: the trusted root's baseUrl is https://ORIGIN and Sigstore clients take the checkpoint origin from its host", o)
		}
	}
	if strings.HasPrefix(o, ".") || strings.HasSuffix(o, ".") || strings.Contains(o, "..") {
		return fmt.Errorf("log origin %q is not a host name", o)
	}
	return nil
}

// Origin is the log's checkpoint origin.
func (l *TransparencyLog) Origin() string { return l.origin }

// PublicKey is the log's checkpoint-signing key.
func (l *TransparencyLog) PublicKey() ed25519.PublicKey { return l.pub }

// Checkpoint returns the latest signed checkpoint.
func (l *TransparencyLog) Checkpoint() []byte {
	return l.currentHead().note
}

func (l *TransparencyLog) currentHead() logHead {
	l.headMu.RLock()
	defer l.headMu.RUnlock()
	return l.head
}

// pendingEntry is one checked submission on its way through the appender.
type pendingEntry struct {
	envelope  []byte // as submitted
	env       *dssepb.Envelope
	cert      []byte
	spiffeID  string
	body      []byte   // canonical entry body (attest/tlog)
	leaf      []byte   // the body's leaf hash
	key       []byte   // dedupe key: the leaf hash of the legacy body
	timestamp []byte   // RFC 3161 timestamp of the signature
	digests   [][]byte // raw sha256 subject digests

	// Set by the appender before the request's done closes.
	refusal  error
	err      error
	entry    store.Entry
	existing bool         // found in the store: prove against the head
	repeat   bool         // a repeat of an entry earlier in this batch
	batch    *batchResult // appended (or repeated) in this batch
}

type appendRequest struct {
	items  []*pendingEntry
	queued time.Time
	done   chan struct{}
}

// batchResult is a committed batch: the tree it made and every node a
// proof for one of its entries needs. Read-only once published.
type batchResult struct {
	size  uint64
	root  []byte
	note  []byte
	nodes map[compact.NodeID][]byte
}

// Run is the appender: it collects queued submissions for up to BatchWait
// after the first was queued, or MaxBatch entries, appends them in one
// store transaction with one signed checkpoint, and answers them. It
// returns nil when ctx ends (after committing what was already queued) and
// an error only when the store says another writer changed the log. Run
// once: afterwards Submit fails.
func (l *TransparencyLog) Run(ctx context.Context) error {
	defer l.stopOnce.Do(func() { close(l.stopped) })
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go l.watchIssuers(watchCtx)
	for {
		var first *appendRequest
		select {
		case <-ctx.Done():
			return l.drain(context.WithoutCancel(ctx))
		case first = <-l.reqs:
		}
		// Collect until BatchWait after the first request was queued
		// (under load that moment has passed: take what is queued and
		// go), then whatever else is already waiting, up to MaxBatch.
		batch := []*appendRequest{first}
		n := len(first.items)
		var timer *time.Timer
		if wait := time.Until(first.queued.Add(l.batchWait)); wait > 0 {
			timer = time.NewTimer(wait)
		}
	collect:
		for n < l.maxBatch {
			if timer == nil {
				select {
				case r := <-l.reqs:
					batch = append(batch, r)
					n += len(r.items)
				default:
					break collect
				}
				continue
			}
			select {
			case r := <-l.reqs:
				batch = append(batch, r)
				n += len(r.items)
			case <-timer.C:
				timer = nil
			case <-ctx.Done():
				break collect
			}
		}
		if timer != nil {
			timer.Stop()
		}
		if err := l.commit(context.WithoutCancel(ctx), batch); err != nil {
			return err
		}
	}
}

// drain commits what is queued when the log stops, so that no submitter
// waits in vain; it gives up after a few seconds.
func (l *TransparencyLog) drain(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		var batch []*appendRequest
		for n := 0; n < l.maxBatch; {
			select {
			case r := <-l.reqs:
				batch = append(batch, r)
				n += len(r.items)
				continue
			default:
			}
			break
		}
		if len(batch) == 0 {
			return nil
		}
		if err := l.commit(ctx, batch); err != nil {
			return err
		}
	}
}

// commit appends one batch. Refusals and store failures are reported to
// the submitters; only store.ErrConflict is returned.
//
// Resubmissions are rare, so the batch is first written without looking
// its entries up: the store's unique dedupe key refuses one that is
// already logged (store.ErrDuplicate), and only then are the batch's keys
// looked up and the batch written again without them. The appender is the
// only writer, so nothing can slip in between the lookup and the commit.
func (l *TransparencyLog) commit(ctx context.Context, reqs []*appendRequest) error {
	var items []*pendingEntry
	for _, r := range reqs {
		items = append(items, r.items...)
	}
	defer func() {
		for _, r := range reqs {
			close(r.done)
		}
	}()
	var err error
	for attempt := 1; ; attempt++ {
		err = l.appendOnce(ctx, items)
		if !errors.Is(err, store.ErrConflict) {
			break
		}
		// Another server sharing the store appended first (the store
		// serializes appenders and refuses a batch that does not continue
		// the log as stored): catch up with the stored tree and append
		// after it. The log stays one linear tree.
		l.metrics.conflicts.Inc()
		if attempt == maxConflictRetries {
			break
		}
		if rerr := l.loadTree(ctx); rerr != nil {
			for _, it := range items {
				it.err = fmt.Errorf("reload the log after another writer's append: %w", rerr)
			}
			return nil
		}
	}
	for _, it := range items {
		switch {
		case it.err != nil:
		case it.refusal != nil:
			l.metrics.appends.WithLabelValues(appendRefused).Inc()
		case it.existing || it.repeat:
			l.metrics.appends.WithLabelValues(appendDuplicate).Inc()
		case it.batch != nil:
			l.metrics.appends.WithLabelValues(appendAppended).Inc()
		}
	}
	if errors.Is(err, store.ErrConflict) {
		l.log.Error("The transparency log keeps being changed by another writer; stopping", zap.Error(err), zap.Int("attempts", maxConflictRetries))
		return fmt.Errorf("transparency log: %w", err)
	}
	return nil
}

// maxConflictRetries bounds how often one batch is retried after other
// writers appended first.
const maxConflictRetries = 100

// appendOnce appends items against the tree as this log holds it. A batch
// that holds an entry already stored (store.ErrDuplicate) is written
// again without it, answered with the stored entry. It returns
// store.ErrConflict when the store has moved on.
func (l *TransparencyLog) appendOnce(ctx context.Context, items []*pendingEntry) error {
	err := l.appendItems(ctx, items, nil)
	if !errors.Is(err, store.ErrDuplicate) {
		return err
	}
	keys := make([][]byte, len(items))
	for i, it := range items {
		keys[i] = it.key
	}
	found, lerr := l.store.EntriesByDedupeKey(ctx, keys)
	if lerr != nil {
		for _, it := range items {
			it.refusal, it.batch, it.err = nil, nil, fmt.Errorf("look up duplicates: %w", lerr)
		}
		return nil
	}
	stored := make(map[string]store.Entry, len(found))
	for _, e := range found {
		stored[string(e.DedupeKey)] = e
	}
	return l.appendItems(ctx, items, stored)
}

// appendItems appends items, minus those in stored (which are answered
// with the stored entry), in one store transaction, and sets every item's
// outcome. On failure the tree is as before and the store's error is
// returned (and set on the items).
func (l *TransparencyLog) appendItems(ctx context.Context, items []*pendingEntry, stored map[string]store.Entry) error {
	for _, it := range items {
		it.refusal, it.err, it.entry, it.existing, it.repeat, it.batch = nil, nil, store.Entry{}, false, false, nil
	}
	integrated := l.now().Truncate(time.Second)
	start := l.tree.End()
	saved := slices.Clone(l.tree.Hashes())
	res := &batchResult{nodes: make(map[compact.NodeID][]byte)}
	// A proof for an entry of this batch needs, left of the batch, only
	// nodes of the compact range [0, start), and otherwise only nodes
	// the batch's appends complete.
	for i, id := range compact.RangeNodes(0, start, nil) {
		res.nodes[id] = saved[i]
	}
	var (
		entries []store.Entry
		nodes   []store.Node
		placed  []*pendingEntry // appended or repeated in this batch
		inBatch = make(map[string]int)
	)
	visit := func(id compact.NodeID, hash []byte) {
		res.nodes[id] = hash
		nodes = append(nodes, store.Node{NodeID: store.NodeID{Level: id.Level, Index: id.Index}, Hash: hash})
	}
	fail := func(err error) error {
		l.restoreTree(start, saved)
		for _, it := range placed {
			it.err, it.batch = err, nil
		}
		return err
	}
	for _, it := range items {
		if e, ok := stored[string(it.key)]; ok {
			it.entry, it.existing = e, true
			continue
		}
		if j, ok := inBatch[string(it.key)]; ok {
			it.entry, it.batch, it.repeat = entries[j], res, true
			placed = append(placed, it)
			continue
		}
		// No time check here: the checks ran at the entry's trusted
		// time (its timestamp), which integration does not change.
		e := store.Entry{
			Index: start + uint64(len(entries)), LeafHash: it.leaf, DedupeKey: it.key, Body: it.body,
			Envelope: it.envelope, Certificate: it.cert, SPIFFEID: it.spiffeID, IntegratedTime: integrated.Unix(),
			Timestamp: it.timestamp, SubjectDigests: it.digests,
		}
		if err := l.tree.Append(e.LeafHash, visit); err != nil {
			return fail(fmt.Errorf("append to the tree: %w", err))
		}
		inBatch[string(it.key)] = len(entries)
		entries = append(entries, e)
		it.entry, it.batch = e, res
		placed = append(placed, it)
	}
	if len(entries) == 0 {
		return nil
	}

	res.size = l.tree.End()
	root, err := rootOf(l.tree)
	if err != nil {
		return fail(fmt.Errorf("tree root: %w", err))
	}
	res.root = root
	note, err := tlog.SignCheckpoint(tlog.Checkpoint{Origin: l.origin, Size: res.size, Root: root}, l.key)
	if err != nil {
		return fail(fmt.Errorf("sign checkpoint: %w", err))
	}
	res.note = note

	began := time.Now()
	err = l.store.AppendBatch(ctx, store.Batch{Entries: entries, Nodes: nodes, Checkpoint: store.Checkpoint{Size: res.size, Note: note}})
	l.metrics.commitSeconds.Observe(time.Since(began).Seconds())
	if err != nil {
		if !errors.Is(err, store.ErrDuplicate) {
			l.log.Error("Transparency log append failed", zap.Int("entries", len(entries)), zap.Error(err))
		}
		return fail(fmt.Errorf("store: %w", err))
	}

	l.headMu.Lock()
	if res.size > l.head.size { // refreshHead may have published a later one
		l.head = logHead{size: res.size, root: root, note: note}
		l.metrics.size.Set(float64(res.size))
	}
	l.headMu.Unlock()
	l.metrics.batchSize.Observe(float64(len(entries)))
	return nil
}

func (l *TransparencyLog) restoreTree(start uint64, hashes [][]byte) {
	tree, err := rangeFactory.NewRange(0, start, hashes)
	if err != nil { // cannot happen: the hashes came from a range of that size
		panic(fmt.Sprintf("transparency log: restore tree: %v", err))
	}
	l.tree = tree
}

// enqueue hands items to the appender and waits for their batch.
func (l *TransparencyLog) enqueue(ctx context.Context, items []*pendingEntry) error {
	req := &appendRequest{items: items, queued: time.Now(), done: make(chan struct{})}
	select {
	case l.reqs <- req:
	case <-l.stopped:
		return errLogStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued, wait for the outcome even if ctx ends: the entries may
	// already be in the log, and the appender answers within a batch.
	select {
	case <-req.done:
		return nil
	case <-l.stopped:
		select {
		case <-req.done:
			return nil
		default:
			return errLogStopped
		}
	}
}

// tlogEntry renders e as a bundle's TransparencyLogEntry with an inclusion
// proof against the tree of size, root and its signed note. Its kind is
// its body's: entries logged before hashedrekord keep theirs.
func (l *TransparencyLog) tlogEntry(e store.Entry, size uint64, root, note []byte, hashes [][]byte) *rekorpb.TransparencyLogEntry {
	kind := tlog.EntryKind
	if isLegacyBody(e.Body) {
		kind = tlog.LegacyEntryKind
	}
	return &rekorpb.TransparencyLogEntry{
		LogIndex:    int64(e.Index),
		LogId:       &protocommon.LogId{KeyId: l.logID},
		KindVersion: &rekorpb.KindVersion{Kind: kind, Version: tlog.EntryVersion},
		// No integratedTime, as in Rekor v2: the bundle's RFC 3161
		// timestamp says when the signature existed.
		InclusionProof: &rekorpb.InclusionProof{
			LogIndex:   int64(e.Index),
			RootHash:   root,
			TreeSize:   int64(size),
			Hashes:     hashes,
			Checkpoint: &rekorpb.Checkpoint{Envelope: string(note)},
		},
		CanonicalizedBody: e.Body,
	}
}

// isLegacyBody reports whether a stored body is a legacy dsse entry. The
// log wrote it, so its kind member is where NewLegacyBody puts it.
func isLegacyBody(body []byte) bool {
	return bytes.HasPrefix(body, []byte(`{"apiVersion":"0.0.2","kind":"`+tlog.LegacyEntryKind+`"`))
}

// proveInBatch builds e's entry from its batch's nodes.
func (l *TransparencyLog) proveInBatch(e store.Entry, b *batchResult) (*rekorpb.TransparencyLogEntry, error) {
	hashes, err := buildProof(e.Index, b.size, func(ids []compact.NodeID) ([][]byte, error) {
		out := make([][]byte, len(ids))
		for i, id := range ids {
			h, ok := b.nodes[id]
			if !ok {
				return nil, fmt.Errorf("node (%d, %d) missing from the batch", id.Level, id.Index)
			}
			out[i] = h
		}
		return out, nil
	})
	if err != nil {
		return nil, err
	}
	return l.tlogEntry(e, b.size, b.root, b.note, hashes), nil
}

// proveStored builds e's entry with a proof against the latest checkpoint,
// from the store.
func (l *TransparencyLog) proveStored(ctx context.Context, e store.Entry) (*rekorpb.TransparencyLogEntry, error) {
	h := l.currentHead()
	if e.Index >= h.size {
		// Committed, but the appender has not published its head yet,
		// or another server sharing the store appended it.
		var err error
		if h, err = l.storedHead(ctx); err != nil {
			return nil, err
		}
	}
	hashes, err := buildProof(e.Index, h.size, func(ids []compact.NodeID) ([][]byte, error) {
		return l.store.Nodes(ctx, storeIDs(ids))
	})
	if err != nil {
		return nil, err
	}
	if err := tlog.VerifyInclusion(e.Index, h.size, e.LeafHash, hashes, h.root); err != nil {
		return nil, fmt.Errorf("stored tree is inconsistent: %w", err)
	}
	return l.tlogEntry(e, h.size, h.root, h.note, hashes), nil
}

// buildProof returns the inclusion proof of index in the tree of size.
func buildProof(index, size uint64, get func([]compact.NodeID) ([][]byte, error)) ([][]byte, error) {
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, err
	}
	hashes, err := get(nodes.IDs)
	if err != nil {
		return nil, err
	}
	return nodes.Rehash(hashes, tlog.Hasher.HashChildren)
}

// ConsistencyProof returns the RFC 6962 consistency proof between the
// trees of sizes from and to; to must not exceed the latest checkpoint.
func (l *TransparencyLog) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	h := l.currentHead()
	if to > h.size {
		var err error
		if h, err = l.storedHead(ctx); err != nil {
			return nil, err
		}
	}
	if to > h.size {
		return nil, fmt.Errorf("size %d is beyond the latest checkpoint (%d)", to, h.size)
	}
	if from > to {
		return nil, fmt.Errorf("from %d is larger than to %d", from, to)
	}
	nodes, err := proof.Consistency(from, to)
	if err != nil {
		return nil, err
	}
	hashes, err := l.store.Nodes(ctx, storeIDs(nodes.IDs))
	if err != nil {
		return nil, err
	}
	return nodes.Rehash(hashes, tlog.Hasher.HashChildren)
}

func storeIDs(ids []compact.NodeID) []store.NodeID {
	out := make([]store.NodeID, len(ids))
	for i, id := range ids {
		out[i] = store.NodeID{Level: id.Level, Index: id.Index}
	}
	return out
}

// Labels of hallmark_server_log_appends_total.
const (
	appendAppended  = "appended"
	appendDuplicate = "duplicate"
	appendRefused   = "refused"
)

// logMetrics are the transparency log's series; the server registers them.
type logMetrics struct {
	appends       *prometheus.CounterVec
	batchSize     prometheus.Histogram
	commitSeconds prometheus.Histogram
	size          prometheus.Gauge
	conflicts     prometheus.Counter
	recognized    prometheus.CounterFunc
}

// newLogMetrics makes the log's metrics; ts is its timestamp authority.
func newLogMetrics(ts *tsa.Signer) *logMetrics {
	return &logMetrics{
		recognized: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "hallmark_server_log_timestamps_recognized_total",
			Help: "Submitted timestamps this server's authority issued and still remembered, whose signature admission did not check again (docs/log.md).",
		}, func() float64 { return float64(ts.Recognized()) }),
		appends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hallmark_server_log_appends_total",
			Help: "Log submissions by result: appended, duplicate (already logged; the existing entry is returned), refused.",
		}, []string{"result"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hallmark_server_log_batch_size",
			Help:    "Entries appended per store transaction (one signed checkpoint each).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hallmark_server_log_commit_seconds",
			Help:    "Latency of committing one batch to the store.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		size: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hallmark_server_log_size",
			Help: "Entries in the transparency log (the latest checkpoint's tree size).",
		}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hallmark_server_log_append_conflicts_total",
			Help: "Batches retried because another server sharing the store appended first.",
		}),
	}
}

func (m *logMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.appends, m.batchSize, m.commitSeconds, m.size, m.conflicts, m.recognized}
}
