package state

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
)

// benchChange is one gRPC batch's outcome at the perf target's mix: of 1,000
// events about 1% alert, each completing a request, plus a held
// RequestReceived.
func benchChange(n int64) Change {
	c := Change{}
	for i := range int64(10) {
		id := fmt.Sprintf("b%d-%d", n, i)
		r := rec(id)
		for j := range 30 {
			r.Attrs = append(r.Attrs, alert.String(fmt.Sprintf("attr.%d", j), "some value of moderate length"))
		}
		c.Records = append(c.Records, r)
		c.Done = append(c.Done, "key-"+id)
	}
	c.Pending = []Pending{{Key: fmt.Sprintf("p%d", n), Deadline: t0.Add(2 * time.Second), Cluster: "prod", Node: "cp-1", Event: make([]byte, 600)}}
	return c
}

// BenchmarkCommit measures one batch commit (with fsync) from one stream.
func BenchmarkCommit(b *testing.B) {
	s := open(b, filepath.Join(b.TempDir(), FileName), nil)
	defer s.Close()
	var n int64
	for b.Loop() {
		n++
		if _, err := s.Commit(benchChange(n)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCommitParallel measures commits from several streams at once,
// where group commit shares one fsync among them.
func BenchmarkCommitParallel(b *testing.B) {
	s := open(b, filepath.Join(b.TempDir(), FileName), nil)
	defer s.Close()
	var n atomic.Int64
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Commit(benchChange(n.Add(1))); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSubmitUnderLock is the ingest pattern: several streams decide
// under one lock, Submit, and wait for durability outside the lock.
func BenchmarkSubmitUnderLock(b *testing.B) {
	s := open(b, filepath.Join(b.TempDir(), FileName), nil)
	defer s.Close()
	var (
		mu sync.Mutex
		n  int64
	)
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			n++
			wait := s.Submit(benchChange(n))
			mu.Unlock()
			if _, err := wait(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
