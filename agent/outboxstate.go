package agent

import (
	"github.com/hallmark-dev/hallmark/agent/agentstatus"
	"time"

	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/agent/outbox"
)

// openOutbox opens the outbox in dir for Run. Damaged records it moved
// aside are counted and logged, loudly: each held an attestation (or
// what became of one) that will not reach the log from here. An outbox
// in a format this agent cannot read stops the agent, left untouched.
func (a *Agent) openOutbox(dir string) (*outbox.Outbox, error) {
	ob, err := outbox.Open(dir, outbox.Options{Now: a.cfg.Now, Log: a.log,
		OnBroken: func(error) { a.metrics.outboxRefusingWrites.Set(1) }})
	if err != nil {
		return nil, err
	}
	for _, d := range ob.Damaged() {
		a.metrics.outboxDamaged.Inc()
		a.log.Error("A damaged outbox record was moved aside; the records before and after it are kept",
			zap.Int64("offset", d.Offset), zap.Int64("bytes", d.Length), zap.String("kept_in", d.File))
	}
	a.outbox = ob
	a.metrics.outboxQueued.Set(float64(ob.Len()))
	a.metrics.outboxRefused.Set(float64(ob.RefusedLen()))
	if n := ob.Len(); n > 0 {
		a.log.Info("Resuming the outbox", zap.Int("queued", n))
	}
	return ob, nil
}

// OutboxStatus and Refusal: see package agentstatus.
type (
	OutboxStatus = agentstatus.OutboxStatus
	Refusal      = agentstatus.Refusal
)

// recentRefusals is how many refusals /status lists.
const recentRefusals = 10

// outboxStatus reports the outbox, nil without one.
func (a *Agent) outboxStatus() *OutboxStatus {
	ob := a.outbox
	if ob == nil {
		return nil
	}
	st := &OutboxStatus{Queued: ob.Len(), Refused: ob.RefusedLen()}
	for _, it := range ob.Refused(recentRefusals) {
		st.RecentRefusals = append(st.RecentRefusals, Refusal{InvocationID: it.ID, Reason: it.Reason, At: time.Unix(it.Created, 0).UTC()})
	}
	st.DamagedDir, st.Damaged = ob.DamagedFiles()
	if err := ob.Broken(); err != nil {
		st.RefusingWrites = err.Error()
	}
	return st
}
