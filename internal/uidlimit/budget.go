package uidlimit

import "sync"

// Budget bounds an amount held per uid, such as the bytes of the requests
// a uid has waiting or under way: what a uid's requests keep in memory
// while they wait for a slot of a Limit, which they do until their
// caller's deadline, and a caller may set none.
type Budget struct {
	max int64

	mu   sync.Mutex
	used map[uint32]int64
}

// NewBudget returns a Budget of max per uid.
func NewBudget(max int64) *Budget {
	return &Budget{max: max, used: map[uint32]int64{}}
}

// Take reserves n for uid and returns its release; ok is false, with
// nothing reserved, when uid already holds used and n more would pass the
// budget. A uid holding nothing may always take one n, whatever its size.
func (b *Budget) Take(uid uint32, n int64) (release func(), used int64, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	used = b.used[uid]
	if used > 0 && used+n > b.max {
		return nil, used, false
	}
	b.used[uid] = used + n
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.used[uid] -= n; b.used[uid] <= 0 {
				delete(b.used, uid)
			}
		})
	}, used, true
}
