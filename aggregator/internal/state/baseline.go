package state

import (
	"encoding/json"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/tokenwatch/tokenwatch/internal/silence"
)

// bucketBaselines holds the nodes' audit policy baselines
// (silence.Baseline): "cluster\x00node" -> JSON baselineValue. Cluster and
// node names are short and hold no NUL (ingest admits DNS-style names
// only). Like bucketLineage it was added without a schema change: an
// aggregator that does not know it leaves it alone, and a baseline left
// behind meanwhile can only repeat a report, never hide one.
var bucketBaselines = []byte("audit_policy_baselines")

// baselineValue is a stored baseline's policy.
type baselineValue struct {
	SHA256 string `json:"sha256,omitempty"`
	Err    string `json:"error,omitempty"`
	Gaps   string `json:"gaps,omitempty"`
}

func baselineKey(cluster, node string) []byte { return []byte(cluster + "\x00" + node) }

// encodeBaselines encodes a change's baselines before the transaction; a
// baseline whose policy is not Known is a deletion (nil value).
func encodeBaselines(bs []silence.Baseline) ([]encoded, error) {
	out := make([]encoded, len(bs))
	for i, b := range bs {
		if b.Cluster == "" || b.Node == "" || strings.ContainsRune(b.Cluster+b.Node, 0) {
			return nil, fmt.Errorf("commit: audit policy baseline %d: bad node %q/%q", i, b.Cluster, b.Node)
		}
		out[i].id = baselineKey(b.Cluster, b.Node)
		if !b.Policy.Known() {
			continue // deleted
		}
		v, err := json.Marshal(baselineValue{SHA256: b.Policy.SHA256, Err: b.Policy.Err, Gaps: b.Policy.Gaps})
		if err != nil {
			return nil, fmt.Errorf("commit: encode audit policy baseline: %w", err)
		}
		out[i].val = v
	}
	return out, nil
}

// putBaselines writes a change's baselines in order.
func putBaselines(tx *bolt.Tx, bs []encoded) error {
	b := tx.Bucket(bucketBaselines)
	for _, e := range bs {
		var err error
		if e.val == nil {
			err = b.Delete(e.id)
		} else {
			err = b.Put(e.id, e.val)
		}
		if err != nil {
			return fmt.Errorf("put audit policy baseline: %w", err)
		}
	}
	return nil
}

// Baselines returns the stored audit policy baselines, in key order. An
// entry that cannot be read is skipped and counted in unreadable: its node
// then takes the next digest it reports as its baseline, as a node never
// heard does, and the entry is replaced then.
func (s *Store) Baselines() (bs []silence.Baseline, unreadable int, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBaselines).ForEach(func(k, v []byte) error {
			cluster, node, ok := strings.Cut(string(k), "\x00")
			var bv baselineValue
			if ok && json.Unmarshal(v, &bv) != nil {
				ok = false
			}
			p := silence.Policy{SHA256: bv.SHA256, Err: bv.Err, Gaps: bv.Gaps}
			if !ok || cluster == "" || node == "" || !p.Known() {
				unreadable++
				return nil
			}
			bs = append(bs, silence.Baseline{Cluster: cluster, Node: node, Policy: p})
			return nil
		})
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read audit policy baselines: %w", err)
	}
	return bs, unreadable, nil
}
