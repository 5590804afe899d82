package agent

import (
	"time"

	"github.com/hallmark-dev/hallmark/agent/measure"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// progressInterval is how often AttestStepStream reports progress while
// the counts change. Tests shorten it.
var progressInterval = 150 * time.Millisecond

// progressCounts is one reading of a measure.Progress.
type progressCounts struct{ filesDone, filesTotal, bytesDone, bytesTotal int64 }

func readProgress(p *measure.Progress) progressCounts {
	// Done counts first: the totals, read after them, are at least as
	// far along.
	fd, bd := p.FilesDone.Load(), p.BytesDone.Load()
	return progressCounts{filesDone: fd, filesTotal: p.FilesTotal.Load(), bytesDone: bd, bytesTotal: p.BytesTotal.Load()}
}

func (c progressCounts) message() *agentv1.AttestStepStreamResponse {
	return &agentv1.AttestStepStreamResponse{Event: &agentv1.AttestStepStreamResponse_Progress{Progress: &agentv1.AttestProgress{
		FilesDone: c.filesDone, FilesTotal: c.filesTotal, BytesDone: c.bytesDone, BytesTotal: c.bytesTotal,
	}}}
}

// attestStepStream runs attestStep while a second goroutine samples its
// progress every progressInterval and sends what changed. The hashing
// workers only add to atomic counters: a slow reader of the stream holds
// up the sampling goroutine, never the measuring. Nothing is counted, so
// nothing is sent, before policy has allowed the call; a refusal ends the
// stream with attestStep's status.
func (api *localAPI) attestStepStream(req *agentv1.AttestStepRequest, stream agentv1.WorkloadService_AttestStepStreamServer) error {
	var (
		p    measure.Progress
		stop = make(chan struct{})
		sent = make(chan progressCounts, 1)
	)
	go func() { sent <- reportProgress(stream, &p, progressInterval, stop) }()
	resp, err := api.attestStep(stream.Context(), req, &p)
	close(stop)
	last := <-sent // the stream has one sender at a time
	if err != nil {
		return err
	}
	// The counts as measuring ended, unless the last report said so.
	if final := readProgress(&p); final != last {
		if err := stream.Send(final.message()); err != nil {
			return err
		}
	}
	return stream.Send(&agentv1.AttestStepStreamResponse{Event: &agentv1.AttestStepStreamResponse_Result{Result: resp}})
}

// reportProgress sends p's counts on stream every interval while they
// change, once there are files to count, until stop is closed. It returns
// the counts it sent last.
func reportProgress(stream agentv1.WorkloadService_AttestStepStreamServer, p *measure.Progress, interval time.Duration, stop <-chan struct{}) progressCounts {
	t := time.NewTicker(interval)
	defer t.Stop()
	var last progressCounts
	for {
		select {
		case <-stop:
			return last
		case <-t.C:
		}
		cur := readProgress(p)
		if cur.filesTotal == 0 || cur == last {
			continue
		}
		if err := stream.Send(cur.message()); err != nil {
			// The caller is gone; its context's end stops the measuring.
			<-stop
			return last
		}
		last = cur
	}
}
